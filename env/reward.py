"""Reward functions: pure functions of an episode's measured outcome and the baseline.

Two forms, chosen in the deployment's objective:

- `TradeoffReward` (weighted trade-off):
  ``w_acc * accuracy + w_lat * log(base_latency / latency) + w_mem * log(base_memory / memory)``.
  Log ratios make halving latency worth the same at any scale; the weights set the exchange rate
  (with w_lat = 0.1, halving latency is worth 0.1 * ln 2 = 6.9 accuracy points).
- `AccuracyFloorReward` (accuracy-guaranteed): ``log(base / cost)`` of latency or memory while
  the accuracy is at least the floor; below it ``min(log(base / cost), 0) - penalty * (floor -
  accuracy)``, so a miss never outranks a model within the floor: the fastest (or smallest) model
  that keeps the accuracy. During a search the accuracy it judges can be the
  final accuracy a `RecoveryCorrection` predicts from the episode's (a short recovery gives back
  little of a deep cut that the long one recovers).
- `BudgetReward` (resource-constrained, after AMC): actions are limited so the predicted latency
  and memory stay within the budgets; the reward is the accuracy. A measured result that still
  breaks a budget (the prediction was off) is penalized by how far it is over, so the best
  feasible policy always outranks an infeasible one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

MIN_CORRECTION_PAIRS = 3


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
class RecoveryCorrection:
    """What the long recovery gives back, learned from finalists: the accuracy a model loses after
    it (its final drop, a fraction of the baseline's accuracy) as a non-decreasing function of what
    it lost after the episode's short recovery (its episode drop).

    Fitted by isotonic regression (scikit-learn) on (episode drop, final drop) pairs. Never
    optimistic beyond what was seen: a drop deeper than every fitted one keeps the gain seen at the
    deepest (the long recovery is not assumed to give back more), one milder than every fitted one
    is predicted no worse than the fitted mildest, and no prediction is worse than the episode's own
    drop (a longer recovery of the same model does not lose accuracy)."""

    episode_drops: tuple[float, ...]  # increasing knots
    final_drops: tuple[float, ...]
    pairs: int

    @classmethod
    def fit(cls, pairs: Sequence[tuple[float, float]], min_pairs: int = MIN_CORRECTION_PAIRS) -> RecoveryCorrection | None:
        """The correction for `pairs` of (episode drop, final drop); None with fewer than `min_pairs`
        pairs or fewer than two distinct episode drops (nothing to learn a slope from)."""
        if len(pairs) < min_pairs or len({round(x, 9) for x, _ in pairs}) < 2:
            return None
        from sklearn.isotonic import IsotonicRegression

        x = np.array([p[0] for p in pairs], dtype=float)
        y = np.array([p[1] for p in pairs], dtype=float)
        knots = np.unique(x)
        fitted = IsotonicRegression(increasing=True).fit(x, y).predict(knots)
        return cls(tuple(float(k) for k in knots), tuple(float(v) for v in fitted), len(pairs))

    def final_drop(self, episode_drop: float) -> float:
        """The predicted drop after the long recovery of a model that dropped `episode_drop` in its episode."""
        xs, ys = self.episode_drops, self.final_drops
        predicted = float(np.interp(episode_drop, xs, ys)) + max(0.0, episode_drop - xs[-1])
        return min(predicted, episode_drop)

    def describe(self) -> str:
        """One line: what it was fitted on and what it predicts at its knots, in points."""
        shown = ", ".join(f"{100 * x:.1f}->{100 * y:.1f}" for x, y in zip(self.episode_drops, self.final_drops, strict=True))
        return f"{self.pairs} finalists, episode drop -> final drop in points: {shown}"


@dataclass(frozen=True)
class AccuracyFloorReward:
    """log speedup (or memory reduction) within an accuracy floor; below it, `penalty` per unit
    of the shortfall and no credit for speed (a slowdown still counts).

    With a `correction` (and the `reference` accuracy drops are measured from, the baseline's), an
    outcome is judged by the accuracy the correction predicts after the long recovery."""

    min_accuracy: float
    minimize: str = "latency"
    penalty: float = 20.0
    name: str = "accuracy"
    correction: RecoveryCorrection | None = None
    reference: float | None = None

    def judged(self, accuracy: float) -> float:
        """The accuracy held against the floor: measured, or predicted after the long recovery."""
        if self.correction is None or self.reference is None:
            return accuracy
        return self.reference - self.correction.final_drop(self.reference - accuracy)

    def __call__(self, outcome: Resources, baseline: Resources) -> float:
        if self.minimize == "memory":
            gain = math.log(baseline.memory_bytes / outcome.memory_bytes)
        else:
            gain = math.log(baseline.latency_ms / outcome.latency_ms)
        deficit = self.min_accuracy - self.judged(outcome.accuracy)
        if deficit <= 0:
            return gain
        # Below the floor the speed counts for nothing (a slowdown still counts against): a miss never
        # outranks a model within the floor that is at least as fast as the baseline, however fast it is.
        # With the speed credited (up to 2026-12-04) a model 1 point under the floor at 1.22x ranked
        # with one within it at 1.0x, and the surrogate steered most episodes under the floor.
        return min(gain, 0.0) - self.penalty * deficit

    def feasible(self, outcome: Resources) -> bool:
        return self.judged(outcome.accuracy) >= self.min_accuracy
