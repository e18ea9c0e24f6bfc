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

from modeltailor.agent import make_searcher
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import best_record, search_result
from modeltailor.env.reward import (
    Resources,
)
from modeltailor.errors import ConfigError, DeviceError, ModelTailorError
from modeltailor.experiments.config import DeploymentConfig
from modeltailor.experiments.finalize import FinalResult, finalize
from modeltailor.experiments.objective import build_env, make_reward
from modeltailor.experiments.outputs import RunInfo, write_outputs
from modeltailor.experiments.tracking import Tracker
from modeltailor.experiments.workbench import Workbench, build_device, build_workbench
from modeltailor.results import EpisodeRecord, SearchResult

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
    searcher = make_searcher(config.search.searcher, config.search.seed)
    try:
        result = searcher.search(env, max(0, config.search.episodes - done))
    except DeviceError as exc:
        raise DeviceError(
            f"{exc} (after {len(env.history)} episodes, all kept in {episodes_file}: "
            "fix the device and rerun with --resume)"
        ) from None
    return search_result(searcher.name, env.history, interrupted=result.interrupted)


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
            records.append(EpisodeRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ModelTailorError):
            log.warning("skipping an unreadable line of %s", path)
    return records


def _start_tracking(tracker: Tracker | None, config: DeploymentConfig, bench: Workbench) -> str | None:
    if tracker is None:
        return None
    tags = {
        "model": config.model.factory or config.model.name or "",
        "dataset": config.data.name,
        "device": config.device.name,
        "classes": ",".join(map(str, bench.classes)) if bench.classes else "all",
        "searcher": config.search.searcher,
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
