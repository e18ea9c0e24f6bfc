"""Finalize a search: long distillation of the finalists, pick one, export, check, measure.

The baseline and the chosen model are timed in the same process, alternating in rounds, so their
ratio (the speedup) is not skewed by load that comes and goes on a shared machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from modeltailor.compressors.distill import accuracy
from modeltailor.compressors.policy import Policy
from modeltailor.env.devices import Device, LatencyStats, LocalOrtDevice, Measurement
from modeltailor.env.history import EpisodeRecord
from modeltailor.env.memory import onnx_memory
from modeltailor.env.onnx_export import export_onnx, onnx_matches_torch
from modeltailor.env.reward import Resources, RewardFunction
from modeltailor.experiments.workbench import Workbench, recovery_config

log = logging.getLogger(__name__)


@dataclass
class Finalist:
    record: EpisodeRecord
    model: nn.Module
    val_accuracy: float
    score: float
    feasible: bool


@dataclass
class FinalResult:
    chosen: Finalist
    finalists: list[Finalist]
    onnx_bytes: bytes
    baseline_onnx: bytes
    baseline: Measurement
    best: Measurement
    test_accuracy: float
    baseline_test_accuracy: float
    baseline_test_accuracy_all_classes: float
    onnx_max_abs_diff: float


def pick_finalists(records: Sequence[EpisodeRecord], count: int) -> list[EpisodeRecord]:
    """The `count` best distinct architectures by reward, feasible ones first."""
    ranked = sorted(records, key=lambda r: (r.feasible, r.reward, r.accuracy), reverse=True)
    seen: set[tuple] = set()
    picked: list[EpisodeRecord] = []
    for record in ranked:
        key = tuple(sorted(record.kept_channels.items()))
        if key not in seen:
            seen.add(key)
            picked.append(record)
        if len(picked) == count:
            break
    return picked


def finalize(
    bench: Workbench,
    records: Sequence[EpisodeRecord],
    reward: RewardFunction,
    final_device: Device,
    report: Callable[[str], None] = log.info,
) -> FinalResult:
    finalists = []
    base_res = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    for i, record in enumerate(pick_finalists(records, bench.config.recovery.finalists)):
        report(f"finalist {i + 1}: long distillation ({bench.config.recovery.final_steps} steps)")
        model = bench.evaluator.build(Policy.from_dict(record.policy), recovery_config(bench.config, final=True))
        val = accuracy(model, *bench.labels("val"))
        resources = Resources(val, record.latency_ms, record.memory_bytes)
        finalists.append(Finalist(record, model, val, reward(resources, base_res), reward.feasible(resources)))
    chosen = max(finalists, key=lambda f: (f.feasible, f.score))
    report("exporting the chosen model and measuring it against the baseline")
    onnx_bytes = export_onnx(chosen.model, bench.input_shape[1:])
    baseline_onnx = export_onnx(bench.teacher, bench.input_shape[1:])
    test_x = bench.splits.test.tensors[0][:64]
    diff = onnx_matches_torch(chosen.model, export_onnx(chosen.model, bench.input_shape[1:], dynamic_batch=True), test_x)
    base_m, best_m = measure_pair(final_device, baseline_onnx, onnx_bytes)
    return FinalResult(
        chosen=chosen,
        finalists=finalists,
        onnx_bytes=onnx_bytes,
        baseline_onnx=baseline_onnx,
        baseline=base_m,
        best=best_m,
        test_accuracy=bench.test_accuracy(chosen.model),
        baseline_test_accuracy=bench.test_accuracy(bench.base),
        baseline_test_accuracy_all_classes=bench.teacher_test_accuracy_all_classes(),
        onnx_max_abs_diff=float(diff),
    )


def measure_pair(device: Device, first: bytes, second: bytes, rounds: int = 5) -> tuple[Measurement, Measurement]:
    """Measure two models alternately in `rounds` rounds (local ORT) or one after the other."""
    if not isinstance(device, LocalOrtDevice):
        return device.measure(first), device.measure(second)
    sessions = [device.session(first), device.session(second)]
    samples: list[list[np.ndarray]] = [[], []]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            samples[i].append(device.time_runs(session))
    return tuple(  # type: ignore[return-value]
        Measurement(LatencyStats.from_samples(np.concatenate(s)), onnx_memory(b), device.name)
        for s, b in zip(samples, (first, second), strict=True)
    )
