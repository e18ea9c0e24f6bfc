"""Turns a policy into measured numbers: compress -> recover -> export -> measure.

The env is handed a `PolicyEvaluator`; it never touches models, data or devices itself. Results are
cached by the architecture the policy produces (kept channels per unit), so policies that round to
the same model are evaluated once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from modeltailor.compressors.base import Compressor
from modeltailor.compressors.distill import (
    DistillConfig,
    TeacherLogits,
    accuracy,
    distill,
    recalibrate_batchnorm,
)
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import count_params
from modeltailor.compressors.units import ModelAnalysis, analyze_model
from modeltailor.env.devices import Device, Measurement
from modeltailor.env.onnx_export import export_onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    """Tensors the evaluator needs: distillation inputs/labels and the scoring split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    score_x: torch.Tensor
    score_y: torch.Tensor
    classes: Sequence[int] | None = None


@dataclass(frozen=True)
class Outcome:
    accuracy: float
    measurement: Measurement
    params: int
    macs: int
    kept_channels: dict[str, int]
    seconds: float
    cached: bool = False

    @property
    def latency_ms(self) -> float:
        return self.measurement.latency.median_ms

    @property
    def memory_bytes(self) -> int:
        return self.measurement.memory.total_bytes


@dataclass
class PolicyEvaluator:
    teacher: nn.Module
    compressor: Compressor
    data: EvalData
    teacher_logits: TeacherLogits
    recovery: DistillConfig
    device: Device
    input_shape: tuple[int, ...]
    cache: dict[tuple, Outcome] = field(default_factory=dict)

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    def build(self, policy: Policy, recovery: DistillConfig | None = None) -> nn.Module:
        """The compressed, recovered model for `policy` (the teacher is untouched)."""
        student = self.compressor.apply(self.teacher, policy, self.example)
        recalibrate_batchnorm(student, self.data.train_x)
        return distill(student, self.teacher_logits, self.data.train_y, recovery or self.recovery)

    def __call__(self, policy: Policy) -> Outcome:
        start = time.perf_counter()
        student = self.compressor.apply(self.teacher, policy, self.example)
        key = architecture_key(student)
        if key in self.cache:
            return replace(self.cache[key], seconds=0.0, cached=True)
        recalibrate_batchnorm(student, self.data.train_x)
        student = distill(student, self.teacher_logits, self.data.train_y, self.recovery)
        outcome = self.measure(student, start)
        self.cache[key] = outcome
        return outcome

    def measure(self, model: nn.Module, start: float | None = None) -> Outcome:
        """Accuracy on the scoring split plus device measurement of the exported model."""
        start = time.perf_counter() if start is None else start
        analysis = analyze_model(model, self.example)
        acc = accuracy(model, self.data.score_x, self.data.score_y, self.data.classes)
        measurement = self.device.measure(export_onnx(model, self.input_shape[1:]))
        return Outcome(
            accuracy=acc,
            measurement=measurement,
            params=count_params(model),
            macs=analysis.total_macs,
            kept_channels=kept_channels(model, analysis),
            seconds=time.perf_counter() - start,
        )


def architecture_key(model: nn.Module) -> tuple:
    """Shapes of every parameter: identifies a pruned architecture of a given model."""
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def kept_channels(model: nn.Module, analysis: ModelAnalysis) -> dict[str, int]:
    modules = dict(model.named_modules())
    out: dict[str, int] = {}
    for unit in analysis.units:
        module = modules[unit.name]
        out[unit.name] = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    return out
