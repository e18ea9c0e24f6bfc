"""``modeltailor check-model``: what a search would find in a model, before the search runs.

The units (Torch-Pruning dependency groups) with their kind, channels, MACs and parameters, whether
they sit in a residual block (a skippable block, or channels tied to other layers by an add), the
methods the pre-search check (`compressors/precheck.py`) passed and failed on each, which units a
search would freeze and why, and the output layer found by running the model. Weights do not
change any of this, so an untrained model (a factory not trained yet) is checked as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from modeltailor.compressors.head import narrow_classifier
from modeltailor.compressors.units import ModelAnalysis, find_output_layer
from modeltailor.datasets import remap_labels
from modeltailor.errors import ModelLoadError
from modeltailor.experiments.search.teacher import (
    build_student_shape,
    check_outputs,
    load_teacher,
    teacher_cache_path,
)
from modeltailor.experiments.search.workbench import (
    check_methods,
    check_model_units,
    load_deployment_data,
    make_applier,
    searched_analysis,
)
from modeltailor.experiments.spec.deployment import DeploymentConfig


@dataclass(frozen=True)
class UnitRow:
    unit: str
    kind: str
    residual: bool
    channels: int
    in_channels: int
    macs: int
    params: int
    layers: int
    methods: list[str]
    failed: dict[str, str]
    frozen: bool


@dataclass(frozen=True)
class ModelReport:
    model: str
    teacher: str
    input_shape: tuple[int, ...]
    classes: int
    output_layer: str | None
    narrowable: bool
    total_macs: int
    total_params: int
    methods_checked: list[str]
    units: list[UnitRow] = field(default_factory=list)

    @property
    def frozen(self) -> list[UnitRow]:
        return [u for u in self.units if u.frozen]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model(config: DeploymentConfig) -> ModelReport:
    """Analyse and check the configured model on its data; the model is never trained here."""
    full, splits, classes = load_deployment_data(config)
    model, teacher = _model(config, full)
    input_shape = (1, splits.in_channels, splits.input_size, splits.input_size)
    example = torch.zeros(input_shape)
    output = find_output_layer(model, example)
    base = narrow_classifier(model, classes, example) if classes else model
    analysis = searched_analysis(config, base, example)
    if not analysis.units:
        raise ModelLoadError("the model has no prunable conv/linear layer: nothing to compress")
    train_x, train_y = splits.train.tensors
    applier = make_applier(config.search.importance, config.search.round_to, train_x,
                           remap_labels(train_y, classes) if classes else train_y, config.search.lowrank_scheme)
    checks = check_model_units(config, base, analysis, applier, train_x)
    return ModelReport(
        model=config.model.factory or config.model.name or "resnet20",
        teacher=teacher,
        input_shape=input_shape,
        classes=len(classes) if classes else splits.num_classes,
        output_layer=analysis.output.name if analysis.output else None,
        narrowable=bool(output and output.one_to_one),
        total_macs=analysis.total_macs,
        total_params=analysis.total_params,
        methods_checked=check_methods(config),
        units=[_row(analysis, u.name, checks.get(u.name)) for u in analysis.units],
    )


def _model(config: DeploymentConfig, full) -> tuple[nn.Module, str]:
    """The teacher when one exists (weights or cache), else the untrained architecture: never trains."""
    if config.model.weights is not None or teacher_cache_path(config).is_file():
        return load_teacher(config, full)
    model = build_student_shape(config, full)
    check_outputs(model, full)
    return model.eval(), "untrained (no weights yet: `modeltailor train` trains it)"


def _row(analysis: ModelAnalysis, name: str, check) -> UnitRow:
    unit = analysis.unit(name)
    tied = [layer for layer in analysis.layers if layer.out_unit == name and not layer.depthwise]
    return UnitRow(
        unit=name,
        kind=unit.kind,
        residual=unit.block is not None or len(tied) > 1,
        channels=unit.channels,
        in_channels=unit.in_channels,
        macs=unit.macs,
        params=unit.params,
        layers=len(unit.members),
        methods=list(check.passed) if check else [],
        failed=dict(check.failed) if check else {},
        frozen=bool(check and check.frozen),
    )
