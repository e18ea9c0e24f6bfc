"""Observation features: a pure function of the unit, the decisions so far and the deployment.

Layout (all roughly in [0, 1]):

| slice | feature |
| --- | --- |
| 0-4 | unit kind one-hot: conv, pointwise, depthwise, grouped, linear |
| 5 | log2(out channels) / 10 |
| 6 | log2(in channels) / 10 |
| 7 | kernel / 7 |
| 8 | stride / 2 |
| 9 | MACs the unit controls / model MACs |
| 10 | parameters of the unit's layers / model parameters |
| 11 | position: index / (units - 1) |
| 12 | spent: estimated MACs removed by the decisions so far / model MACs |
| 13 | left: MACs of layers no decision has touched yet / model MACs |
| 14 | budget: target MACs / model MACs (1 when there is no budget) |
| 15 | previous action, mapped back to [0, 1] |
| 16 | deployment: classes in the deployment / classes of the model |
| 17 | 1 if the unit's residual block can be skipped whole |
| 18 | 1 if the unit's root layer can be factorized (low-rank) |
| 19 | 1 if int8 is offered on this device |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modeltailor.compressors.units import UNIT_KINDS, ModelAnalysis, Unit, estimate_macs

OBS_SIZE = 20


@dataclass(frozen=True)
class DeploymentFeatures:
    class_fraction: float = 1.0
    budget_fraction: float = 1.0
    skip_allowed: bool = False
    lowrank_units: frozenset[str] = frozenset()
    int8: bool = False


def observe(
    analysis: ModelAnalysis,
    unit: Unit,
    decided: Mapping[str, float],
    previous_action: float,
    deployment: DeploymentFeatures,
) -> np.ndarray:
    obs = np.zeros(OBS_SIZE, dtype=np.float32)
    obs[UNIT_KINDS.index(unit.kind)] = 1.0
    total = max(analysis.total_macs, 1)
    obs[5] = math.log2(max(unit.channels, 1)) / 10
    obs[6] = math.log2(max(unit.in_channels, 1)) / 10
    obs[7] = unit.kernel / 7
    obs[8] = unit.stride / 2
    obs[9] = unit.macs / total
    obs[10] = unit.params / max(analysis.total_params, 1)
    obs[11] = unit.index / max(len(analysis.units) - 1, 1)
    obs[12] = 1.0 - estimate_macs(analysis, decided) / total
    obs[13] = _untouched_macs(analysis, decided) / total
    obs[14] = deployment.budget_fraction
    obs[15] = (previous_action + 1.0) / 2.0
    obs[16] = deployment.class_fraction
    obs[17] = 1.0 if unit.block is not None and deployment.skip_allowed else 0.0
    obs[18] = 1.0 if unit.name in deployment.lowrank_units else 0.0
    obs[19] = 1.0 if deployment.int8 else 0.0
    return obs


def _untouched_macs(analysis: ModelAnalysis, decided: Mapping[str, float]) -> float:
    return sum(
        layer.macs
        for layer in analysis.layers
        if layer.out_unit not in decided and layer.in_unit not in decided
    )
