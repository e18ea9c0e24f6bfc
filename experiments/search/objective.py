"""From a deployment's objective to the env's reward, budget and action range.

``make_reward`` turns the objective into a reward function (the search's, whose accuracy floor
judges episodes through a learned ``RecoveryCorrection`` or is relaxed by ``search_slack``, or the
final one); ``build_env`` builds the CompressionEnv with its
action limiter: for a budget, a ``BudgetLimiter`` whose cost models are seeded by the baseline and
the most compressed model, after checking that the budget is reachable at all, and for a latency
budget also by a few random policies measured without recovery (``calibration_policies``). Both read the
absolute budget from ``objective_budget``, so the reward and the limiter hold the same numbers.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from modeltailor.compressors.pipeline import lowrank_units
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import StageLatencyModel
from modeltailor.env.features import DeploymentContext
from modeltailor.env.limiter import ActionLimiter, Budget, BudgetLimiter, NoLimit, TighteningLimiter
from modeltailor.env.records import Outcome
from modeltailor.env.reward import (
    AccuracyFloorReward,
    BudgetReward,
    RecoveryCorrection,
    Resources,
    RewardFunction,
    TradeoffReward,
)
from modeltailor.errors import ConfigError
from modeltailor.experiments.search.workbench import Workbench
from modeltailor.experiments.spec.deployment import DeploymentConfig

DEFAULT_LATENCY_RATIO = 0.45
SKIP_FRACTION = 0.15  # share of a skippable unit's action range that means "remove the block"


def make_reward(
    config: DeploymentConfig, baseline: Resources, final: bool = False, correction: RecoveryCorrection | None = None
) -> RewardFunction:
    """The objective's reward; `final=False` is the search's: under an accuracy floor it judges an
    episode by the final accuracy `correction` predicts (with `objective.floor_correction: learned`),
    else against the floor relaxed by search_slack."""
    o = config.objective
    if o.kind == "tradeoff":
        w = o.weights
        return TradeoffReward(w.accuracy, w.latency, w.memory)
    if o.kind == "accuracy":
        floor = o.min_accuracy if o.min_accuracy is not None else baseline.accuracy - o.max_accuracy_drop / 100
        if not final and correction is not None and o.floor_correction == "learned":
            return AccuracyFloorReward(min_accuracy=floor, minimize=o.minimize, correction=correction,
                                       reference=baseline.accuracy)
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
        limiter=build_limiter(bench, objective_budget(bench.config, baseline), reward),
        class_fraction=classes / bench.splits.num_classes,
        lowrank_units=frozenset(
            lowrank_units(bench.analysis, bench.base, s.round_to) & bench.units_for("lowrank")
            if "lowrank" in s.methods else ()
        ),
        int8="int8" in s.methods,
        int8_units=bench.units_for("int8") if "int8" in s.methods else None,
        int8_model=int8_model(bench.config),
        context=deployment_context(bench, baseline),
        downsample=s.downsample,
    )


def deployment_context(bench: Workbench, baseline: Resources) -> DeploymentContext:
    """What the agent is told about the deployment: classes, objective, budget as ratios, device."""
    o = bench.config.objective
    budget = objective_budget(bench.config, baseline)
    classes = len(bench.classes) if bench.classes else bench.splits.num_classes
    latency = budget.max_latency_ms if budget is not None and budget.max_latency_ms is not None else None
    memory = budget.max_memory_bytes if budget is not None and budget.max_memory_bytes is not None else None
    drop = o.max_accuracy_drop if o.kind == "accuracy" and o.min_accuracy is None else 0.0
    if o.kind == "accuracy" and o.min_accuracy is not None:
        drop = max(0.0, (baseline.accuracy - o.min_accuracy) * 100)
    return DeploymentContext(
        class_fraction=classes / bench.splits.num_classes,
        objective=o.kind,
        latency_ratio=latency / baseline.latency_ms if latency is not None else 1.0,
        memory_ratio=memory / baseline.memory_bytes if memory is not None else 1.0,
        accuracy_drop_points=drop,
        ms_per_gmac=baseline.latency_ms / max(bench.baseline.macs / 1e9, 1e-9),
        overhead_share=bench.overhead_ms / max(baseline.latency_ms, 1e-9),
    )


def build_limiter(bench: Workbench, budget: Budget | None, reward: RewardFunction | None = None) -> ActionLimiter:
    """A BudgetLimiter seeded by the baseline and the most compressed model (after checking that
    the budget is reachable), or NoLimit without a budget. Under a latency budget its latency
    predictor (`StageLatencyModel`) is also fitted on `search.calibration_policies` random policies
    (24 by default: with the baseline and the fastest model, more than two points per weight of
    ResNet-20's three stages), each compressed and measured without recovery. An accuracy floor with
    `objective.tighten_step` gets a TighteningLimiter around such a BudgetLimiter (no budget yet),
    judging outcomes by `reward`."""
    o = bench.config.objective
    if budget is None and o.kind == "accuracy" and o.tighten_step > 0 and reward is not None:
        latency = o.minimize == "latency"
        inner = calibrated_limiter(bench, Budget(), measure_fastest(bench), latency)
        judge = reward.feasible
        return TighteningLimiter(
            inner, lambda out: judge(Resources(out.accuracy, out.latency_ms, out.memory_bytes)),
            "latency" if latency else "memory", step=o.tighten_step,
        )
    if budget is None:
        return NoLimit()
    fastest = measure_fastest(bench)
    check_budget_reachable(budget, fastest, bench.config.search.min_keep)
    return calibrated_limiter(bench, budget, fastest, budget.max_latency_ms is not None)


def calibrated_limiter(bench: Workbench, budget: Budget, fastest: Outcome, latency: bool) -> BudgetLimiter:
    """A BudgetLimiter for `budget`, its cost models seeded by the uncompressed and the `fastest`
    model and, with `latency`, a StageLatencyModel fitted on the calibration policies too."""
    s = bench.config.search
    if not latency:
        limiter = BudgetLimiter(budget)
        calibration: list[Outcome] = []
    else:
        limiter = BudgetLimiter(budget, predictor=StageLatencyModel(bench.analysis, round_to=s.round_to))
        calibration = [measure_unrecovered(bench, policy) for policy in calibration_policies(bench, s.calibration_policies)]
    uncompressed = Policy.uniform((u.name for u in bench.analysis.units), 1.0)
    start = measure_unrecovered(bench, uncompressed) if int8_model(bench.config) else bench.baseline
    for outcome in (start, fastest, *calibration):  # every point as the episodes run: int8 when they are
        limiter.record(outcome)
    return limiter


def measure_fastest(bench: Workbench) -> Outcome:
    """The most compressed model this search can build (see `fastest_policy`), measured without recovery."""
    s = bench.config.search
    return measure_unrecovered(bench, fastest_policy(bench, s.min_keep, s.skip_blocks))


def int8_model(config: DeploymentConfig) -> bool:
    """Whether every candidate runs wholly in int8 (int8 searched at model scope)."""
    return "int8" in config.search.methods and config.search.int8_scope == "model"


def measure_unrecovered(bench: Workbench, policy: Policy) -> Outcome:
    """`policy`'s compressed model measured without recovery, in int8 where every candidate is (the
    limiter's cost models must see what the episodes measure), downsampled as every episode is."""
    policy = replace(policy, downsample=bench.config.search.downsample)
    if int8_model(bench.config):
        units = bench.units_for("int8")
        policy = replace(policy, actions=tuple(replace(a, bits=8) if a.unit in units else a for a in policy.actions))
        return bench.evaluator.measure(bench.evaluator.compress(policy), policy=policy)
    return bench.evaluator.measure(bench.evaluator.compress(policy))


def calibration_policies(bench: Workbench, count: int) -> list[Policy]:
    """`count` random pruning policies spread from mild to hard (seeded by search.seed): each draws
    an upper keep ratio, then every unit's keep below it; a skippable unit's block is removed
    with probability 0.2 when the search may skip blocks."""
    s = bench.config.search
    rng = np.random.default_rng(s.seed)
    policies = []
    for _ in range(count):
        top = rng.uniform(s.min_keep, s.max_keep)
        actions = []
        for unit in bench.analysis.units:
            keep = float(rng.uniform(s.min_keep, top))
            skip = s.skip_blocks and unit.block is not None and rng.random() < 0.2
            action = UnitAction(unit=unit.name, method="skip", keep=0.0) if skip else UnitAction(unit.name, keep=round(keep, 4))
            actions.append(action)
        policies.append(Policy(tuple(actions)))
    return policies


def fastest_policy(bench: Workbench, keep: float, skip: bool) -> Policy:
    """Every unit at `keep`, every skippable block removed: the most compressed model reachable."""
    return Policy(
        tuple(
            UnitAction(unit=u.name, method="skip", keep=0.0) if skip and u.block else UnitAction(unit=u.name, keep=keep)
            for u in bench.analysis.units
        )
    )
