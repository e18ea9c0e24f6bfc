"""From a deployment's objective to the env's reward, budget and action range.

``make_reward`` turns the objective into a reward function (the search's, with an accuracy floor
relaxed by ``search_slack``, or the final one); ``build_env`` builds the CompressionEnv with its
action limiter: for a budget, a ``BudgetLimiter`` whose cost models are seeded by the baseline and
the most compressed model, after checking that the budget is reachable at all. Both read the
absolute budget from ``objective_budget``, so the reward and the limiter hold the same numbers.
"""

from __future__ import annotations

from modeltailor.compressors.pipeline import lowrank_units
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.env.limiter import ActionLimiter, Budget, BudgetLimiter, NoLimit
from modeltailor.env.reward import (
    AccuracyFloorReward,
    BudgetReward,
    Resources,
    RewardFunction,
    TradeoffReward,
)
from modeltailor.errors import ConfigError
from modeltailor.experiments.config import DeploymentConfig
from modeltailor.experiments.workbench import Workbench
from modeltailor.results import Outcome

DEFAULT_LATENCY_RATIO = 0.45
SKIP_FRACTION = 0.15  # share of a skippable unit's action range that means "remove the block"


def make_reward(config: DeploymentConfig, baseline: Resources, final: bool = False) -> RewardFunction:
    """The objective's reward; `final=False` is the search's (accuracy floor relaxed by search_slack)."""
    o = config.objective
    if o.kind == "tradeoff":
        w = o.weights
        return TradeoffReward(w.accuracy, w.latency, w.memory)
    if o.kind == "accuracy":
        floor = o.min_accuracy if o.min_accuracy is not None else baseline.accuracy - o.max_accuracy_drop / 100
        if not final:
            floor -= o.search_slack / 100
        return AccuracyFloorReward(min_accuracy=floor, minimize=o.minimize)
    budget = objective_budget(config, baseline)
    assert budget is not None  # the budget kind, the only one left
    return BudgetReward(max_latency_ms=budget.max_latency_ms, max_memory_bytes=budget.max_memory_bytes)


def objective_budget(config: DeploymentConfig, baseline: Resources) -> Budget | None:
    """The budget kind's limits in absolute units (ratios resolved against the baseline); else None."""
    o = config.objective
    if o.kind != "budget":
        return None
    ratio = o.max_latency_ratio
    if not any((o.max_latency_ms, ratio, o.max_memory_bytes, o.max_memory_ratio)):
        ratio = DEFAULT_LATENCY_RATIO
    latency = o.max_latency_ms or (ratio * baseline.latency_ms if ratio else None)
    memory = o.max_memory_bytes or (o.max_memory_ratio * baseline.memory_bytes if o.max_memory_ratio else None)
    return Budget(max_latency_ms=latency, max_memory_bytes=memory)


def check_budget_reachable(budget: Budget, fastest: Outcome, min_keep: float, slack: float = 0.9) -> None:
    """ConfigError when a budget is below what the most compressed model of this search measures."""
    what = f"measured with every unit at search.min_keep={min_keep}"
    if budget.max_latency_ms is not None and budget.max_latency_ms < slack * fastest.latency_ms:
        raise ConfigError(
            f"objective: latency budget {budget.max_latency_ms:.3f} ms is below the fastest model this search "
            f"can build ({fastest.latency_ms:.3f} ms {what}): raise the budget or lower search.min_keep"
        )
    if budget.max_memory_bytes is not None and budget.max_memory_bytes < slack * fastest.memory_bytes:
        raise ConfigError(
            f"objective: memory budget {budget.max_memory_bytes:,.0f} bytes is below the smallest model this "
            f"search can build ({fastest.memory_bytes:,} bytes {what}): raise the budget or lower search.min_keep"
        )


def build_env(bench: Workbench, reward: RewardFunction, baseline: Resources) -> CompressionEnv:
    """The env, limited by the objective's budget if it has one (see `build_limiter`)."""
    s = bench.config.search
    classes = len(bench.classes) if bench.classes else bench.splits.num_classes
    return CompressionEnv(
        analysis=bench.analysis,
        evaluator=bench.evaluator,
        reward=reward,
        baseline=baseline,
        action_range=ActionRange(s.min_keep, s.max_keep, SKIP_FRACTION if s.skip_blocks else 0.0),
        limiter=build_limiter(bench, objective_budget(bench.config, baseline)),
        class_fraction=classes / bench.splits.num_classes,
        lowrank_units=frozenset(
            lowrank_units(bench.analysis, bench.base, s.round_to) if "lowrank" in s.methods else ()
        ),
        int8="int8" in s.methods,
    )


def build_limiter(bench: Workbench, budget: Budget | None) -> ActionLimiter:
    """A BudgetLimiter with cost models seeded by the baseline and the most compressed model
    (after checking that the budget is reachable), or NoLimit without a budget."""
    if budget is None:
        return NoLimit()
    s = bench.config.search
    latency_model, memory_model = LinearCostModel(), LinearCostModel()
    latency_model.add(bench.baseline.macs, bench.baseline.latency_ms)
    memory_model.add(bench.baseline.params, bench.baseline.memory_bytes)
    calib = bench.evaluator.measure(
        bench.evaluator.compress(_fastest(bench, s.min_keep, s.skip_blocks))
    )
    check_budget_reachable(budget, calib, s.min_keep)
    latency_model.add(calib.macs, calib.latency_ms)
    memory_model.add(calib.params, calib.memory_bytes)
    return BudgetLimiter(budget, latency_model, memory_model)


def _fastest(bench: Workbench, keep: float, skip: bool) -> Policy:
    """Every unit at `keep`, every skippable block removed: the most compressed model reachable."""
    return Policy(
        tuple(
            UnitAction(unit=u.name, method="skip", keep=0.0) if skip and u.block else UnitAction(unit=u.name, keep=keep)
            for u in bench.analysis.units
        )
    )
