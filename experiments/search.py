"""Search one deployment end to end. Reads top to bottom:

config -> workbench (data, teacher, units, baseline) -> env -> searcher -> finalize -> outputs.

Every finished episode is appended to `OUT/episodes.jsonl` and logged to MLflow as it happens, so
an interrupted search (Ctrl-C) keeps everything it found and still writes a summary of it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modeltailor.agent import SearchResult, make_searcher
from modeltailor.compressors.pipeline import lowrank_units
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.env.evaluator import Outcome
from modeltailor.env.history import EpisodeRecord, best_record
from modeltailor.env.reward import (
    AccuracyFloorReward,
    BudgetReward,
    Resources,
    RewardFunction,
    TradeoffReward,
)
from modeltailor.errors import ConfigError, DeviceError
from modeltailor.experiments.config import DeploymentConfig
from modeltailor.experiments.finalize import FinalResult, finalize
from modeltailor.experiments.outputs import RunInfo, write_outputs
from modeltailor.experiments.tracking import Tracker
from modeltailor.experiments.workbench import Workbench, build_device, build_workbench

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

    summary: dict[str, Any]
    result: SearchResult
    final: FinalResult | None
    out_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


DEFAULT_LATENCY_RATIO = 0.45
SKIP_FRACTION = 0.15  # share of a skippable unit's action range that means "remove the block"


def make_reward(config: DeploymentConfig, baseline: Resources, final: bool = False) -> RewardFunction:
    """The objective's reward; `final=False` is the search's (accuracy floor relaxed by search_slack)."""
    o = config.objective
    if o.kind == "tradeoff":
        w = o.weights
        return TradeoffReward(w.accuracy, w.latency, w.memory)
    if o.kind == "accuracy":
        floor = o.min_accuracy if o.min_accuracy is not None else baseline.accuracy - o.max_accuracy_drop / 100
        if not final:
            floor -= o.search_slack / 100
        return AccuracyFloorReward(min_accuracy=floor, minimize=o.minimize)
    ratio = o.max_latency_ratio
    if not any((o.max_latency_ms, ratio, o.max_memory_bytes, o.max_memory_ratio)):
        ratio = DEFAULT_LATENCY_RATIO
    latency = o.max_latency_ms or (ratio * baseline.latency_ms if ratio else None)
    memory = o.max_memory_bytes or (o.max_memory_ratio * baseline.memory_bytes if o.max_memory_ratio else None)
    return BudgetReward(max_latency_ms=latency, max_memory_bytes=memory)


def check_budget_reachable(reward: RewardFunction, fastest: Outcome, min_keep: float, slack: float = 0.9) -> None:
    """ConfigError when a budget is below what the most compressed model of this search measures."""
    if not isinstance(reward, BudgetReward):
        return
    what = f"measured with every unit at search.min_keep={min_keep}"
    if reward.max_latency_ms is not None and reward.max_latency_ms < slack * fastest.latency_ms:
        raise ConfigError(
            f"objective: latency budget {reward.max_latency_ms:.3f} ms is below the fastest model this search "
            f"can build ({fastest.latency_ms:.3f} ms {what}): raise the budget or lower search.min_keep"
        )
    if reward.max_memory_bytes is not None and reward.max_memory_bytes < slack * fastest.memory_bytes:
        raise ConfigError(
            f"objective: memory budget {reward.max_memory_bytes:,.0f} bytes is below the smallest model this "
            f"search can build ({fastest.memory_bytes:,} bytes {what}): raise the budget or lower search.min_keep"
        )


def build_env(bench: Workbench, reward: RewardFunction, baseline: Resources) -> CompressionEnv:
    """The env, with cost models seeded by the baseline and one uniform-pruning calibration point."""
    s = bench.config.search
    latency_model, memory_model = LinearCostModel(), LinearCostModel()
    latency_model.add(bench.baseline.macs, bench.baseline.latency_ms)
    memory_model.add(bench.baseline.params, bench.baseline.memory_bytes)
    calib = bench.evaluator.measure(
        bench.evaluator.compressor.apply(bench.base, _fastest(bench, s.min_keep, s.skip_blocks), bench.example)
    )
    check_budget_reachable(reward, calib, s.min_keep)
    latency_model.add(calib.macs, calib.latency_ms)
    memory_model.add(calib.params, calib.memory_bytes)
    classes = len(bench.classes) if bench.classes else bench.splits.num_classes
    return CompressionEnv(
        analysis=bench.analysis,
        evaluator=bench.evaluator,
        reward=reward,
        baseline=baseline,
        action_range=ActionRange(s.min_keep, s.max_keep, SKIP_FRACTION if s.skip_blocks else 0.0),
        latency_model=latency_model,
        memory_model=memory_model,
        class_fraction=classes / bench.splits.num_classes,
        lowrank_units=frozenset(
            lowrank_units(bench.analysis, bench.base, s.round_to) if "lowrank" in s.methods else ()
        ),
        int8="int8" in s.methods,
    )


EPISODES_FILE = "episodes.jsonl"
RESUME_KEYS = ("model", "data", "classes", "device", "objective", "search")


def run_search(
    config: DeploymentConfig, out_dir: Path, reporter: Reporter | None = None, resume: bool = False
) -> SearchRun:
    reporter = reporter or LogReporter()
    started = time.perf_counter()
    previous = prepare_out_dir(config, out_dir, resume)
    bench = build_workbench(config, reporter.message)
    baseline = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    reward = make_reward(config, baseline)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment) if config.tracking.enabled else None
    run_id = _start_tracking(tracker, config, bench)
    try:
        env = build_env(bench, reward, baseline)
        env.history.extend(previous)
        _attach_episode_sinks(env, out_dir / EPISODES_FILE, tracker, reporter)
        reporter.start(max(0, config.search.episodes - len(previous)))
        search_started = time.perf_counter()
        result = _search(env, config, len(previous), out_dir / EPISODES_FILE)
        search_seconds = time.perf_counter() - search_started
        if not result.episodes:
            raise KeyboardInterrupt
        final = finalize(
            bench, result.episodes, make_reward(config, baseline, final=True),
            build_device(config, cached=False), reporter.message,
        )
        info = RunInfo(search_seconds, time.perf_counter() - started, run_id)
        summary = write_outputs(out_dir, bench, result, final, info, tracker)
    except BaseException as exc:
        if tracker is not None:
            tracker.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.end_run("KILLED" if result.interrupted else "FINISHED")
    return SearchRun(summary, result, final, out_dir)


def _search(env: CompressionEnv, config: DeploymentConfig, done: int, episodes_file: Path) -> SearchResult:
    """Run the searcher for the episodes not done yet; every record (old and new) in the result."""
    searcher = make_searcher(config.search.agent, config.search.seed)
    try:
        result = searcher.search(env, max(0, config.search.episodes - done))
    except DeviceError as exc:
        raise DeviceError(
            f"{exc} (after {len(env.history)} episodes, all kept in {episodes_file}: "
            "fix the device and rerun with --resume)"
        ) from None
    return SearchResult.from_records(searcher.name, env.history, interrupted=result.interrupted)


def prepare_out_dir(config: DeploymentConfig, out_dir: Path, resume: bool) -> list[EpisodeRecord]:
    """Create OUT; with `resume`, the episodes a previous run of the same deployment finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / "deployment.json"
    current = {k: v for k, v in config.model_dump(mode="json").items() if k in RESUME_KEYS}
    previous: list[EpisodeRecord] = []
    if resume and stamp.is_file():
        if json.loads(stamp.read_text()) != current:
            raise ConfigError(
                f"--resume: '{out_dir}' holds a search of a different deployment: use another --out or drop --resume"
            )
        previous = load_episodes(out_dir / EPISODES_FILE)
    else:
        (out_dir / EPISODES_FILE).write_text("")
    stamp.write_text(json.dumps(current, indent=2) + "\n")
    return previous


def load_episodes(path: Path) -> list[EpisodeRecord]:
    """Records from an episodes.jsonl; a torn last line (a killed write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(EpisodeRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            log.warning("skipping an unreadable line of %s", path)
    return records


def _fastest(bench: Workbench, keep: float, skip: bool) -> Policy:
    """Every unit at `keep`, every skippable block removed: the most compressed model reachable."""
    return Policy(
        tuple(
            UnitAction(unit=u.name, method="skip", keep=0.0) if skip and u.block else UnitAction(unit=u.name, keep=keep)
            for u in bench.analysis.units
        )
    )


def _start_tracking(tracker: Tracker | None, config: DeploymentConfig, bench: Workbench) -> str | None:
    if tracker is None:
        return None
    tags = {
        "model": config.model.factory or config.model.name or "",
        "dataset": config.data.name,
        "device": config.device.name,
        "classes": ",".join(map(str, bench.classes)) if bench.classes else "all",
        "searcher": config.search.agent,
        "objective": config.objective.kind,
    }
    return tracker.start_run(config.name, params=config.model_dump(mode="json"), tags=tags)


def _attach_episode_sinks(
    env: CompressionEnv, path: Path, tracker: Tracker | None, reporter: Reporter
) -> None:

    def sink(record: EpisodeRecord) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(record.to_dict()) + "\n")
        if tracker is not None:
            tracker.log_episode(record.episode, _episode_metrics(record))
        reporter.episode(record, best_record(env.history))

    env.callbacks.append(sink)


def _episode_metrics(record: EpisodeRecord) -> dict[str, float]:
    return {
        "episode/accuracy": record.accuracy,
        "episode/latency_ms": record.latency_ms,
        "episode/memory_bytes": float(record.memory_bytes),
        "episode/params": float(record.params),
        "episode/reward": record.reward,
        "episode/feasible": float(record.feasible),
    }
