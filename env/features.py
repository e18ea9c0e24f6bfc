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
| 20-22 | objective one-hot: budget, accuracy, tradeoff |
| 23 | latency budget / baseline latency (1 without one) |
| 24 | memory budget / baseline memory (1 without one) |
| 25 | accuracy objective: allowed drop in points / 10 (0 otherwise) |
| 26 | device: measured ms per GMAC of the baseline, (log10 + 1) / 4 |
| 27 | device: fixed cost per inference (a one-node model) / baseline latency |

Rows 16 and 20-27 describe the deployment (`DeploymentFeatures`), so one agent can serve many
deployments and a warm start can find the nearest one (`deployment_vector`). `OBS_LAYOUT` names
this layout: an agent checkpoint saved under another one is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modeltailor.compressors.units import UNIT_KINDS, ModelAnalysis, Unit, estimate_macs

OBS_SIZE = 28
OBS_LAYOUT = 2
"""Version of the layout above; 1 was rows 0-19 only."""
OBJECTIVES: tuple[str, ...] = ("budget", "accuracy", "tradeoff")


@dataclass(frozen=True)
class DeploymentContext:
    """What kind of deployment the env is in: fixed for a whole search."""

    class_fraction: float = 1.0
    objective: str = "tradeoff"
    latency_ratio: float = 1.0
    memory_ratio: float = 1.0
    accuracy_drop_points: float = 0.0
    ms_per_gmac: float = 10.0
    overhead_share: float = 0.0

    def vector(self) -> list[float]:
        """The deployment's rows of the observation (16 and 20-27), in that order."""
        onehot = [1.0 if self.objective == o else 0.0 for o in OBJECTIVES]
        return [
            self.class_fraction,
            *onehot,
            min(self.latency_ratio, 2.0),
            min(self.memory_ratio, 2.0),
            min(self.accuracy_drop_points / 10, 2.0),
            float(np.clip((math.log10(max(self.ms_per_gmac, 1e-6)) + 1) / 4, 0.0, 2.0)),
            float(np.clip(self.overhead_share, 0.0, 2.0)),
        ]


@dataclass(frozen=True)
class DeploymentFeatures:
    class_fraction: float = 1.0
    budget_fraction: float = 1.0
    skip_allowed: bool = False
    lowrank_units: frozenset[str] = frozenset()
    int8: bool = False
    context: DeploymentContext | None = None


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
    context = deployment.context or DeploymentContext(class_fraction=deployment.class_fraction)
    obs[20:28] = context.vector()[1:]
    return obs


def _untouched_macs(analysis: ModelAnalysis, decided: Mapping[str, float]) -> float:
    return sum(
        layer.macs
        for layer in analysis.layers
        if layer.out_unit not in decided and layer.in_unit not in decided
    )
