"""Action limits, handed to the env: how large a keep ratio a unit may still take.

`BudgetLimiter` caps each action AMC-style: even if every later unit were compressed as hard as
allowed, the predicted latency / memory of the model must stay within the budget. Memory comes
from a `LinearCostModel` in parameters (times a fixed safety factor). Latency comes from a
`StageLatencyModel` (per-stage padded MACs and activations, channels rounded as the compressor
rounds them), kept within budget / (1 + margin), the margin being a high quantile of its own
leave-one-out errors: as close to the budget as this device's predictions allow. Without one, the
plain AMC way: a `LinearCostModel` of latency in total MACs times the fixed safety factor. Every
cost model is refitted on each fresh measurement the env reports. `TighteningLimiter` turns an
accuracy floor into such budgets: each a step below the fastest model judged within the floor so
far. `NoLimit` is for objectives without a budget. The env knows only the `ActionLimiter` protocol, never which objective or
reward is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from modeltailor.compressors.units import ModelAnalysis, estimate_macs, estimate_params
from modeltailor.env.cost_model import LinearCostModel, StageLatencyModel
from modeltailor.env.records import Outcome

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

    def settings(self, keep: float) -> tuple[dict[str, float], dict[str, float]]:
        """(channel keep per pruned unit, rank ratio per low-rank unit) with this unit at `keep`."""
        if self.method == "lowrank":
            return dict(self.keep), {**self.ranks, self.unit: keep}
        return {**self.keep, self.unit: keep}, dict(self.ranks)

    def macs(self, keep: float) -> float:
        """Estimated model MACs with this unit at `keep`."""
        return estimate_macs(self.analysis, *self.settings(keep))

    def params(self, keep: float) -> float:
        """Estimated model parameters with this unit at `keep`."""
        return estimate_params(self.analysis, *self.settings(keep))


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


class _Limits:
    """The limits of `self.inner`, asked as they are: for limiters that only change what `record` does."""

    inner: ActionLimiter

    def max_keep(self, trial: Trial, lo: float, hi: float) -> float | None:
        return self.inner.max_keep(trial, lo, hi)

    def budget_fraction(self, total_macs: float) -> float:
        return self.inner.budget_fraction(total_macs)

    def fits(self, analysis: ModelAnalysis, keep: Mapping[str, float], ranks: Mapping[str, float]) -> bool:
        return self.inner.fits(analysis, keep, ranks)


@dataclass(frozen=True)
class ReadOnlyLimiter(_Limits):
    """Another limiter's limits, not taught by what it is told: for an env on the surrogate, whose
    predicted outcomes must never refit the cost models the real episodes fit."""

    inner: ActionLimiter

    def record(self, outcome: Outcome) -> None:
        return None


BISECTIONS = 12
"""Halvings of [lo, hi] that find a unit's largest keep ratio within the budget: 2^-12 of the range
is finer than one channel of any unit up to 4,096 channels, and each halving is a prediction (on
the surrogate, the limiter's bisection was a third of an episode's time at 20)."""

BACK_OFF = 1e-3
"""A cap found among rounded channel counts is returned this far inside its step, so that the
policy's 4-decimal keep ratio cannot round it onto the next channel count."""


@dataclass
class BudgetLimiter:
    """Caps actions so the predicted latency and memory stay within `budget`.

    Latency: by `predictor` within budget / (1 + its margin) when given, else by `latency_model`
    (latency in total MACs) within budget * `safety`; memory: by `memory_model` (bytes in
    parameters) within budget * `safety`.
    """

    budget: Budget
    latency_model: LinearCostModel = field(default_factory=LinearCostModel)
    memory_model: LinearCostModel = field(default_factory=LinearCostModel)
    safety: float = 0.97
    predictor: StageLatencyModel | None = None
    _fraction: tuple[int, float] | None = field(default=None, init=False, repr=False)

    def latency_target(self) -> float | None:
        """The predicted latency (ms) a policy may reach; None without a latency budget."""
        if self.budget.max_latency_ms is None:
            return None
        if self.predictor is not None:
            return self.predictor.target(self.budget.max_latency_ms)
        return self.budget.max_latency_ms * self.safety

    def predicted_latency(self, analysis: ModelAnalysis, keep: Mapping[str, float], ranks: Mapping[str, float]) -> float:
        """The latency (ms) the limiter predicts for a policy; it steers actions, never reported."""
        if self.predictor is not None:
            return self.predictor.predict(keep, ranks)
        return self.latency_model.predict(estimate_macs(analysis, keep, ranks))

    def caps(self) -> tuple[float, float]:
        """(MACs cap of the MACs line, params cap) the budgets imply through the linear models."""
        macs_cap = params_cap = UNLIMITED
        if self.budget.max_latency_ms is not None:
            macs_cap = self.latency_model.inverse(self.budget.max_latency_ms * self.safety)
        if self.budget.max_memory_bytes is not None:
            params_cap = self.memory_model.inverse(self.budget.max_memory_bytes * self.safety)
        return macs_cap, params_cap

    def max_keep(self, trial: Trial, lo: float, hi: float) -> float | None:
        if self.budget.max_latency_ms is None and self.budget.max_memory_bytes is None:
            return hi

        def fits(keep: float) -> bool:
            return self.fits(trial.analysis, *trial.settings(keep))

        if fits(hi):
            return hi
        if not fits(lo):
            return None
        low = lo
        for _ in range(BISECTIONS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return max(low, lo - BACK_OFF) if self.predictor is not None else lo

    def fits(self, analysis: ModelAnalysis, keep: Mapping[str, float], ranks: Mapping[str, float]) -> bool:
        macs_cap, params_cap = self.caps()
        if estimate_params(analysis, keep, ranks) > params_cap:
            return False
        if self.predictor is None:
            return estimate_macs(analysis, keep, ranks) <= macs_cap
        assert analysis.total_macs == self.predictor.analysis.total_macs, "the predictor is for another model"
        target = self.latency_target()
        return target is None or self.predictor.predict(keep, ranks) <= target

    def budget_fraction(self, total_macs: float) -> float:
        """Target MACs / model MACs: with a predictor, the MACs of the largest uniformly pruned
        model predicted within the latency budget (recomputed after each refit)."""
        target = self.latency_target()
        if self.predictor is None or target is None:
            macs_cap, _ = self.caps()
            return float(min(1.0, macs_cap / max(total_macs, 1)))
        version = len(self.predictor.points)
        if self._fraction is None or self._fraction[0] != version:
            self._fraction = (version, self._uniform_macs(self.predictor, target))
        return float(min(1.0, self._fraction[1] / max(total_macs, 1)))

    @staticmethod
    def _uniform_macs(predictor: StageLatencyModel, target: float) -> float:
        analysis = predictor.analysis

        def uniform(keep: float) -> dict[str, float]:
            return {u.name: keep for u in analysis.units}

        lo, hi = 0.0, 1.0
        if predictor.predict(uniform(hi)) <= target:
            return float(analysis.total_macs)
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if predictor.predict(uniform(mid)) <= target else (lo, mid)
        return estimate_macs(analysis, uniform(lo))

    def record(self, outcome: Outcome) -> None:
        """A fresh measurement adds a point to every cost model; a cached one was counted before."""
        if outcome.cached:
            return
        self.latency_model.add(outcome.macs, outcome.latency_ms)
        self.memory_model.add(outcome.params, outcome.memory_bytes)
        if self.predictor is not None:
            self.predictor.add_outcome(outcome.kept_channels, outcome.macs, outcome.latency_ms)


@dataclass
class TighteningLimiter(_Limits):
    """An accuracy floor's limits: a budget that follows the search ("fastest within the floor").

    No budget until an episode is judged within the floor (`judge`); then the latency (or memory,
    `resource`) budget of `inner` is that of the fastest (smallest) such model so far times
    (1 - `step`): later episodes are steered to beat it, so an episode is either a new best or a
    miss of the floor, never a slower model within it. After `patience` misses in a row the step
    halves (the budget moves back toward the best); once it is below `min_step` the budget holds at
    the best itself. The cost models are `inner`'s, refitted on every fresh measurement."""

    inner: BudgetLimiter
    judge: Callable[[Outcome], bool]
    resource: str = "latency"
    step: float = 0.1
    patience: int = 3
    min_step: float = 0.0125
    best: float | None = None
    misses: int = 0

    def record(self, outcome: Outcome) -> None:
        self.inner.record(outcome)
        value = float(outcome.latency_ms if self.resource == "latency" else outcome.memory_bytes)
        if self.judge(outcome):
            self.misses = 0
            self.best = value if self.best is None else min(self.best, value)
        else:
            self.misses += 1
            if self.misses >= self.patience and self.step >= self.min_step:
                self.step, self.misses = self.step / 2, 0
        if self.best is not None:
            cap = self.best * (1 - self.step) if self.step >= self.min_step else self.best
            field_name = "max_latency_ms" if self.resource == "latency" else "max_memory_bytes"
            self.inner.budget = replace(self.inner.budget, **{field_name: cap})
