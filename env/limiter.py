"""Action limits, handed to the env: how large a keep ratio a unit may still take.

`BudgetLimiter` caps each action AMC-style: even if every later unit were compressed as hard as
allowed, the predicted latency / memory of the model must stay within the budget (scaled by a
safety factor). The predictions come from `LinearCostModel`s of latency in MACs and memory in
parameters, refitted on every measured outcome the env reports. `NoLimit` is for objectives without
a budget. The env knows only the `ActionLimiter` protocol, never which objective or reward is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from modeltailor.compressors.units import ModelAnalysis, estimate_macs, estimate_params
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.results import Outcome

UNLIMITED = float("inf")


@dataclass(frozen=True)
class Budget:
    """Absolute resource limits; None leaves that resource unlimited."""

    max_latency_ms: float | None = None
    max_memory_bytes: float | None = None


@dataclass(frozen=True)
class Trial:
    """The unit being decided, with every other unit's setting, for cost estimates.

    ``keep``: channel keep ratio of each decided pruned unit and of each later unit at the lowest
    setting it may still take; ``ranks``: rank ratio of each decided low-rank unit.
    """

    analysis: ModelAnalysis
    unit: str
    method: str
    keep: Mapping[str, float]
    ranks: Mapping[str, float]

    def _settings(self, keep: float) -> tuple[dict[str, float], dict[str, float]]:
        if self.method == "lowrank":
            return dict(self.keep), {**self.ranks, self.unit: keep}
        return {**self.keep, self.unit: keep}, dict(self.ranks)

    def macs(self, keep: float) -> float:
        """Estimated model MACs with this unit at `keep`."""
        return estimate_macs(self.analysis, *self._settings(keep))

    def params(self, keep: float) -> float:
        """Estimated model parameters with this unit at `keep`."""
        return estimate_params(self.analysis, *self._settings(keep))


class ActionLimiter(Protocol):
    def max_keep(self, trial: Trial, lo: float, hi: float) -> float | None:
        """The largest keep ratio in [lo, hi] that stays within the limits; None if even `lo` does not."""
        ...

    def budget_fraction(self, total_macs: float) -> float:
        """Target MACs / model MACs, for the observation (1 without a limit)."""
        ...

    def fits(self, analysis: ModelAnalysis, keep: Mapping[str, float], ranks: Mapping[str, float]) -> bool:
        """Whether a whole policy (channel keep per pruned unit, 0 for a skipped block; rank ratio
        per low-rank unit) is predicted within the limits."""
        ...

    def record(self, outcome: Outcome) -> None:
        """Told about every evaluated policy at the end of its episode."""
        ...


class NoLimit:
    """No budget: every action is taken as asked."""

    def max_keep(self, trial: Trial, lo: float, hi: float) -> float | None:
        return hi

    def budget_fraction(self, total_macs: float) -> float:
        return 1.0

    def fits(self, analysis: ModelAnalysis, keep: Mapping[str, float], ranks: Mapping[str, float]) -> bool:
        return True

    def record(self, outcome: Outcome) -> None:
        return None


@dataclass
class BudgetLimiter:
    """Caps actions so the predicted latency and memory stay within `budget` times `safety`."""

    budget: Budget
    latency_model: LinearCostModel = field(default_factory=LinearCostModel)
    memory_model: LinearCostModel = field(default_factory=LinearCostModel)
    safety: float = 0.97

    def caps(self) -> tuple[float, float]:
        """(MACs cap, params cap) the budgets imply through the fitted cost models."""
        macs_cap = params_cap = UNLIMITED
        if self.budget.max_latency_ms is not None:
            macs_cap = self.latency_model.inverse(self.budget.max_latency_ms * self.safety)
        if self.budget.max_memory_bytes is not None:
            params_cap = self.memory_model.inverse(self.budget.max_memory_bytes * self.safety)
        return macs_cap, params_cap

    def max_keep(self, trial: Trial, lo: float, hi: float) -> float | None:
        macs_cap, params_cap = self.caps()
        if macs_cap == UNLIMITED and params_cap == UNLIMITED:
            return hi

        def fits(keep: float) -> bool:
            return trial.macs(keep) <= macs_cap and trial.params(keep) <= params_cap

        if fits(hi):
            return hi
        if not fits(lo):
            return None
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def fits(self, analysis: ModelAnalysis, keep: Mapping[str, float], ranks: Mapping[str, float]) -> bool:
        macs_cap, params_cap = self.caps()
        return estimate_macs(analysis, keep, ranks) <= macs_cap and estimate_params(analysis, keep, ranks) <= params_cap

    def budget_fraction(self, total_macs: float) -> float:
        macs_cap, _ = self.caps()
        return float(min(1.0, macs_cap / max(total_macs, 1)))

    def record(self, outcome: Outcome) -> None:
        """A fresh measurement adds a point to both cost models; a cached one was counted before."""
        if outcome.cached:
            return
        self.latency_model.add(outcome.macs, outcome.latency_ms)
        self.memory_model.add(outcome.params, outcome.memory_bytes)
