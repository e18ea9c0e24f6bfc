"""Finalize a search: long distillation of the finalists, pick one, export, check, measure.

The baseline and the chosen model are timed in the same process, alternating in rounds, so their
ratio (the speedup) is not skewed by load that comes and goes on a shared machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from torch import nn

from modeltailor.compressors.distill import predict_logits
from modeltailor.compressors.export import export_onnx, onnx_matches_torch
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.quantization import onnx_accuracy, onnx_predictions
from modeltailor.devices.base import Device
from modeltailor.devices.measurement import Measurement
from modeltailor.env.history import evaluated
from modeltailor.env.records import EpisodeRecord
from modeltailor.env.reward import Resources, RewardFunction
from modeltailor.errors import CompressionError
from modeltailor.experiments.search.workbench import Workbench, recovery_config
from modeltailor.experiments.spec.summary import ObjectiveCheck, OnnxParity

log = logging.getLogger(__name__)


@dataclass
class Finalist:
    record: EpisodeRecord
    model: nn.Module
    val_accuracy: float
    score: float
    feasible: bool
    onnx_bytes: bytes
    policy: Policy


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
    onnx_parity: OnnxParity
    objective: ObjectiveCheck


def pick_finalists(records: Sequence[EpisodeRecord], count: int) -> list[EpisodeRecord]:
    """The `count` best distinct architectures by reward, feasible ones first."""
    ranked = sorted(evaluated(records), key=lambda r: (r.feasible, r.reward, r.accuracy), reverse=True)
    seen: set[tuple] = set()
    picked: list[EpisodeRecord] = []
    for record in ranked:
        key = record.identity
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
    judge: Callable[[Resources], RewardFunction] | None = None,
) -> FinalResult:
    """Distill the finalists, pick one, export and measure it against the baseline, alternating.

    `judge` rebuilds the objective's reward from the baseline timed alongside the chosen model, for
    the verdict in `objective` (a budget given as a ratio is a ratio of *that* baseline, not of the
    one measured once at the start, which load can skew); without it `reward` judges."""
    finalists = []
    base_res = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    picked = pick_finalists(records, bench.config.recovery.finalists)
    if not picked:
        failure = next((r.failure for r in records if r.failure), "no episode was run")
        raise CompressionError(f"no episode produced a model ({failure}): run `modeltailor check-model` on the config")
    for i, record in enumerate(picked):
        report(f"finalist {i + 1}: long distillation ({bench.config.recovery.final_steps} steps)")
        policy = record.policy
        model = bench.evaluator.build(policy, recovery_config(bench.config, final=True))
        onnx_bytes = bench.evaluator.export(model, policy)
        val = bench.evaluator.score(model, onnx_bytes, bool(policy.quantized()))
        resources = Resources(val, record.latency_ms, record.memory_bytes)
        finalists.append(
            Finalist(record, model, val, reward(resources, base_res), reward.feasible(resources), onnx_bytes, policy)
        )
    chosen = max(finalists, key=lambda f: (f.feasible, f.score))
    report("exporting the chosen model and measuring it against the baseline")
    baseline_onnx = export_onnx(bench.teacher, bench.input_shape[1:])
    parity, test_accuracy = check_onnx(bench, chosen)
    base_m, best_m = measure_pair(final_device, baseline_onnx, chosen.onnx_bytes)
    if best_m.timed != "alternating":
        report(f"the baseline and the chosen model were not timed alternately on '{final_device.name}' "
               f"({best_m.timed}): summary.json's final_timing says so")
    final_resources = Resources(test_accuracy, best_m.latency.median_ms, best_m.memory.total_bytes)
    paired = Resources(bench.baseline.accuracy, base_m.latency.median_ms, base_m.memory.total_bytes)
    verdict = judge(paired) if judge is not None else reward
    return FinalResult(
        chosen=chosen,
        finalists=finalists,
        onnx_bytes=chosen.onnx_bytes,
        baseline_onnx=baseline_onnx,
        baseline=base_m,
        best=best_m,
        test_accuracy=test_accuracy,
        baseline_test_accuracy=bench.test_accuracy(bench.base),
        baseline_test_accuracy_all_classes=bench.teacher_test_accuracy_all_classes(),
        onnx_parity=parity,
        objective=describe_objective(verdict, verdict.feasible(final_resources)),
    )


def check_onnx(bench: Workbench, chosen: Finalist) -> tuple[OnnxParity, float]:
    """How closely the chosen model's ONNX export matches torch, and its test accuracy."""
    test_x, test_y = bench.labels("test")
    if chosen.policy.quantized():  # int8 vs float: agreement of predictions, not equal logits
        agree = onnx_predictions(chosen.onnx_bytes, test_x) == predict_logits(chosen.model, test_x).argmax(1).numpy()
        parity = OnnxParity(metric="int8_prediction_disagreement", value=1.0 - float(agree.mean()))
        return parity, onnx_accuracy(chosen.onnx_bytes, test_x, test_y)
    # the shipped graph itself (batch 1, run sample by sample): a dynamic-batch export can differ
    # from it, e.g. where a user's forward reads the batch size (`x.reshape(len(x), -1)`)
    diff = float(onnx_matches_torch(chosen.model, chosen.onnx_bytes, test_x[:64]))
    return OnnxParity(metric="max_abs_logit_diff", value=diff), bench.test_accuracy(chosen.model)


def describe_objective(reward: RewardFunction, met: bool) -> ObjectiveCheck:
    """The reward's limits in absolute units and whether the final measurement meets them."""
    settings: dict[str, Any] = asdict(reward) if is_dataclass(reward) and not isinstance(reward, type) else {}
    limits = {k: v for k, v in settings.items() if k in ObjectiveCheck.model_fields and k != "name"}
    return ObjectiveCheck(reward=type(reward).__name__, name=reward.name, met_at_final_measurement=met, **limits)


def measure_pair(device: Device, first: bytes, second: bytes, repeats: int = 5) -> tuple[Measurement, Measurement]:
    """Measure two models in alternating rounds, ``repeats`` times the device's runs each (a
    device that cannot alternate measures them one after the other)."""
    both = device.measure_alternately({0: first, 1: second}, repeats=repeats)
    return both[0], both[1]
