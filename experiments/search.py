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
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.env.history import EpisodeRecord, best_record
from modeltailor.env.reward import BudgetReward, Resources, RewardFunction, TradeoffReward
from modeltailor.errors import ConfigError
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


def make_reward(config: DeploymentConfig, baseline: Resources) -> RewardFunction:
    o = config.objective
    if o.kind == "tradeoff":
        w = o.weights
        return TradeoffReward(w.accuracy, w.latency, w.memory)
    latency = o.max_latency_ms or (o.max_latency_ratio * baseline.latency_ms if o.max_latency_ratio else None)
    memory = o.max_memory_bytes or (o.max_memory_ratio * baseline.memory_bytes if o.max_memory_ratio else None)
    if latency is None and memory is None:
        raise ConfigError("objective kind 'budget' needs max_latency_ms/ratio or max_memory_bytes/ratio")
    return BudgetReward(max_latency_ms=latency, max_memory_bytes=memory)


def build_env(bench: Workbench, reward: RewardFunction, baseline: Resources) -> CompressionEnv:
    """The env, with cost models seeded by the baseline and one uniform-pruning calibration point."""
    s = bench.config.search
    latency_model, memory_model = LinearCostModel(), LinearCostModel()
    latency_model.add(bench.baseline.macs, bench.baseline.latency_ms)
    memory_model.add(bench.baseline.params, bench.baseline.memory_bytes)
    calib = bench.evaluator.measure(
        bench.evaluator.compressor.apply(bench.teacher, _uniform(bench, s.min_keep), bench.example)
    )
    latency_model.add(calib.macs, calib.latency_ms)
    memory_model.add(calib.params, calib.memory_bytes)
    classes = len(bench.classes) if bench.classes else bench.splits.num_classes
    return CompressionEnv(
        analysis=bench.analysis,
        evaluator=bench.evaluator,
        reward=reward,
        baseline=baseline,
        action_range=ActionRange(s.min_keep, s.max_keep),
        latency_model=latency_model,
        memory_model=memory_model,
        class_fraction=classes / bench.splits.num_classes,
    )


def run_search(config: DeploymentConfig, out_dir: Path, reporter: Reporter | None = None) -> SearchRun:
    reporter = reporter or LogReporter()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench = build_workbench(config, reporter.message)
    baseline = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    reward = make_reward(config, baseline)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment) if config.tracking.enabled else None
    run_id = _start_tracking(tracker, config, bench)
    try:
        env = build_env(bench, reward, baseline)
        _attach_episode_sinks(env, out_dir / "episodes.jsonl", tracker, reporter)
        reporter.start(config.search.episodes)
        search_started = time.perf_counter()
        result = make_searcher(config.search.agent, config.search.seed).search(env, config.search.episodes)
        search_seconds = time.perf_counter() - search_started
        if not result.episodes:
            raise KeyboardInterrupt
        final = finalize(bench, result.episodes, reward, build_device(config, cached=False), reporter.message)
        info = RunInfo(search_seconds, time.perf_counter() - started, run_id)
        summary = write_outputs(out_dir, bench, result, final, info, tracker)
    except BaseException as exc:
        if tracker is not None:
            tracker.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.end_run("KILLED" if result.interrupted else "FINISHED")
    return SearchRun(summary, result, final, out_dir)


def _uniform(bench: Workbench, keep: float) -> Policy:
    return Policy(tuple(UnitAction(unit=u.name, keep=keep) for u in bench.analysis.units))


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
    path.write_text("")

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
