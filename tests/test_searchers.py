"""Searchers on the env's declared action space: every action inside it, every dimension explored,
and resumed searches continuing where the interrupted one stopped; the greedy, evolution and DDPG
searchers' own rules (probes, budgets, aging, exact episode counts, determinism).

The env is real (a small ResNet's units, joint action spaces); the evaluator is a stub, since what
is tested is the searcher, not the measurement: a fixed outcome, or (`modelled_outcome`) one whose
accuracy falls with the mean keep ratio and whose latency is proportional to the estimated MACs,
so there is something to optimize and a budget's cost model stays exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from modeltailor.agent import (
    DDPGSearcher,
    DDPGSettings,
    EvolutionSearcher,
    GreedySearcher,
    PPOSearcher,
    RandomSearcher,
    Searcher,
    UniformSearcher,
)
from modeltailor.agent.base import run_episode
from modeltailor.agent.evolution import realized_genome
from modeltailor.agent.greedy import Setting, marginal_allocation, phase2_episodes
from modeltailor.compressors.pipeline import lowrank_units
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.units import (
    ModelAnalysis,
    analyze_model,
    estimate_macs,
    estimate_params,
    unit_macs,
)
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.env.limiter import ActionLimiter, Budget, BudgetLimiter
from modeltailor.env.records import Outcome
from modeltailor.env.reward import Resources, TradeoffReward
from modeltailor.models import build_model

SHAPE = (1, 1, 16, 16)
METHOD_SETS = [("prune",), ("prune", "int8"), ("prune", "lowrank"), ("prune", "lowrank", "int8")]
JOINT = METHOD_SETS[-1]


@pytest.fixture(scope="module")
def model() -> tuple[ModelAnalysis, frozenset[str]]:
    torch.manual_seed(0)
    teacher = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5).eval()
    analysis = analyze_model(teacher, torch.zeros(SHAPE))
    return analysis, frozenset(lowrank_units(analysis, teacher, 2))


def stub_outcome(accuracy: float, latency_ms: float, memory_bytes: int, params: int, macs: int) -> Outcome:
    latency = LatencyStats(
        median_ms=latency_ms, p90_ms=latency_ms, mean_ms=latency_ms, std_ms=0.0, min_ms=latency_ms, iqr_ms=0.0, runs=1
    )
    memory = MemoryStats(
        weight_bytes=memory_bytes, peak_activation_bytes=0, total_bytes=memory_bytes, onnx_file_bytes=memory_bytes
    )
    return Outcome(accuracy, Measurement(latency, memory, "stub"), params=params, macs=macs, kept_channels={}, seconds=0.0)


def fixed_outcome(policy: Policy) -> Outcome:
    return stub_outcome(0.9, 0.1, 1000, params=100, macs=1000)


def modelled_outcome(analysis: ModelAnalysis) -> Callable[[Policy], Outcome]:
    """Accuracy 0.95 (the baseline's) less 0.4 per unit of weighted mean keep lost (skip: keep 0;
    units weigh 1, 2 or 3 by index, so their sensitivities differ); latency and memory proportional
    to the estimated MACs and parameters."""
    weight = {u.name: 1.0 + u.index % 3 for u in analysis.units}

    def evaluate(policy: Policy) -> Outcome:
        keep, ranks = policy.keep_ratios(), policy.lowrank_ratios()
        macs, params = estimate_macs(analysis, keep, ranks), estimate_params(analysis, keep, ranks)
        lost = sum(weight[a.unit] * (1.0 - a.keep) for a in policy.actions) / sum(weight.values())
        accuracy = 0.95 - 0.4 * lost
        latency = 0.2 * macs / analysis.total_macs
        return stub_outcome(accuracy, latency, int(2000 * params / analysis.total_params), int(params), int(macs))

    return evaluate


def make_env(
    model: tuple[ModelAnalysis, frozenset[str]],
    methods: tuple[str, ...],
    modelled: bool = False,
    limiter: ActionLimiter | None = None,
) -> CompressionEnv:
    analysis, lowrank = model
    return CompressionEnv(
        analysis,
        modelled_outcome(analysis) if modelled else fixed_outcome,
        TradeoffReward(),
        Resources(0.95, 0.2, 2000),
        ActionRange(0.25, 1.0, skip_fraction=0.15),
        limiter=limiter,
        lowrank_units=lowrank if "lowrank" in methods else frozenset(),
        int8="int8" in methods,
    )


def record_actions(env: CompressionEnv) -> list[np.ndarray]:
    """Every action sent to `env.step` from now on, as sent."""
    sent: list[np.ndarray] = []
    step = env.step

    def recording_step(action: np.ndarray):
        sent.append(np.array(action, copy=True))
        return step(action)

    env.step = recording_step  # type: ignore[method-assign]
    return sent


FAST_DDPG = DDPGSettings(warmup_episodes=2, hidden=16, batch_size=16)
STEPWISE = ["random", "uniform", "ppo", "evolution", "ddpg"]  # searchers that play through env.step
NEW = ["greedy", "evolution", "ddpg"]


def searcher_named(name: str, seed: int = 1) -> Searcher:
    return {
        "random": lambda: RandomSearcher(seed=seed),
        "uniform": UniformSearcher,
        "ppo": lambda: PPOSearcher(seed=seed),
        "greedy": lambda: GreedySearcher(seed=seed),
        "evolution": lambda: EvolutionSearcher(seed=seed, population=4, sample=2),
        "ddpg": lambda: DDPGSearcher(seed=seed, settings=FAST_DDPG),
    }[name]()


@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("name", STEPWISE)
def test_every_action_lies_in_the_declared_space(model, methods, name):
    env = make_env(model, methods)
    sent = record_actions(env)
    searcher_named(name).search(env, episodes=2)
    assert len(env.history) == 2 and len(sent) >= 2 * len(env.units)
    assert env.action_space.shape == ((1,) if methods == ("prune",) else (3,))
    for action in sent:
        assert action.shape == env.action_space.shape and env.action_space.contains(action), action


@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("name", [*STEPWISE, "greedy"])
def test_every_policy_lies_in_the_declared_range(model, methods, name):
    env = make_env(model, methods, modelled=True)
    searcher_named(name).search(env, episodes=6)
    offered = {"prune", "skip"} | ({"lowrank"} if "lowrank" in methods else set())
    if name == "greedy":  # pruning and skipping only, in float
        offered, methods = {"prune", "skip"}, ("prune",)
    assert len(env.history) == 6
    checked = 0
    for record in env.history:
        # one action per unit of the env: the loop below checks every unit's action
        assert sorted(a.unit for a in record.policy.actions) == sorted(u.name for u in env.units), record.policy
        for action in record.policy.actions:
            checked += 1
            unit = env.analysis.unit(action.unit)
            assert action.method in offered and (action.bits == 32 or "int8" in methods), action
            if action.method == "skip":
                assert unit.block is not None, action
            else:
                assert env.range.min_keep <= action.keep <= env.range.max_keep, action
            if action.method == "lowrank":
                assert action.unit in env.lowrank_units, action
    assert checked == 6 * len(env.units) > 0


@pytest.mark.parametrize("methods", METHOD_SETS[1:], ids="+".join)
@pytest.mark.parametrize("name", ["random", "uniform", "evolution", "ddpg"])
def test_searchers_explore_every_method_offered(model, methods, name):
    env = make_env(model, methods)
    searcher_named(name, seed=0).search(env, episodes=4)
    actions = [a for record in env.history for a in record.policy.actions]
    if "int8" in methods:
        assert {a.bits for a in actions} == {8, 32}
    if "lowrank" in methods:
        assert any(a.method == "lowrank" for a in actions)


@pytest.mark.parametrize("lowrank", [False, True], ids=["prune", "prune+lowrank"])
@pytest.mark.parametrize("name", [*STEPWISE, "greedy"])
def test_int8_at_model_scope_runs_every_candidate_in_int8_without_a_flag(model, lowrank, name):
    """int8_model: no per-unit flag to learn (amount alone, or amount + method with low-rank), and
    every unit of every policy in int8, except a unit the pre-search check left in float."""
    analysis, lowrank_set = model
    float_unit = analysis.units[-1].name
    env = CompressionEnv(
        analysis, modelled_outcome(analysis), TradeoffReward(), Resources(0.95, 0.2, 2000),
        ActionRange(0.25, 1.0, skip_fraction=0.15), lowrank_units=lowrank_set if lowrank else frozenset(),
        int8=True, int8_model=True, int8_units=frozenset(u.name for u in analysis.units) - {float_unit},
    )
    assert env.action_space.shape == ((3,) if lowrank else (1,)) and not env.int8
    searcher_named(name).search(env, episodes=4)
    assert len(env.history) == 4
    for record in env.history:
        bits = {a.unit: a.bits for a in record.policy.actions}
        assert bits.pop(float_unit) == 32 and set(bits.values()) == {8}, record.policy


def test_resumed_random_search_gives_the_uninterrupted_actions(model):
    whole = make_env(model, JOINT)
    uninterrupted = record_actions(whole)
    RandomSearcher(seed=5).search(whole, episodes=5)
    resumed_env = make_env(model, JOINT)
    resumed = record_actions(resumed_env)
    RandomSearcher(seed=5).search(resumed_env, episodes=3, done=2)
    tail = uninterrupted[2 * len(whole.units) :]
    assert len(resumed) == len(tail) and all(np.array_equal(a, b) for a, b in zip(resumed, tail, strict=True))


def test_resumed_uniform_sweep_continues_without_repeating(model):
    whole = make_env(model, JOINT)
    uninterrupted = record_actions(whole)
    UniformSearcher().search(whole, episodes=6)
    resumed_env = make_env(model, JOINT)
    resumed = record_actions(resumed_env)
    UniformSearcher().search(resumed_env, episodes=4, done=2)
    units = len(whole.units)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted[2 * units :], strict=True))
    first = {tuple(a) for a in uninterrupted[: 2 * units]}
    assert not first & {tuple(a) for a in resumed}


def test_ppo_builds_the_network_its_settings_ask_for(model):
    from modeltailor.agent import PPOSettings

    env = make_env(model, ("prune",))
    agent = PPOSearcher(seed=0, settings=PPOSettings(hidden=16, episodes_per_rollout=3)).build(env)
    widths = [layer.out_features for layer in agent.policy.mlp_extractor.policy_net if hasattr(layer, "out_features")]
    assert widths == [16, 16] and agent.n_steps == 3 * len(env.units)


# the new searchers: greedy, evolution, DDPG ---------------------------------------------------


def policies(env: CompressionEnv) -> list[Policy]:
    return [record.policy for record in env.history]


def compressed_units(env: CompressionEnv, policy: Policy) -> list[str]:
    """Units the policy changes from the all-max_keep reference."""
    return [a.unit for a in policy.actions if a.method != "prune" or a.keep != env.range.max_keep]


@pytest.mark.parametrize("name", NEW)
def test_new_searchers_spend_exactly_the_episodes_asked(model, name):
    env = make_env(model, JOINT, modelled=True)
    result = searcher_named(name).search(env, episodes=5)
    assert len(env.history) == 5 and len(result.episodes) == 5 and not result.interrupted
    resumed = searcher_named(name).search(env, episodes=3, done=5)
    assert len(env.history) == 8 and [r.episode for r in resumed.episodes] == [5, 6, 7]


@pytest.mark.parametrize("name", NEW)
def test_new_searchers_are_deterministic_by_seed(model, name):
    runs = {}
    for seed in (3, 3, 4):
        env = make_env(model, JOINT, modelled=True)
        searcher_named(name, seed=seed).search(env, episodes=5)
        runs.setdefault(seed, []).append(policies(env))
    assert runs[3][0] == runs[3][1]
    if name != "greedy":  # greedy draws nothing at random
        assert runs[3][0] != runs[4][0]


def interrupt_after(env: CompressionEnv, episodes: int) -> None:
    """Ctrl-C during the evaluation after `episodes` more episodes; the env works again after it."""
    evaluator, calls = env.evaluator, [0]

    def evaluate(policy: Policy) -> Outcome:
        calls[0] += 1
        if calls[0] > episodes:
            env.evaluator = evaluator
            raise KeyboardInterrupt
        return evaluator(policy)

    env.evaluator = evaluate


@pytest.mark.parametrize("name", ["greedy", "evolution"])
def test_resumed_search_plays_what_the_uninterrupted_one_would(model, name):
    whole = make_env(model, JOINT, modelled=True)
    searcher_named(name).search(whole, episodes=20)
    env = make_env(model, JOINT, modelled=True)
    interrupt_after(env, 7)
    assert searcher_named(name).search(env, episodes=20).interrupted and len(env.history) == 7
    searcher_named(name).search(env, episodes=13, done=7)
    assert policies(env) == policies(whole)


def test_greedy_probes_compress_exactly_one_unit_each(model):
    env = make_env(model, ("prune",), modelled=True)
    skippable = [u.name for u in env.units if u.block is not None]
    probes = 3 * len(env.units) + len(skippable)  # 3 ratios per unit, a skip per skippable one
    GreedySearcher().search(env, episodes=60)  # 15 kept for allocations, 45 >= probes
    changed = [compressed_units(env, r.policy) for r in env.history[:probes]]
    assert all(len(units) == 1 for units in changed)
    for unit in env.units:
        tried = [r.policy for r, c in zip(env.history, changed, strict=False) if c == [unit.name]]
        methods = sorted(a.method for p in tried for a in p.actions if a.unit == unit.name)
        assert methods == ["prune"] * 3 + (["skip"] if unit.name in skippable else []), unit.name
    assert any(len(compressed_units(env, r.policy)) > 1 for r in env.history[probes:])


def test_greedy_probes_the_largest_units_first_when_short_of_episodes(model):
    env = make_env(model, ("prune",), modelled=True)
    GreedySearcher().search(env, episodes=8)  # 2 allocations, 6 probes for 12 units
    probed = [compressed_units(env, r.policy) for r in env.history[:6]]
    largest = sorted(env.units, key=lambda u: -unit_macs(env.analysis, u.name))[:6]
    assert probed == [[u.name] for u in largest]
    assert all(r.policy.actions[[u.name for u in env.units].index(p[0])].keep == env.range.min_keep
               for r, p in zip(env.history[:6], probed, strict=True))


def budget_limiter(analysis: ModelAnalysis, max_latency_ms: float) -> BudgetLimiter:
    """Latency = 0.2 ms at the full model's MACs, proportional: exactly what `modelled_outcome` does."""
    latency = LinearCostModel()
    latency.add(analysis.total_macs, 0.2)
    latency.add(analysis.total_macs / 10, 0.02)
    return BudgetLimiter(Budget(max_latency_ms=max_latency_ms), latency_model=latency)


def test_greedy_allocations_are_predicted_within_the_budget(model):
    env = make_env(model, ("prune",), modelled=True, limiter=budget_limiter(model[0], 0.1))
    reference = Policy.uniform([u.name for u in env.units], 1.0)
    assert not env.predicted_within(reference)  # the budget bites
    within: list[bool] = []
    evaluate = env.evaluate

    def checked(policy: Policy):
        within.append(env.predicted_within(policy))
        return evaluate(policy)

    env.evaluate = checked  # type: ignore[method-assign]
    episodes = 30
    GreedySearcher().search(env, episodes=episodes)
    allocations = within[episodes - phase2_episodes(episodes, 0.25) :]
    assert len(allocations) == 8 and all(allocations)
    assert all(r.latency_ms <= 0.1 for r in env.history[-8:])
    assert all(len(compressed_units(env, r.policy)) > 1 for r in env.history[-8:])


def test_greedy_marginal_allocation_fits_and_leaves_no_slack(model):
    env = make_env(model, ("prune",), modelled=True, limiter=budget_limiter(model[0], 0.1))
    keeps = [round(k, 2) for k in np.arange(0.25, 1.0, 0.05)]
    sensitive = env.units[0].name  # dropping its channels costs ten times as much as any other's
    settings = {
        u.name: [Setting("prune", k, (10.0 if u.name == sensitive else 1.0) * (1.0 - k)) for k in keeps]
        for u in env.units
    }
    policy = marginal_allocation(env, settings, 1.0)
    assert policy is not None and env.predicted_within(policy)
    keep = {a.unit: a.keep for a in policy.actions}
    raised = [
        Policy(tuple(replace(a, keep=round(a.keep + 0.05, 2)) if a.unit == unit else a for a in policy.actions))
        for unit, k in keep.items() if k < 1.0
    ]
    assert raised and not any(env.predicted_within(p) for p in raised)  # no slack left
    others = [k for unit, k in keep.items() if unit != sensitive]
    assert keep[sensitive] >= max(others) - 1e-9  # the sensitive unit gives up the least


def test_evolution_ages_out_the_oldest(model):
    env = make_env(model, JOINT, modelled=True)
    searcher = EvolutionSearcher(seed=0, population=4, sample=2)
    searcher.search(env, episodes=12)
    assert [m.episode for m in searcher.survivors] == [8, 9, 10, 11]
    best_aged = max(r.reward for r in env.history[:8])
    assert best_aged > min(m.reward for m in searcher.survivors)  # left for its age, not its reward


def test_evolution_children_come_from_the_population(model):
    env = make_env(model, ("prune",), modelled=True)
    searcher = EvolutionSearcher(seed=2, population=3, sample=3)
    searcher.search(env, episodes=9)
    for k in range(3, 9):  # each child differs from its parent (the best of the 3 before it) a little
        parent = max(env.history[k - 3 : k], key=lambda r: r.reward)
        changed = sum(a != b for a, b in zip(parent.policy.actions, env.history[k].policy.actions, strict=True))
        assert 1 <= changed < len(env.units) // 2, (k, changed)


@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
def test_evolution_genome_replays_the_realized_policy(model, methods):
    env = make_env(model, methods, modelled=True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        genome = rng.uniform(-1, 1, size=(len(env.units), env.action_space.shape[0])).astype(np.float32)
        record = run_episode(env, lambda _o, step, g=genome: g[step])
        realized = realized_genome(env, record.policy)
        assert all(env.action_space.contains(row) for row in realized)
        replayed = run_episode(env, lambda _o, step, g=realized: g[step])
        assert replayed.policy == record.policy
