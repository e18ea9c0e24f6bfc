"""Reward functions: pure functions of an episode's measured outcome and the baseline.

Two forms, chosen in the deployment's objective:

- `TradeoffReward` (weighted trade-off):
  ``w_acc * accuracy + w_lat * log(base_latency / latency) + w_mem * log(base_memory / memory)``.
  Log ratios make halving latency worth the same at any scale; the weights set the exchange rate
  (with w_lat = 0.1, halving latency is worth 0.1 * ln 2 = 6.9 accuracy points).
- `AccuracyFloorReward` (accuracy-guaranteed): ``log(base / cost)`` of latency or memory while
  the accuracy is at least the floor, minus ``penalty * (floor - accuracy)`` below it: the fastest
  (or smallest) model that keeps the accuracy.
- `BudgetReward` (resource-constrained, after AMC): actions are limited so the predicted latency
  and memory stay within the budgets; the reward is the accuracy. A measured result that still
  breaks a budget (the prediction was off) is penalized by how far it is over, so the best
  feasible policy always outranks an infeasible one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Resources:
    """What a model costs and how well it does: the inputs every reward reads."""

    accuracy: float
    latency_ms: float
    memory_bytes: float


class RewardFunction(Protocol):
    @property
    def name(self) -> str: ...  # read-only, so frozen dataclasses satisfy the protocol

    def __call__(self, outcome: Resources, baseline: Resources) -> float: ...

    def feasible(self, outcome: Resources) -> bool: ...


@dataclass(frozen=True)
class TradeoffReward:
    accuracy_weight: float = 1.0
    latency_weight: float = 0.1
    memory_weight: float = 0.02
    name: str = "tradeoff"

    def __call__(self, outcome: Resources, baseline: Resources) -> float:
        return (
            self.accuracy_weight * outcome.accuracy
            + self.latency_weight * math.log(baseline.latency_ms / outcome.latency_ms)
            + self.memory_weight * math.log(baseline.memory_bytes / outcome.memory_bytes)
        )

    def feasible(self, outcome: Resources) -> bool:
        return True


@dataclass(frozen=True)
class BudgetReward:
    """Reward = accuracy within budgets; `penalty` per unit of relative overrun."""

    max_latency_ms: float | None = None
    max_memory_bytes: float | None = None
    penalty: float = 2.0
    name: str = "budget"

    def __call__(self, outcome: Resources, baseline: Resources) -> float:
        return outcome.accuracy - self.penalty * self.overrun(outcome)

    def overrun(self, outcome: Resources) -> float:
        over = 0.0
        if self.max_latency_ms is not None:
            over += max(0.0, outcome.latency_ms / self.max_latency_ms - 1.0)
        if self.max_memory_bytes is not None:
            over += max(0.0, outcome.memory_bytes / self.max_memory_bytes - 1.0)
        return over

    def feasible(self, outcome: Resources) -> bool:
        return self.overrun(outcome) == 0.0


@dataclass(frozen=True)
class AccuracyFloorReward:
    """log speedup (or memory reduction) within an accuracy floor; `penalty` per unit below it."""

    min_accuracy: float
    minimize: str = "latency"
    penalty: float = 20.0
    name: str = "accuracy"

    def __call__(self, outcome: Resources, baseline: Resources) -> float:
        if self.minimize == "memory":
            gain = math.log(baseline.memory_bytes / outcome.memory_bytes)
        else:
            gain = math.log(baseline.latency_ms / outcome.latency_ms)
        return gain - self.penalty * max(0.0, self.min_accuracy - outcome.accuracy)

    def feasible(self, outcome: Resources) -> bool:
        return outcome.accuracy >= self.min_accuracy
