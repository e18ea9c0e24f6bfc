"""CompressionEnv on a small real model: both env checkers, budgets, caching, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from modeltailor.agent import PPOSearcher, RandomSearcher, UniformSearcher
from modeltailor.compressors.distill import DistillConfig, TeacherLogits
from modeltailor.compressors.pipeline import PolicyApplier
from modeltailor.compressors.pruning import ChannelPruningCompressor
from modeltailor.compressors.units import analyze_model
from modeltailor.devices.cache import CachedDevice
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.env.evaluator import EvalData, PolicyEvaluator
from modeltailor.env.features import OBS_SIZE
from modeltailor.env.history import pareto_front
from modeltailor.env.limiter import Budget, BudgetLimiter
from modeltailor.env.reward import BudgetReward, Resources, TradeoffReward
from modeltailor.models import build_model
from tests.conftest import synthetic_images

SHAPE = (1, 1, 16, 16)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    teacher = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5).eval()
    x, y = synthetic_images(96, 1, 16, 4)
    evaluator = PolicyEvaluator(
        teacher=teacher,
        compressor=PolicyApplier(ChannelPruningCompressor(round_to=2)),
        data=EvalData(x[:64], y[:64], x[64:], y[64:]),
        teacher_logits=TeacherLogits(teacher, x[:64]),
        recovery=DistillConfig(steps=2, batch_size=16),
        device=CachedDevice(LocalOrtDevice(runs=10, warmup=2)),
        input_shape=SHAPE,
    )
    baseline = evaluator.measure(teacher)
    return teacher, evaluator, baseline


def make_env(parts, reward=None, budget: Budget | None = None, **options) -> CompressionEnv:
    """The env on the small model; with `budget`, limited by a BudgetLimiter seeded by the baseline."""
    teacher, evaluator, base = parts
    analysis = analyze_model(teacher, torch.zeros(SHAPE))
    lat, mem = LinearCostModel(), LinearCostModel()
    lat.add(base.macs, base.latency_ms)
    mem.add(base.params, base.memory_bytes)
    limiter = BudgetLimiter(budget, lat, mem) if budget is not None else None
    resources = Resources(base.accuracy, base.latency_ms, base.memory_bytes)
    return CompressionEnv(
        analysis, evaluator, reward or TradeoffReward(), resources, ActionRange(0.25, 1.0), limiter, **options
    )


def test_env_passes_gymnasium_checker(parts):
    gym_check_env(make_env(parts), skip_render_check=True)


def test_env_passes_sb3_checker(parts):
    sb3_check_env(make_env(parts), warn=True)


def test_episode_has_one_step_per_unit_and_reward_at_end(parts):
    env = make_env(parts)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (OBS_SIZE,) and obs.dtype == np.float32
    rewards = []
    for _ in env.units:
        obs, reward, terminated, truncated, info = env.step(np.array([0.0], dtype=np.float32))
        rewards.append(reward)
    assert terminated and not truncated
    assert all(r == 0.0 for r in rewards[:-1])
    assert info["accuracy"] == env.history[-1].accuracy
    assert len(env.history) == 1


def test_budget_limits_actions(parts):
    teacher, evaluator, base = parts
    budget = Budget(max_latency_ms=base.latency_ms * 0.5)
    env = make_env(parts, BudgetReward(budget.max_latency_ms), budget)
    env.reset()
    for _ in env.units:  # always ask to keep everything
        env.step(np.array([1.0], dtype=np.float32))
    keeps = env.history[-1].policy.to_dict()["units"]
    assert any(u["keep"] < 1.0 for u in keeps), "budget did not limit any action"
    assert env.history[-1].macs < 0.6 * base.macs


def test_limiter_refits_on_fresh_measurements_only(parts):
    teacher, evaluator, base = parts
    env = make_env(parts, budget=Budget(max_memory_bytes=base.memory_bytes * 0.6))
    limiter = env.limiter
    assert isinstance(limiter, BudgetLimiter)
    assert limiter.budget_fraction(base.macs) == 1.0  # no latency budget: no MACs target
    env.reset()
    for _ in env.units:
        env.step(np.array([1.0], dtype=np.float32))
    assert len(limiter.latency_model.points) == len(limiter.memory_model.points) == 2
    limiter.record(replace(base, cached=True))  # measured before: no new point
    assert len(limiter.latency_model.points) == 2


def test_unlimited_tradeoff_keeps_what_is_asked(parts):
    env = make_env(parts)
    env.reset()
    for _ in env.units:
        env.step(np.array([1.0], dtype=np.float32))
    assert all(u["keep"] == 1.0 for u in env.history[-1].policy.to_dict()["units"])


def test_same_architecture_is_evaluated_once(parts):
    env = make_env(parts)
    for _ in range(2):
        env.reset()
        for _ in env.units:
            env.step(np.array([-0.2], dtype=np.float32))
    first, second = env.history[-2:]
    assert second.cached and second.accuracy == first.accuracy


@pytest.mark.parametrize("searcher", [RandomSearcher(seed=1), UniformSearcher(), PPOSearcher(seed=1)])
def test_searchers_share_env_and_budget(parts, searcher):
    env = make_env(parts)
    result = searcher.search(env, episodes=3)
    assert len(result.episodes) == 3
    assert result.best is not None and result.pareto
    assert set(map(id, result.pareto)) <= set(map(id, result.episodes))


def test_ppo_search_is_deterministic_by_seed(parts):
    runs = []
    for _ in range(2):
        env = make_env(parts)
        PPOSearcher(seed=3).search(env, episodes=2)
        runs.append([r.policy for r in env.history])
    assert runs[0] == runs[1]


def test_pareto_front_drops_dominated():
    from modeltailor.env.history import EpisodeRecord

    def rec(i, acc, lat, mem):
        return EpisodeRecord(i, {}, acc, lat, lat, mem, 1, 1, acc, True, False, 0.0, {"u": i})

    records = [rec(0, 0.9, 1.0, 10), rec(1, 0.8, 2.0, 20), rec(2, 0.95, 1.5, 10), rec(3, 0.7, 0.5, 5)]
    assert [r.episode for r in pareto_front(records)] == [3, 0, 2]


def test_skip_region_removes_blocks_only_where_allowed(parts):
    teacher, evaluator, base = parts
    env = make_env(parts)
    env.range = ActionRange(0.25, 1.0, skip_fraction=0.15)
    env.reset()
    for _ in env.units:
        env.step(np.array([-1.0], dtype=np.float32))
    units = {u["unit"]: u for u in env.history[-1].policy.to_dict()["units"]}
    for unit in env.units:
        expected = "skip" if unit.block is not None else "prune"
        assert units[unit.name]["method"] == expected, unit.name
    assert any(u.block for u in env.units)
    assert env.history[-1].macs < base.macs
