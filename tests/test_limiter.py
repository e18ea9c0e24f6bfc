"""Budget limiter and its latency predictor, on a small real model's units and a synthetic device.

The synthetic device's latency is not linear in total MACs (per-MAC cost depends on the
resolution, channel counts are padded to blocks of 8, written activations cost time): the kinds of
effects that made the old MACs line overrun budgets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import pytest
import torch

from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import channels_to_keep
from modeltailor.compressors.units import (
    ModelAnalysis,
    analyze_model,
    estimate_macs,
    estimate_params,
)
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import MARGIN_RANGE, LinearCostModel, StageLatencyModel
from modeltailor.env.limiter import BACK_OFF, Budget, BudgetLimiter, TighteningLimiter, Trial
from modeltailor.env.records import Outcome
from modeltailor.env.reward import BudgetReward, Resources
from modeltailor.models import build_model

ROUND_TO = 2
Latency = Callable[[Mapping[str, float]], float]


@pytest.fixture(scope="module")
def analysis() -> ModelAnalysis:
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5).eval()
    return analyze_model(model, torch.zeros(1, 1, 16, 16))


def device_latency(analysis: ModelAnalysis, noise: float = 0.0, seed: int = 0) -> Latency:
    """A synthetic device: ms for channel keep per unit as built (0: block skipped)."""
    channels = {u.name: u.channels for u in analysis.units}
    rng = np.random.default_rng(seed)

    def padded(keep: float, unit: str | None) -> float:
        if unit is None:
            return 1.0
        return float(np.ceil(keep * channels[unit] / 8 - 1e-9) * 8 / channels[unit])

    def latency(keep: Mapping[str, float]) -> float:
        total = 0.02
        for layer in analysis.layers:
            out = keep.get(layer.out_unit, 1.0) if layer.out_unit else 1.0
            inp = keep.get(layer.in_unit, 1.0) if layer.in_unit else 1.0
            if out * inp == 0:
                continue
            positions = layer.macs / layer.params
            per_mac = 1e-7 if positions >= 256 else 3e-7  # small resolutions use the vector units worse
            total += per_mac * layer.macs * padded(out, layer.out_unit) * padded(inp, layer.in_unit)
            total += 2e-5 * positions * out * channels.get(layer.out_unit or "", 1)
        return total * (1.0 + noise * rng.standard_normal())

    return latency


def built_keep(analysis: ModelAnalysis, keep: Mapping[str, float]) -> dict[str, float]:
    """Keep ratios as the compressor builds them (channels rounded; 0 stays 0)."""
    out = {}
    for unit in analysis.units:
        k = keep.get(unit.name, 1.0)
        out[unit.name] = channels_to_keep(unit.channels, k, ROUND_TO) / unit.channels if k > 0 else 0.0
    return out


def synthetic_outcome(analysis: ModelAnalysis, keep: Mapping[str, float], latency: Latency, cached: bool = False) -> Outcome:
    built = built_keep(analysis, keep)
    params = estimate_params(analysis, built)
    ms = latency(built)
    memory = int(4 * params)
    return Outcome(
        accuracy=1.0,
        measurement=Measurement(
            LatencyStats(ms, ms, ms, 0.0, ms, 0.0, 10), MemoryStats(memory, 0, memory, memory), "synthetic"
        ),
        params=int(params),
        macs=int(round(estimate_macs(analysis, built))),
        kept_channels={u.name: round(built[u.name] * u.channels) for u in analysis.units if built[u.name] > 0},
        seconds=0.0,
        cached=cached,
    )


def random_keep(analysis: ModelAnalysis, rng: np.random.Generator, low: float = 0.25) -> dict[str, float]:
    top = rng.uniform(low, 1.0)
    return {u.name: 0.0 if u.block and rng.random() < 0.2 else float(rng.uniform(low, top)) for u in analysis.units}


def fitted(analysis: ModelAnalysis, latency: Latency, points: int = 30, seed: int = 1) -> tuple[StageLatencyModel, LinearCostModel]:
    """The stage model and the old MACs line, fitted on the baseline and `points` random policies."""
    rng = np.random.default_rng(seed)
    stage, line = StageLatencyModel(analysis, round_to=ROUND_TO), LinearCostModel()
    for keep in [{}, *(random_keep(analysis, rng) for _ in range(points))]:
        outcome = synthetic_outcome(analysis, keep, latency)
        assert stage.add_outcome(outcome.kept_channels, outcome.macs, outcome.latency_ms)
        line.add(outcome.macs, outcome.latency_ms)
    return stage, line


def latency_limiter(analysis: ModelAnalysis, latency: Latency, ratio: float, new: bool = True) -> BudgetLimiter:
    """A limiter for `ratio` of the baseline's latency, seeded as `build_limiter` seeds it: the
    baseline, the fastest model and (new: with the stage model) 30 random policies; old: the
    MACs line on the first two alone."""
    budget = Budget(max_latency_ms=ratio * latency(built_keep(analysis, {})))
    fastest = {u.name: (0.0 if u.block else 0.25) for u in analysis.units}
    rng = np.random.default_rng(1)
    if new:
        limiter = BudgetLimiter(budget, predictor=StageLatencyModel(analysis, round_to=ROUND_TO))
        seeds = [{}, fastest, *(random_keep(analysis, rng) for _ in range(30))]
    else:
        limiter, seeds = BudgetLimiter(budget), [{}, fastest]
    for keep in seeds:
        limiter.record(synthetic_outcome(analysis, keep, latency))
    return limiter


def test_stage_model_fits_nonlinear_latency_much_better_than_the_macs_line(analysis):
    latency = device_latency(analysis)
    stage, line = fitted(analysis, latency)
    rng = np.random.default_rng(7)
    stage_errors, line_errors = [], []
    for _ in range(40):
        keep = random_keep(analysis, rng)
        measured = latency(built_keep(analysis, keep))
        stage_errors.append(abs(stage.predict(keep) / measured - 1))
        line_errors.append(abs(line.predict(estimate_macs(analysis, keep)) / measured - 1))
    assert np.median(stage_errors) < 0.02
    assert np.median(stage_errors) < np.median(line_errors) / 3
    assert stage.stages == 3  # one per resolution; the classifier's sliver of MACs joined the last
    assert stage.pad == 8  # the device's channel block, found from the measurements


def test_prediction_rounds_channels_as_the_compressor_does(analysis):
    stage, _ = fitted(analysis, device_latency(analysis))
    unit = next(u for u in analysis.units if u.channels == 8)  # steps of 2 channels: 0.3 -> 2, 0.26 -> 2
    assert channels_to_keep(8, 0.26, ROUND_TO) == channels_to_keep(8, 0.3, ROUND_TO) == 2
    assert stage.predict({unit.name: 0.26}) == stage.predict({unit.name: 0.3})
    assert stage.predict({unit.name: 0.3}) < stage.predict({unit.name: 1.0})


def test_prediction_never_falls_as_a_unit_keeps_more(analysis):
    stage, _ = fitted(analysis, device_latency(analysis))
    assert np.all(stage.weights >= 0)
    rest = random_keep(analysis, np.random.default_rng(3))
    for unit in analysis.units:
        curve = [stage.predict({**rest, unit.name: k}) for k in np.linspace(0.0, 1.0, 21)]
        assert np.all(np.diff(curve) >= -1e-12), unit.name


@pytest.mark.parametrize("new", [True, False], ids=["stage-model", "macs-line"])
def test_cap_is_the_largest_keep_that_fits(analysis, new):
    limiter = latency_limiter(analysis, device_latency(analysis), 0.35, new)
    rng = np.random.default_rng(5)
    capped = 0
    for unit in analysis.units:
        others = {u.name: (0.25 if u.index > unit.index else float(rng.uniform(0.25, 1.0))) for u in analysis.units}
        trial = Trial(analysis, unit.name, "prune", others, {})
        cap = limiter.max_keep(trial, 0.25, 1.0)
        if cap is None:
            assert not limiter.fits(analysis, *trial.settings(0.25))
            continue
        assert limiter.fits(analysis, *trial.settings(cap))
        assert limiter.fits(analysis, *trial.settings(round(cap, 4)))  # as the policy stores it
        if cap < 1.0:
            capped += 1
            assert not limiter.fits(analysis, *trial.settings(min(1.0, cap + 2 * BACK_OFF)))
    assert capped > 0, "the budget never bound: the test checks nothing"


class SyntheticEvaluator:
    def __init__(self, analysis: ModelAnalysis, latency: Latency) -> None:
        self.analysis, self.latency = analysis, latency

    def __call__(self, policy: Policy) -> Outcome:
        return synthetic_outcome(self.analysis, policy.keep_ratios(), self.latency)


def budget_env(analysis: ModelAnalysis, limiter: BudgetLimiter, latency: Latency) -> CompressionEnv:
    base = synthetic_outcome(analysis, {}, latency)
    budget = limiter.budget
    return CompressionEnv(
        analysis, SyntheticEvaluator(analysis, latency), BudgetReward(budget.max_latency_ms, budget.max_memory_bytes),
        Resources(1.0, base.latency_ms, base.memory_bytes), ActionRange(0.25, 1.0, 0.15), limiter,
    )


def play(env: CompressionEnv, actions: np.ndarray) -> Policy:
    env.reset()
    for action in actions:
        env.step(np.array([action], dtype=np.float32))
    return env.history[-1].policy


@pytest.mark.parametrize("ratio", [0.6, 0.35])
def test_policy_at_every_units_cap_is_predicted_and_measured_within_budget(analysis, ratio):
    latency = device_latency(analysis)
    limiter = latency_limiter(analysis, latency, ratio)
    env = budget_env(analysis, limiter, latency)
    rng = np.random.default_rng(11)
    target = limiter.latency_target()
    assert target is not None and limiter.budget.max_latency_ms is not None
    for episode in range(8):  # first: always ask for everything, so every unit ends at its cap
        actions = np.ones(len(env.units)) if episode == 0 else rng.uniform(-1, 1, len(env.units))
        policy = play(env, actions)
        assert env.predicted_within(policy)
        assert limiter.predicted_latency(analysis, policy.keep_ratios(), {}) <= target
        assert env.history[-1].latency_ms <= limiter.budget.max_latency_ms
    assert env.history[0].latency_ms > 0.9 * limiter.budget.max_latency_ms  # close under, not far below


def test_old_macs_line_overruns_where_the_stage_model_does_not(analysis):
    """The bench's finding in small: asked for everything, the MACs line's policy overruns."""
    latency = device_latency(analysis)
    old = budget_env(analysis, latency_limiter(analysis, latency, 0.35, new=False), latency)
    new = budget_env(analysis, latency_limiter(analysis, latency, 0.35), latency)
    budget = 0.35 * latency(built_keep(analysis, {}))
    everything = np.ones(len(analysis.units))
    play(old, everything)
    play(new, everything)
    assert old.history[-1].latency_ms > budget >= new.history[-1].latency_ms


def test_memory_budget_still_limits(analysis):
    latency = device_latency(analysis)
    base = synthetic_outcome(analysis, {}, latency)
    limiter = BudgetLimiter(Budget(max_memory_bytes=0.5 * base.memory_bytes))
    for keep in ({}, {u.name: 0.25 for u in analysis.units}):
        limiter.record(synthetic_outcome(analysis, keep, latency))
    assert limiter.budget_fraction(analysis.total_macs) == 1.0  # no latency budget: no MACs target
    env = budget_env(analysis, limiter, latency)
    policy = play(env, np.ones(len(env.units)))
    assert any(k < 1.0 for k in policy.keep_ratios().values()), "the memory budget did not limit any action"
    assert env.history[-1].memory_bytes <= 0.5 * base.memory_bytes


def test_memory_budget_limits_beside_the_latency_predictor(analysis):
    latency = device_latency(analysis)
    limiter = latency_limiter(analysis, latency, 0.95)
    base = synthetic_outcome(analysis, {}, latency)
    limiter = BudgetLimiter(
        Budget(max_latency_ms=limiter.budget.max_latency_ms, max_memory_bytes=0.4 * base.memory_bytes),
        limiter.latency_model, limiter.memory_model, predictor=limiter.predictor,
    )
    env = budget_env(analysis, limiter, latency)
    play(env, np.ones(len(env.units)))
    assert env.history[-1].memory_bytes <= 0.4 * base.memory_bytes


def test_refits_on_fresh_outcomes_only(analysis):
    latency = device_latency(analysis)
    limiter = latency_limiter(analysis, latency, 0.5)
    stage = limiter.predictor
    assert stage is not None
    before = (len(stage.points), len(limiter.latency_model.points), len(limiter.memory_model.points))
    keep = random_keep(analysis, np.random.default_rng(2))
    limiter.record(synthetic_outcome(analysis, keep, latency, cached=True))  # measured before
    assert (len(stage.points), len(limiter.latency_model.points), len(limiter.memory_model.points)) == before
    weights = stage.weights.copy()
    limiter.record(synthetic_outcome(analysis, keep, lambda k: 1.3 * latency(k)))  # fresh, and slower
    assert len(stage.points) == before[0] + 1 and len(limiter.latency_model.points) == before[1] + 1
    assert not np.allclose(weights, stage.weights)


def test_model_whose_channels_do_not_explain_its_macs_is_not_fitted(analysis):
    """A factorized layer: its channel counts say nothing of its MACs, so the stage model skips it."""
    limiter = latency_limiter(analysis, device_latency(analysis), 0.5)
    outcome = synthetic_outcome(analysis, {}, device_latency(analysis))
    points = len(limiter.predictor.points) if limiter.predictor else 0
    limiter.record(Outcome(**{**outcome.__dict__, "macs": outcome.macs // 2}))
    assert limiter.predictor is not None and len(limiter.predictor.points) == points
    assert len(limiter.latency_model.points) == points + 1  # the MACs line still takes it


def test_margin_follows_the_predictions_own_errors(analysis):
    exact, _ = fitted(analysis, device_latency(analysis))
    noisy, _ = fitted(analysis, device_latency(analysis, noise=0.04))
    assert exact.margin == pytest.approx(MARGIN_RANGE[0])  # nothing to fear: the floor
    assert noisy.margin > 0.03
    assert noisy.target(1.0) < exact.target(1.0) < 1.0


def test_budget_fraction_shrinks_with_the_budget(analysis):
    latency = device_latency(analysis)
    fractions = [latency_limiter(analysis, latency, r).budget_fraction(analysis.total_macs) for r in (2.0, 0.6, 0.35)]
    assert fractions[0] == 1.0
    assert 1.0 > fractions[1] > fractions[2] > 0.0


def test_an_accuracy_floor_tightens_its_budget_below_the_fastest_model_within_it(analysis):
    """TighteningLimiter: no limit until a model meets the floor, then a step below the best;
    misses in a row halve the step, down to holding at the best."""
    latency = device_latency(analysis)
    inner = latency_limiter(analysis, latency, 1.0)
    inner.budget = Budget()
    limiter = TighteningLimiter(inner, judge=lambda o: o.accuracy >= 0.9, step=0.2, patience=2, min_step=0.05)
    full = {u.name: 1.0 for u in analysis.units}
    trial = Trial(analysis, analysis.units[-1].name, "prune", {u.name: 0.7 for u in analysis.units}, {})
    assert limiter.max_keep(trial, 0.2, 1.0) == 1.0  # nothing within the floor yet: no limit

    def outcome(keep: float, accuracy: float) -> Outcome:
        o = synthetic_outcome(analysis, {u.name: keep for u in analysis.units}, latency)
        return replace(o, accuracy=accuracy)

    limiter.record(outcome(0.5, 0.80))  # a miss: still no budget
    assert limiter.best is None and inner.budget == Budget()
    within = outcome(0.7, 0.95)
    limiter.record(within)
    assert limiter.best == within.latency_ms
    assert inner.budget.max_latency_ms == pytest.approx(0.8 * within.latency_ms)
    # the rest as kept by the best: the last unit must now keep less than it did
    assert not limiter.fits(analysis, full, {}) and (limiter.max_keep(trial, 0.2, 1.0) or 0.0) < 0.7
    limiter.record(outcome(0.9, 0.97))  # within the floor but slower: the best stays
    assert limiter.best == within.latency_ms
    for _ in range(2):  # two misses in a row: the step halves
        limiter.record(outcome(0.3, 0.5))
    assert limiter.step == pytest.approx(0.1) and inner.budget.max_latency_ms == pytest.approx(0.9 * within.latency_ms)
    for _ in range(4):  # 0.05, then below min_step: the budget holds at the best
        limiter.record(outcome(0.3, 0.5))
    assert inner.budget.max_latency_ms == pytest.approx(within.latency_ms)
    faster = outcome(0.5, 0.92)
    limiter.record(faster)
    assert limiter.best == faster.latency_ms < within.latency_ms and inner.budget.max_latency_ms == pytest.approx(faster.latency_ms)
