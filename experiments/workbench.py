"""The workbench: everything one deployment's search needs, built once.

Loads the data (restricted to the deployment's classes), the teacher, finds the compressible units,
sets up the device and the policy evaluator, and measures the baseline once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from modeltailor.compressors.distill import DistillConfig, TeacherLogits, accuracy
from modeltailor.compressors.pruning import ChannelPruningCompressor
from modeltailor.compressors.units import ModelAnalysis, analyze_model
from modeltailor.datasets import DataSplits, load_dataset
from modeltailor.env.devices import CachedDevice, Device, get_device
from modeltailor.env.evaluator import EvalData, Outcome, PolicyEvaluator
from modeltailor.errors import DataError, ModelLoadError
from modeltailor.experiments.config import DeploymentConfig
from modeltailor.experiments.teacher import cache_dir, load_teacher

log = logging.getLogger(__name__)

Report = Callable[[str], None]


@dataclass
class Workbench:
    config: DeploymentConfig
    splits: DataSplits
    teacher: nn.Module
    teacher_source: str
    classes: list[int] | None
    input_shape: tuple[int, ...]
    analysis: ModelAnalysis
    device: Device
    evaluator: PolicyEvaluator
    baseline: Outcome

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    def test_accuracy(self, model: nn.Module) -> float:
        x, y = self.splits.test.tensors
        return accuracy(model, x, y, self.classes)


def recovery_config(config: DeploymentConfig, final: bool = False) -> DistillConfig:
    r = config.recovery
    return DistillConfig(
        steps=r.final_steps if final else r.episode_steps,
        batch_size=r.batch_size,
        lr=r.final_lr if final else r.lr,
        temperature=r.temperature,
        alpha=r.alpha,
        seed=config.search.seed,
    )


def build_device(config: DeploymentConfig, cached: bool = True) -> Device:
    device = get_device(config.device.name, runs=config.device.runs, warmup=config.device.warmup)
    if not cached:
        return device
    return CachedDevice(device, path=cache_dir() / "latency-cache.json")


def build_workbench(config: DeploymentConfig, report: Report = log.info) -> Workbench:
    device = build_device(config)  # fail fast on an unknown device, before any training
    report(f"loading data '{config.data.name}'")
    splits = load_dataset(
        config.data.name,
        root=str(config.data.root) if config.data.root else None,
        input_size=config.data.input_size,
        seed=config.data.seed,
        classes=config.classes,
    )
    report("loading the teacher (trains and caches a zoo model on first use)")
    teacher, source = load_teacher(config, splits, _train_progress(report))
    input_shape = (1, splits.in_channels, splits.input_size, splits.input_size)
    _check_teacher(teacher, input_shape, splits)
    analysis = analyze_model(teacher, torch.zeros(input_shape))
    if not analysis.units:
        raise ModelLoadError("the model has no prunable conv/linear layer: nothing to compress")
    train_x, train_y = splits.train.tensors
    val_x, val_y = splits.val.tensors
    evaluator = PolicyEvaluator(
        teacher=teacher,
        compressor=ChannelPruningCompressor(config.search.importance, config.search.round_to),
        data=EvalData(train_x, train_y, val_x, val_y, config.classes),
        teacher_logits=TeacherLogits(teacher, train_x),
        recovery=recovery_config(config),
        device=device,
        input_shape=input_shape,
    )
    report(f"measuring the baseline on '{config.device.name}'")
    baseline = evaluator.measure(teacher)
    return Workbench(
        config, splits, teacher, source, config.classes, input_shape, analysis,
        evaluator.device, evaluator, baseline,
    )


def _check_teacher(teacher: nn.Module, input_shape: tuple[int, ...], splits: DataSplits) -> None:
    try:
        with torch.no_grad():
            out = teacher.eval()(torch.zeros(input_shape))
    except Exception as exc:  # noqa: BLE001 - a user model failing on the data's shape
        raise ModelLoadError(
            f"the model fails on input of shape {tuple(input_shape)}: {str(exc).splitlines()[0]}"
        ) from None
    if out.ndim != 2 or out.shape[1] < splits.num_classes:
        raise DataError(
            f"the model outputs shape {tuple(out.shape)} but data set '{splits.name}' has "
            f"{splits.num_classes} classes: build the model with num_classes={splits.num_classes}"
        )


def _train_progress(report: Report) -> Callable[[int, int, float], None]:
    def progress(epoch: int, epochs: int, loss: float) -> None:
        if epoch == epochs or epoch % 5 == 0:
            report(f"training the teacher: epoch {epoch}/{epochs}, loss {loss:.3f}")

    return progress
