"""Searchers on the env's declared action space: every action inside it, every dimension explored,
and resumed searches continuing where the interrupted one stopped.

The env is real (a small ResNet's units, joint action spaces); the evaluator is a stub returning
a fixed outcome, since what is tested is the searcher, not the measurement.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeltailor.agent import PPOSearcher, RandomSearcher, Searcher, UniformSearcher
from modeltailor.compressors.pipeline import lowrank_units
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.units import ModelAnalysis, analyze_model
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.reward import Resources, TradeoffReward
from modeltailor.models import build_model
from modeltailor.results import Outcome

SHAPE = (1, 1, 16, 16)
METHOD_SETS = [("prune",), ("prune", "int8"), ("prune", "lowrank"), ("prune", "lowrank", "int8")]
JOINT = METHOD_SETS[-1]


@pytest.fixture(scope="module")
def model() -> tuple[ModelAnalysis, frozenset[str]]:
    torch.manual_seed(0)
    teacher = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5).eval()
    analysis = analyze_model(teacher, torch.zeros(SHAPE))
    return analysis, frozenset(lowrank_units(analysis, teacher, 2))


def fixed_outcome(policy: Policy) -> Outcome:
    latency = LatencyStats(median_ms=0.1, p90_ms=0.1, mean_ms=0.1, std_ms=0.0, min_ms=0.1, iqr_ms=0.0, runs=1)
    memory = MemoryStats(weight_bytes=800, peak_activation_bytes=200, total_bytes=1000, onnx_file_bytes=900)
    return Outcome(0.9, Measurement(latency, memory, "stub"), params=100, macs=1000, kept_channels={}, seconds=0.0)


def make_env(model: tuple[ModelAnalysis, frozenset[str]], methods: tuple[str, ...]) -> CompressionEnv:
    analysis, lowrank = model
    return CompressionEnv(
        analysis,
        fixed_outcome,
        TradeoffReward(),
        Resources(0.95, 0.2, 2000),
        ActionRange(0.25, 1.0, skip_fraction=0.15),
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


def searcher_named(name: str) -> Searcher:
    return {"random": RandomSearcher(seed=1), "uniform": UniformSearcher(), "ppo": PPOSearcher(seed=1)}[name]


@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("name", ["random", "uniform", "ppo"])
def test_every_action_lies_in_the_declared_space(model, methods, name):
    env = make_env(model, methods)
    sent = record_actions(env)
    searcher_named(name).search(env, episodes=2)
    assert len(env.history) == 2 and len(sent) >= 2 * len(env.units)
    assert env.action_space.shape == ((1,) if methods == ("prune",) else (3,))
    for action in sent:
        assert action.shape == env.action_space.shape and env.action_space.contains(action), action


@pytest.mark.parametrize("methods", METHOD_SETS[1:], ids="+".join)
@pytest.mark.parametrize("searcher", [RandomSearcher(seed=0), UniformSearcher()], ids=["random", "uniform"])
def test_searchers_explore_every_method_offered(model, methods, searcher):
    env = make_env(model, methods)
    searcher.search(env, episodes=4)
    actions = [a for record in env.history for a in record.policy.actions]
    if "int8" in methods:
        assert {a.bits for a in actions} == {8, 32}
    if "lowrank" in methods:
        assert any(a.method == "lowrank" for a in actions)


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
