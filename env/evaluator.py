"""Turns a policy into measured numbers: compress -> recover -> export -> measure.

The env is handed a `PolicyEvaluator`; it never touches models, data or devices itself. Results are
cached by the architecture the policy produces (kept channels per unit), so policies that round to
the same model are evaluated once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TypeVar

import torch
from torch import nn

from modeltailor.compressors.distill import (
    DistillConfig,
    TeacherLogits,
    accuracy,
    distill,
    recalibrate_batchnorm,
)
from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.pipeline import PolicyApplier
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import count_params
from modeltailor.compressors.quantization import onnx_accuracy
from modeltailor.compressors.units import ModelAnalysis, analyze_model, unit_widths
from modeltailor.devices.base import Device
from modeltailor.env.records import Outcome
from modeltailor.errors import EpisodeFailed, first_line

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    """Tensors the evaluator needs: distillation inputs/labels and the scoring split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    score_x: torch.Tensor
    score_y: torch.Tensor
    classes: Sequence[int] | None = None


@dataclass
class PolicyEvaluator:
    teacher: nn.Module
    compressor: PolicyApplier
    data: EvalData
    teacher_logits: TeacherLogits
    recovery: DistillConfig
    device: Device
    input_shape: tuple[int, ...]
    cache: dict[tuple, Outcome] = field(default_factory=dict)
    calibration_samples: int = 64

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    @cached_property
    def analysis(self) -> ModelAnalysis:
        return analyze_model(self.teacher, self.example)

    def export(self, model: nn.Module, policy: Policy | None) -> bytes:
        """The ONNX model to ship for a recovered `model`, int8 units quantized (ORT static QDQ)."""
        if policy is None or not policy.quantized():
            return export_onnx(model, self.input_shape[1:])
        calibration = self.data.train_x[: self.calibration_samples]
        return self.compressor.to_onnx(model, policy, self.analysis, self.input_shape[1:], calibration)

    def score(self, model: nn.Module, onnx_bytes: bytes, quantized: bool) -> float:
        """Accuracy on the scoring split: in ONNX Runtime for a quantized model, else in torch."""
        if quantized:
            return onnx_accuracy(onnx_bytes, self.data.score_x, self.data.score_y)
        return accuracy(model, self.data.score_x, self.data.score_y, self.data.classes)

    def compress(self, policy: Policy) -> nn.Module:
        """The structurally compressed teacher for `policy`, before any recovery."""
        return self.compressor.apply(self.teacher, policy, self.example)

    def build(self, policy: Policy, recovery: DistillConfig | None = None) -> nn.Module:
        """The compressed, recovered model for `policy` (the teacher is untouched)."""
        student = self.compress(policy)
        recalibrate_batchnorm(student, self.data.train_x)
        return distill(student, self.teacher_logits, self.data.train_y, recovery or self.recovery)

    def __call__(self, policy: Policy) -> Outcome:
        """Compress, recover, export and measure `policy`'s model.

        EpisodeFailed (one line naming the unit and the stage) when the policy's model cannot be
        built, recovered or exported: the env records the episode as failed. A device that cannot
        measure still raises its own error."""
        start = time.perf_counter()
        student = self._stage("compressing", policy, lambda: self.compress(policy))
        key = (architecture_key(student), tuple(sorted(policy.quantized())), policy.downsample)
        if key in self.cache:
            return replace(self.cache[key], seconds=0.0, cached=True)
        student = self._stage("recovering", policy, lambda: self._recover(student))
        outcome = self.measure(student, start, policy)
        self.cache[key] = outcome
        return outcome

    def _recover(self, student: nn.Module) -> nn.Module:
        recalibrate_batchnorm(student, self.data.train_x)
        return distill(student, self.teacher_logits, self.data.train_y, self.recovery)

    def _stage(self, stage: str, policy: Policy | None, step: Callable[[], T]) -> T:
        """`step()`; for a policy's model, any failure becomes EpisodeFailed naming the unit if one
        action alone reproduces it."""
        if policy is None:
            return step()
        try:
            return step()
        except (KeyboardInterrupt, SystemExit, EpisodeFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a user's architecture makes torch or the exporter raise
            raise EpisodeFailed(f"{stage} failed on {self._culprit(policy)}: {first_line(exc, 200)}") from None

    def _culprit(self, policy: Policy) -> str:
        """'unit X (method)' when one changed action alone fails to build and export; else the units changed."""
        changed = [a for a in policy.actions if a.method != "prune" or a.keep < 1.0 or a.bits != 32]
        for action in changed:
            alone = Policy((action,))
            try:
                self.export(self.compress(alone), alone)
            except Exception:  # noqa: BLE001 - looking for the action that fails
                return f"unit '{action.unit}' ({action.method}{', int8' if action.bits == 8 else ''})"
        names = ", ".join(f"'{a.unit}'" for a in changed[:6]) + (", ..." if len(changed) > 6 else "")
        return f"units {names} together" if changed else "the unchanged model"

    def measure(
        self, model: nn.Module, start: float | None = None, policy: Policy | None = None, device: Device | None = None
    ) -> Outcome:
        """Accuracy on the scoring split plus the exported model measured on `device` (default: the
        evaluator's device)."""
        start = time.perf_counter() if start is None else start
        analysis = self._stage("analysing", policy, lambda: analyze_model(model, self.example))
        onnx_bytes = self._stage("exporting", policy, lambda: self.export(model, policy))
        quantized = sorted(policy.quantized()) if policy is not None else []
        acc = self._stage("scoring", policy, lambda: self.score(model, onnx_bytes, bool(quantized)))
        measurement = (self.device if device is None else device).measure(onnx_bytes)
        channels = unit_widths(model, analysis)
        return Outcome(
            accuracy=acc,
            measurement=measurement,
            params=count_params(model),
            macs=analysis.total_macs,
            kept_channels=channels,
            seconds=time.perf_counter() - start,
            architecture=architecture_id(model, quantized, policy.downsample if policy is not None else 1),
        )


def architecture_key(model: nn.Module) -> tuple:
    """Shapes of every parameter: identifies a pruned architecture of a given model."""
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def architecture_id(model: nn.Module, quantized: list[str], downsample: int = 1) -> str:
    """A short id of the compressed architecture, its int8 units and its downsampling (same id =
    same model shape; downsampling only changes a stride, so it is named)."""
    text = repr((architecture_key(model), quantized) + ((downsample,) if downsample != 1 else ()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
