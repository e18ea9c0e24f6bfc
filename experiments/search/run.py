"""Search one deployment end to end. Reads top to bottom:

config -> workbench (data, teacher, units, baseline) -> env -> searcher -> finalize -> outputs.

Every finished episode is appended to `OUT/episodes.jsonl` and logged to MLflow as it happens, so
an interrupted search (Ctrl-C, SIGTERM) keeps everything it found and still writes a summary of it.
Interrupted before any episode finished, or during finalization, it raises `SearchInterrupted`
(the MLflow run is marked KILLED). `--resume` continues: the episodes in OUT are kept, PPO restores
its agent checkpoint (`OUT/agent_checkpoint.pt`), and the MLflow run named in `OUT/run.json` is
continued.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modeltailor.agent import SURROGATE_SEARCHERS, make_searcher
from modeltailor.common.storage import atomic_write
from modeltailor.devices.base import Device
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import search_result
from modeltailor.env.records import EpisodeRecord, SearchResult
from modeltailor.env.reward import (
    MIN_CORRECTION_PAIRS,
    AccuracyFloorReward,
    RecoveryCorrection,
    Resources,
    RewardFunction,
)
from modeltailor.env.surrogate import sample_of
from modeltailor.errors import ConfigError, DeviceError, ModelTailorError, SearchInterrupted
from modeltailor.experiments.search.episodes import (
    attach_episode_sinks,
    episode_metrics,
    load_episodes,
    repair_episodes,
)
from modeltailor.experiments.search.experience import (
    Experience,
    check_writable,
    experience_path,
    open_experience,
    subset_gain,
)
from modeltailor.experiments.search.finalize import FinalResult, finalize
from modeltailor.experiments.search.objective import build_env, make_reward
from modeltailor.experiments.search.outputs import RunInfo, run_description, write_outputs
from modeltailor.experiments.search.warm_start import (
    FROM_TAG,
    check_warm_start,
    publish_agent,
    resolve_warm_start,
)
from modeltailor.experiments.search.workbench import Workbench, build_workbench, cache_line
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.deployment import (
    WARM_STARTABLE,
    DeploymentConfig,
    changed_settings,
    resume_refusal,
    resume_settings,
    unrecorded_settings,
)
from modeltailor.experiments.spec.summary import FloorJudgement, SearchSummary, SubsetGain
from modeltailor.experiments.tracking.registry import VersionInfo, register_search
from modeltailor.experiments.tracking.tracker import Tracker, open_tracker

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def message(self, text: str) -> None: ...

    def start(self, episodes: int) -> None: ...

    def episode(self, record: EpisodeRecord, best: EpisodeRecord | None) -> None: ...


class LogReporter:
    def message(self, text: str) -> None:
        log.info(text)

    def start(self, episodes: int) -> None:
        log.info("searching %d episodes", episodes)

    def episode(self, record: EpisodeRecord, best: EpisodeRecord | None) -> None:
        log.info("episode %d: acc %.4f latency %.3f ms", record.episode, record.accuracy, record.latency_ms)


@dataclass
class SearchRun:
    """What a finished (or interrupted) search produced."""

    summary: SearchSummary
    result: SearchResult
    final: FinalResult | None
    out_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


def run_search(
    config: DeploymentConfig,
    out_dir: Path,
    reporter: Reporter | None = None,
    resume: bool = False,
    *,
    device: Device | None = None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> SearchRun:
    """Search `config`'s deployment into `out_dir`, on `device` and logging to `tracker` when given
    (else both built from the config), the MLflow run nested under `parent_run_id` when given.

    Raises SearchInterrupted when interrupted before any episode finished or while finalizing.
    """
    reporter = reporter or LogReporter()
    started = time.perf_counter()
    previous = prepare_out_dir(config, out_dir, resume)
    try:
        tracker = tracker if tracker is not None else open_tracker(config)  # unreachable: before training
        check_warm_start(config, tracker)  # a missing checkpoint: before training
        if (experience_file := experience_path(config)) is not None:
            check_writable(experience_file)  # an unwritable search.experience: before training
        bench = build_workbench(config, reporter.message, device=device)
        run_id = _start_tracking(tracker, config, bench, out_dir, previous if resume else None, parent_run_id)
    except KeyboardInterrupt:
        raise _interrupted(config, out_dir) from None
    registered: VersionInfo | None = None
    try:
        experience = open_experience(bench, _baseline(bench), run=experience_run(out_dir))
        reward, floor = search_reward(config, _baseline(bench), experience, reporter)
        result, search_seconds = _run_searcher(config, bench, previous, out_dir, tracker, reporter, experience, reward)
        if bench.latency_cache is not None:
            reporter.message(cache_line(bench.latency_cache))
        final = finalize(
            bench, result.episodes, make_reward(config, _baseline(bench), final=True),
            bench.device.uncached(), reporter.message,
            judge=lambda paired: make_reward(config, paired, final=True),
        )
        experience.append_finals([(f.record.episode, f.val_accuracy) for f in final.finalists])
        gain = subset_verdict(config, bench, experience, result, reporter)
        info = RunInfo(search_seconds, time.perf_counter() - started, run_id, floor, gain)
        summary = write_outputs(out_dir, bench, result, final, info, tracker)
        if tracker is not None and run_id is not None:
            registered = None if result.interrupted else _register(tracker, out_dir, summary, reporter)
            tracker.set_description(run_description(summary, run_id, tracker.experiment_id, registered))
    except (KeyboardInterrupt, SearchInterrupted):
        _end_tracking(tracker, "KILLED")
        raise _interrupted(config, out_dir) from None
    except BaseException:
        _end_tracking(tracker, "FAILED")
        raise
    _end_tracking(tracker, "KILLED" if result.interrupted else "FINISHED")
    return SearchRun(summary, result, final, out_dir, extra={"registered": registered})


def _register(tracker: Tracker, out_dir: Path, summary: SearchSummary, reporter: Reporter) -> VersionInfo | None:
    """Register the chosen model (see experiments/tracking/registry.py); a failure is reported, not fatal:
    the search's outputs are written and `modeltailor registry add OUT` registers them later."""
    try:
        version = register_search(tracker.tracking_uri, out_dir, summary)
    except ModelTailorError as exc:
        reporter.message(f"not registered ({exc}); run `modeltailor registry add {out_dir}` to retry")
        return None
    alias = f" ({', '.join(version.aliases)})" if version.aliases else " (the champion stays)"
    reporter.message(f"registered as modeltailor-{version.device} version {version.version}{alias}")
    return version


def search_reward(
    config: DeploymentConfig, baseline: Resources, experience: Experience, reporter: Reporter
) -> tuple[RewardFunction, FloorJudgement | None]:
    """The search's reward and, under an accuracy floor, how it judges episodes (said once): through
    the correction learned from earlier finalists of this model, data and recovery (the experience),
    or against the floor relaxed by search_slack while fewer than MIN_CORRECTION_PAIRS are known."""
    o = config.objective
    if o.kind != "accuracy":
        return make_reward(config, baseline), None
    pairs = experience.correction_pairs() if o.floor_correction == "learned" else []
    correction = RecoveryCorrection.fit(pairs)
    reward = make_reward(config, baseline, correction=correction)
    if correction is not None:
        reporter.message(f"accuracy floor: episodes judged by their predicted long-recovery accuracy "
                         f"({correction.describe()})")
        knots = [[round(100 * x, 3), round(100 * y, 3)]
                 for x, y in zip(correction.episode_drops, correction.final_drops, strict=True)]
        return reward, FloorJudgement(judged_by="learned correction", finalists=correction.pairs, correction=knots)
    why = (f"{len(pairs)} earlier finalists of this model, data and recovery, {MIN_CORRECTION_PAIRS} needed to learn "
           "what the long recovery gives back" if o.floor_correction == "learned" else "objective.floor_correction: slack")
    reporter.message(f"accuracy floor: relaxed by search_slack {o.search_slack:g} points during the search ({why})")
    return reward, FloorJudgement(judged_by="search_slack", finalists=len(pairs))


def subset_verdict(
    config: DeploymentConfig, bench: Workbench, experience: Experience, result: SearchResult, reporter: Reporter
) -> SubsetGain | None:
    """Under an accuracy floor, whether this class subset made the model faster than all classes do
    on this model and device (said once, and in summary.json): its fastest episode against the
    experience's all-class episodes, both held to the drop the search itself was held to."""
    if bench.classes is None or config.objective.kind != "accuracy":
        return None
    baseline = _baseline(bench)
    floor = make_reward(config, baseline, final=True)
    assert isinstance(floor, AccuracyFloorReward)
    max_drop = baseline.accuracy - floor.min_accuracy + config.objective.search_slack / 100
    own = [sample_of(r.policy, r.accuracy, r.latency_ms, r.memory_bytes, baseline, bench.classes, experience.device)
           for r in result.episodes if r.failure is None]
    fields = subset_gain(own, experience.samples(), experience.device, max_drop,
                         config.model.factory or config.model.name or "the model")
    if fields is None:
        return None
    reporter.message(fields["says"])
    return SubsetGain(**fields)


def _baseline(bench: Workbench) -> Resources:
    return Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)


def _run_searcher(
    config: DeploymentConfig,
    bench: Workbench,
    previous: list[EpisodeRecord],
    out_dir: Path,
    tracker: Tracker | None,
    reporter: Reporter,
    experience: Experience,
    reward: RewardFunction,
) -> tuple[SearchResult, float]:
    """The search on a fresh env holding `previous`: its result and how long it took (s). Every
    real episode also lands in the experience."""
    env = build_env(bench, reward, _baseline(bench))
    env.history.extend(previous)
    attach_episode_sinks(env, out_dir / files.EPISODES, tracker, reporter)
    experience.attach(env)
    reporter.start(max(0, config.search.episodes - len(previous)))
    started = time.perf_counter()
    result = _search(env, config, len(previous), out_dir, tracker, reporter, experience)
    if not result.episodes:
        raise KeyboardInterrupt
    if tracker is not None:
        publish_agent(tracker, config, env, out_dir / files.AGENT_CHECKPOINT)
    return result, time.perf_counter() - started


def _interrupted(config: DeploymentConfig, out_dir: Path) -> SearchInterrupted:
    kept, wanted = len(load_episodes(out_dir / files.EPISODES)), config.search.episodes
    then = "run the rest" if kept < wanted else "finalize them"
    return SearchInterrupted(
        f"search interrupted: {kept} of {wanted} episodes are kept in {out_dir / files.EPISODES}; "
        f"rerun with --resume --out {out_dir} to {then}"
    )


def experience_run(out_dir: Path) -> str:
    """The id this search's episodes carry in the experience: stable across --resume of one OUT,
    whose own episodes the search already holds (they are not read back as earlier experience)."""
    return hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]


def _search(
    env: CompressionEnv, config: DeploymentConfig, done: int, out_dir: Path, tracker: Tracker | None,
    reporter: Reporter, experience: Experience,
) -> SearchResult:
    """Run the searcher for the episodes not done yet; every record (old and new) in the result."""
    startable = config.search.searcher in WARM_STARTABLE
    warm = None if done or not startable else resolve_warm_start(
        config, env, tracker, exclude_run=tracker.run_id if tracker else None
    )
    if config.search.warm_start == "auto" and warm is None and not done and startable:
        reporter.message("warm start (auto): no finished search of this model and data to start from; starting cold")
    if warm is not None:
        reporter.message(warm.note)
        if tracker is not None:
            tracker.set_tags({FROM_TAG: warm.source})
    searcher = make_searcher(
        config.search.searcher, config.search.seed, out_dir / files.AGENT_CHECKPOINT, config.search.ppo.model_dump(),
        warm_start=warm.path if warm is not None else None,
        stats=tracker.log_metrics if tracker is not None else None,
        surrogate=config.search.surrogate.model_dump(),
        experience=experience.view(config.search.round_to) if config.search.searcher in SURROGATE_SEARCHERS else None,
        report=reporter.message,
    )
    episodes_file = out_dir / files.EPISODES
    try:
        result = searcher.search(env, max(0, config.search.episodes - done), done=done)
    except DeviceError as exc:
        raise DeviceError(
            f"{exc} (after {len(env.history)} episodes, all kept in {episodes_file}: "
            "fix the device and rerun with --resume)"
        ) from None
    final = search_result(searcher.name, env.history, interrupted=result.interrupted)
    final.notes = {**result.notes, **({"experience": str(experience.path)} if result.notes else {})}
    if warm is not None and result.notes:
        final.notes["warm_start"] = warm.source
    return final


def prepare_out_dir(config: DeploymentConfig, out_dir: Path, resume: bool) -> list[EpisodeRecord]:
    """Create OUT (a writable folder, checked before any training); with `resume`, the episodes a
    previous run of the same deployment finished, else a fresh OUT (no episodes, checkpoint, run).

    A --resume whose settings differ from OUT's `deployment.json` in anything an episode's numbers
    depend on (`deployment.RESUME_KEYS`) is refused, naming the settings."""
    check_out_dir(out_dir)
    stamp = out_dir / files.DEPLOYMENT
    current = resume_settings(config.model_dump(mode="json"))
    previous: list[EpisodeRecord] = []
    if resume and stamp.is_file():
        before = json.loads(stamp.read_text())
        changes = changed_settings(before, current)
        if changes:
            raise ConfigError(resume_refusal(f"'{out_dir}'", changes))
        if unchecked := unrecorded_settings(before):
            log.warning("--resume: %s predates the check of %s: resuming without checking them",
                        stamp, ", ".join(unchecked))
        previous = repair_episodes(out_dir / files.EPISODES)
    else:
        (out_dir / files.EPISODES).write_text("")
        for stale in (files.AGENT_CHECKPOINT, files.RUN):
            (out_dir / stale).unlink(missing_ok=True)
    stamp.write_text(json.dumps(current, indent=2) + "\n")
    return previous


def check_out_dir(out_dir: Path) -> None:
    """Create `out_dir` and make sure files can be written in it; a ConfigError naming it if not."""
    advice = "pass --out a folder you can write (it is created if missing)"
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), out_dir)
    if existing.exists() and not existing.is_dir():
        where = "is a file, not a folder" if existing == out_dir else f"lies under the file '{existing}'"
        raise ConfigError(f"--out '{out_dir}' {where}: {advice}")
    probe = out_dir / f".write-probe-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"--out '{out_dir}' cannot be written ({reason}): {advice}") from None


def _start_tracking(
    tracker: Tracker | None,
    config: DeploymentConfig,
    bench: Workbench,
    out_dir: Path,
    previous: list[EpisodeRecord] | None,
    parent_run_id: str | None,
) -> str | None:
    """Start the search's MLflow run (recorded in OUT/run.json); resuming (`previous` not None),
    continue the run OUT/run.json names, or start a new one holding the previous episodes."""
    if tracker is None:
        return None
    if previous is not None:
        run_id = _resume_tracking(tracker, out_dir, len(previous))
        if run_id is not None:
            return run_id
    run_id = tracker.start_run(
        config.name, params=config.model_dump(mode="json"), tags=_run_tags(config, bench),
        parent_run_id=parent_run_id,
    )
    atomic_write(out_dir / files.RUN, json.dumps(_run_record(tracker, run_id), indent=2) + "\n")
    for record in previous or []:
        tracker.log_episode(record.episode, episode_metrics(record))
    return run_id


def _run_record(tracker: Tracker, run_id: str) -> dict[str, str]:
    return {"mlflow_run_id": run_id, "tracking_uri": tracker.tracking_uri, "experiment": tracker.experiment}


def _resume_tracking(tracker: Tracker, out_dir: Path, done: int) -> str | None:
    """Continue the run OUT/run.json names in this tracker's store; None when there is none."""
    try:
        recorded = json.loads((out_dir / files.RUN).read_text())
        run_id = recorded["mlflow_run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if recorded != _run_record(tracker, run_id):
        return None  # another store or experiment: a new run there
    try:
        tracker.resume_run(run_id)
    except ModelTailorError as exc:
        log.warning("resume: cannot continue MLflow run %s (%s); starting a new run", run_id, exc)
        return None
    tracker.set_tags({"resumed": str(done)})
    return run_id


def _end_tracking(tracker: Tracker | None, status: str) -> None:
    if tracker is not None:
        tracker.end_run(status)


def _run_tags(config: DeploymentConfig, bench: Workbench) -> dict[str, str]:
    return {
        "model": config.model.factory or config.model.name or "",
        "dataset": config.data.name,
        "device": config.device.name,
        "classes": ",".join(map(str, bench.classes)) if bench.classes else "all",
        "searcher": config.search.searcher,
        "objective": config.objective.kind,
    }
