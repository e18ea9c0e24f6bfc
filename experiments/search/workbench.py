"""The workbench: everything one deployment's search needs, built once.

Loads the data, the teacher (trained on every class: it is the one model shipped to every
deployment), restricts the data to the deployment's classes and narrows the head to them, finds the
compressible units, sets up the device and the policy evaluator, and measures the baseline once
(always timed fresh, past the latency cache: a budget is set from it).

Label spaces: `splits` keep original class ids; the search works on the narrowed model, whose
outputs are the deployment's classes in order, so its labels are remapped (`remap_labels`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from modeltailor.common.storage import cache_dir
from modeltailor.compressors.compute import torch_device
from modeltailor.compressors.distill import DistillConfig, TeacherLogits, accuracy
from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.head import narrow_classifier
from modeltailor.compressors.lowrank import LowRankCompressor
from modeltailor.compressors.pipeline import PolicyApplier, lowrank_units
from modeltailor.compressors.precheck import UnitChecks, check_units
from modeltailor.compressors.pruning import DATA_DRIVEN, ChannelPruningCompressor, count_params
from modeltailor.compressors.resolution import downsampled
from modeltailor.compressors.units import ModelAnalysis, analyze_model
from modeltailor.datasets import (
    DataSplits,
    load_dataset,
    remap_labels,
    resolve_classes,
    restrict_splits,
)
from modeltailor.devices.base import Device
from modeltailor.devices.cache import CachedDevice
from modeltailor.devices.profiles import get_device
from modeltailor.env.evaluator import EvalData, PolicyEvaluator
from modeltailor.env.records import Outcome
from modeltailor.errors import ModelLoadError
from modeltailor.experiments.search.teacher import load_teacher
from modeltailor.experiments.spec.deployment import DeploymentConfig

log = logging.getLogger(__name__)

Report = Callable[[str], None]


@dataclass
class Workbench:
    config: DeploymentConfig
    splits: DataSplits
    teacher: nn.Module
    base: nn.Module
    teacher_source: str
    classes: list[int] | None
    input_shape: tuple[int, ...]
    analysis: ModelAnalysis
    device: Device
    evaluator: PolicyEvaluator
    baseline: Outcome
    overhead_ms: float = 0.0
    """Latency of a one-node model on the device: its fixed cost per inference."""
    checks: UnitChecks | None = None
    """Which methods passed the pre-search check on each unit (`analysis` holds the unfrozen units)."""
    latency_cache: CachedDevice | None = None
    """The latency cache `device` is, with its counters; None when the search was handed a device."""

    def units_for(self, method: str) -> frozenset[str]:
        """Units `method` may be used on in this search (every unit when unchecked)."""
        if self.checks is None:
            return frozenset(u.name for u in self.analysis.units)
        return self.checks.supporting(method)

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    @property
    def output_classes(self) -> list[int]:
        return self.classes if self.classes else list(range(self.splits.num_classes))

    def labels(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of a split, labels in the narrowed model's output space."""
        return _split_labels(self.splits, split, self.classes)

    def test_accuracy(self, model: nn.Module) -> float:
        """Accuracy of a model with the deployment's outputs (the narrowed head) on the test split."""
        return accuracy(model, *self.labels("test"))

    def teacher_test_accuracy_all_classes(self) -> float:
        """The original teacher on the subset's test images, predicting among ALL classes."""
        x, y = self.splits.test.tensors
        return accuracy(self.teacher, x, y)


def recovery_config(config: DeploymentConfig, final: bool = False) -> DistillConfig:
    r = config.recovery
    return DistillConfig(
        steps=r.final_steps if final else r.episode_steps,
        batch_size=r.batch_size,
        lr=r.final_lr if final else r.lr,
        temperature=r.temperature,
        alpha=r.alpha,
        seed=config.search.seed,
        device=str(torch_device(config.compute.device)),
        precision=config.compute.precision,
    )


LATENCY_CACHE = "latency-cache-v3.json"
"""v3: keys hold a hash of the measurement's identity (host, CPU, device settings, ORT version, runs,
warm-up) and entries when and where they were measured (v2 keyed by profile name only, v1 held
pooled medians: neither is ever read)."""


def build_device(config: DeploymentConfig) -> CachedDevice:
    """The deployment's device behind the latency cache: persistent (LATENCY_CACHE in the cache
    folder) unless `device.cache` is false, in memory then (repeats within the search reused)."""
    device = get_device(
        config.device.name, profiles=config.device.profiles, runs=config.device.runs, warmup=config.device.warmup
    )
    return CachedDevice(device, path=cache_dir() / LATENCY_CACHE if config.device.cache else None)


def cache_line(cache: CachedDevice) -> str:
    """What the latency cache served and measured so far, in words, for the progress lines."""
    if cache.path is None:
        where = "persistent cache off (--no-cache / device.cache: false)"
    else:
        where = f"entries from this host up to {cache.max_age_days:g} days old in {cache.path}"
    return (
        f"latency cache: {cache.hits_earlier_runs} served from earlier runs, {cache.repeats_this_run} repeats "
        f"within this run, {cache.measured} measured ({cache.expired} of them replaced expired entries); {where}"
    )


def probe_device(device: Device) -> float:
    """Measure a one-node model: an unreachable agent or a wrong token fails here, before training.
    Returns its median latency (ms), the device's fixed cost per inference."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])], "probe",
        [value("input", TensorProto.FLOAT, [1, 1, 2, 2])], [value("logits", TensorProto.FLOAT, [1, 1, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    # past any cache: it must reach the device
    return float(device.uncached().measure(model.SerializeToString()).latency.median_ms)


def load_deployment_data(config: DeploymentConfig) -> tuple[DataSplits, DataSplits, list[int] | None]:
    """(all-class splits, the deployment's splits, class ids or None for all)."""
    full = load_dataset(
        config.data.name,
        root=str(config.data.root) if config.data.root else None,
        input_size=config.data.input_size,
        seed=config.data.seed,
    )
    classes = resolve_classes(config.classes, full.class_names, full.name)
    if classes is not None and len(classes) == full.num_classes and classes == sorted(classes):
        classes = None  # every class in order: nothing to narrow
    return full, (restrict_splits(full, classes) if classes else full), classes


def searched_analysis(config: DeploymentConfig, base: nn.Module, example: torch.Tensor) -> ModelAnalysis:
    """The units of `base` with the costs of the model every episode builds: at the lower
    resolution with `search.downsample` 2 (same units, a quarter of the work after the first conv)."""
    searched = downsampled(base, config.search.downsample, example)
    return analyze_model(searched, example, projection_skips=config.search.skip_projection)


def build_workbench(
    config: DeploymentConfig, report: Report = log.info, device: Device | None = None
) -> Workbench:
    """Everything a search needs; on `device` when given (e.g. a campaign's), else the config's."""
    cache = build_device(config) if device is None else None
    device = cache if cache is not None else device
    assert device is not None
    overhead_ms = probe_device(device)  # fail fast on an unknown or unreachable device, before any training
    report(f"loading data '{config.data.name}'")
    full, splits, classes = load_deployment_data(config)
    report("loading the teacher (trains and caches a zoo model on first use)")
    teacher, source = load_teacher(config, full, _train_progress(report))
    input_shape = (1, splits.in_channels, splits.input_size, splits.input_size)
    base = narrow_classifier(teacher, classes, torch.zeros(input_shape)) if classes else teacher
    found = searched_analysis(config, base, torch.zeros(input_shape))
    if not found.units:
        raise ModelLoadError("the model has no prunable conv/linear layer: nothing to compress")
    evaluator = _evaluator(config, splits, classes, base, input_shape, device)
    report(f"checking {len(found.units)} units: each method alone at its lowest setting, exported and compared")
    checks = check_model_units(config, base, found, evaluator.compressor, evaluator.data.train_x)
    _report_checks(checks, report)
    analysis = checks.restrict(found)
    if not analysis.units:
        first = checks.frozen()[0]
        raise ModelLoadError(
            f"no unit of the model can be compressed (unit '{first.unit}': {first.reason()}): "
            "run `modeltailor check-model` for every unit's reason"
        )
    evaluator.analysis = analysis
    report(f"measuring the baseline on '{config.device.name}' (timed fresh, not from the latency cache)")
    baseline = _baseline(evaluator, teacher, base, input_shape)
    check_trained(baseline.accuracy, len(classes) if classes else splits.num_classes, source, _untrained_hint(config))
    return Workbench(
        config, splits, teacher, base, source, classes, input_shape, analysis, device, evaluator, baseline,
        overhead_ms, checks, cache,
    )


NEAR_CHANCE = 0.1
"""A teacher whose validation accuracy is below chance + this share of the way from chance to 100%
is refused as untrained (e.g. 19% for 10 classes, 55% for 2)."""


def check_trained(accuracy: float, classes: int, source: str, hint: str) -> None:
    """ModelLoadError when the teacher scores near chance: compressing an untrained model is meaningless."""
    chance = 1.0 / max(classes, 1)
    if accuracy < chance + NEAR_CHANCE * (1.0 - chance):
        raise ModelLoadError(
            f"the teacher ({source}) scores {accuracy:.1%} on the validation split, near chance ({chance:.1%} for "
            f"{classes} classes): {hint}"
        )


def _untrained_hint(config: DeploymentConfig) -> str:
    """What to do about a near-chance teacher, by where it came from."""
    if config.model.weights is not None:
        return "it looks untrained: set model.weights to trained weights"
    return (
        f"it trained for {config.train.epochs} epoch(s): raise train.epochs (a new recipe trains a new teacher) "
        "or set model.weights to trained weights"
    )


CHECK_SAMPLES = 8
"""Training images the pre-search check runs each compressed model on (and calibrates int8 with)."""


def check_methods(config: DeploymentConfig) -> list[str]:
    """The methods a search may use, as `check_units` names them (prune always: it is the amount action)."""
    s = config.search
    return ["prune", *(["skip"] if s.skip_blocks else []), *(m for m in s.methods if m != "prune")]


def check_model_units(
    config: DeploymentConfig, base: nn.Module, analysis: ModelAnalysis, applier: PolicyApplier, train_x: torch.Tensor
) -> UnitChecks:
    """`check_units` with the deployment's methods and lowest keep."""
    methods = check_methods(config)
    candidates = lowrank_units(analysis, base, config.search.round_to) if "lowrank" in methods else set()
    return check_units(
        base, analysis, applier, train_x[:CHECK_SAMPLES], methods=methods,
        min_keep=config.search.min_keep, lowrank_units=candidates,
    )


def _report_checks(checks: UnitChecks, report: Report) -> None:
    for check in checks.checks:
        if check.frozen:
            report(f"unit '{check.unit}' is frozen for this search: {check.reason()}")
        elif check.failed:
            report(f"unit '{check.unit}': {', '.join(check.failed)} off for this search: {check.reason()}")


def scoring_sample(
    x: torch.Tensor, y: torch.Tensor, samples: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples` of a seeded shuffle of (x, y): a fixed random sample (all when None or more)."""
    if samples is None or samples >= len(y):
        return x, y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:samples]
    return x[order], y[order]


def _split_labels(splits: DataSplits, split: str, classes: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = getattr(splits, split).tensors
    return x, (remap_labels(y, classes) if classes else y)


def _evaluator(
    config: DeploymentConfig,
    splits: DataSplits,
    classes: list[int] | None,
    base: nn.Module,
    input_shape: tuple[int, ...],
    device: Device,
) -> PolicyEvaluator:
    train_x, train_y = _split_labels(splits, "train", classes)
    val_x, val_y = scoring_sample(*_split_labels(splits, "val", classes), config.recovery.val_samples, config.data.seed)
    return PolicyEvaluator(
        teacher=base,
        compressor=make_applier(config.search.importance, config.search.round_to, train_x, train_y,
                                config.search.lowrank_scheme),
        data=EvalData(train_x, train_y, val_x, val_y),
        teacher_logits=TeacherLogits(base, train_x),
        recovery=recovery_config(config),
        device=device,
        input_shape=input_shape,
    )


IMPORTANCE_SAMPLES = 256
"""Training images a data-driven importance (activation, taylor) ranks channels on."""


def make_applier(importance: str, round_to: int, train_x: torch.Tensor, train_y: torch.Tensor,
                 lowrank_scheme: str = "auto") -> PolicyApplier:
    """The policy applier for a deployment; search and `apply` build it the same way."""
    data = (train_x[:IMPORTANCE_SAMPLES], train_y[:IMPORTANCE_SAMPLES]) if importance in DATA_DRIVEN else None
    return PolicyApplier(
        ChannelPruningCompressor(importance, round_to, calibration=data), LowRankCompressor(lowrank_scheme, round_to=round_to)
    )


def _baseline(
    evaluator: PolicyEvaluator, teacher: nn.Module, base: nn.Module, input_shape: tuple[int, ...]
) -> Outcome:
    """The uncompressed teacher: accuracy restricted to the classes, latency of the original model,
    timed fresh on the device (past any cache: the budget is computed from it)."""
    device = evaluator.device.uncached()
    outcome = evaluator.measure(base, device=device)
    if base is teacher:
        return outcome
    measurement = device.measure(export_onnx(teacher, input_shape[1:]))
    macs = analyze_model(teacher, torch.zeros(input_shape)).total_macs
    return replace(outcome, measurement=measurement, params=count_params(teacher), macs=macs)


def _train_progress(report: Report) -> Callable[[int, int, float], None]:
    def progress(epoch: int, epochs: int, loss: float) -> None:
        if epoch == epochs or epoch % 5 == 0:
            report(f"training the teacher: epoch {epoch}/{epochs}, loss {loss:.3f}")

    return progress
