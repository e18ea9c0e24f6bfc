"""Objectives (trade-off, budget, accuracy floor), unreachable budgets, pick and resume."""

from __future__ import annotations

import json
import math

import pytest

from modeltailor.env.reward import AccuracyFloorReward, BudgetReward, Resources, TradeoffReward
from modeltailor.errors import ConfigError, ModelTailorError
from modeltailor.experiments.search.objective import make_reward
from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.spec.summary import ParetoPoint
from modeltailor.experiments.tools.pick import pick, picked_policy
from tests.test_search_e2e import TINY, InterruptAfter
from tests.test_summary import record, sample_summary

BASE = Resources(accuracy=0.95, latency_ms=1.0, memory_bytes=1000)


def test_tradeoff_rewards_speed_and_accuracy():
    reward = TradeoffReward(1.0, 0.1, 0.0)
    faster = reward(Resources(0.95, 0.5, 1000), BASE)
    assert faster == pytest.approx(0.95 + 0.1 * math.log(2))
    assert reward(Resources(0.90, 0.5, 1000), BASE) < faster


def test_budget_reward_penalizes_overrun():
    reward = BudgetReward(max_latency_ms=0.5)
    inside, outside = Resources(0.9, 0.5, 1000), Resources(0.95, 0.75, 1000)
    assert reward.feasible(inside) and not reward.feasible(outside)
    assert reward(inside, BASE) == 0.9 > reward(outside, BASE)


def test_accuracy_floor_prefers_the_fastest_within_the_floor():
    reward = AccuracyFloorReward(min_accuracy=0.94)
    fast_ok, faster_bad = Resources(0.945, 0.5, 1000), Resources(0.90, 0.3, 1000)
    assert reward.feasible(fast_ok) and not reward.feasible(faster_bad)
    assert reward(fast_ok, BASE) > reward(faster_bad, BASE)
    assert reward(Resources(0.95, 0.4, 1000), BASE) > reward(fast_ok, BASE)
    # a miss just under the floor, however fast, never outranks a model within it at the baseline's speed
    just_under, at_baseline = Resources(0.939, 0.1, 1000), Resources(0.94, BASE.latency_ms, 1000)
    assert reward(at_baseline, BASE) == 0.0 > reward(just_under, BASE) == pytest.approx(-20 * 0.001)
    slow_bad = Resources(0.939, 2 * BASE.latency_ms, 1000)  # under the floor and slower: the slowdown counts too
    assert reward(slow_bad, BASE) == pytest.approx(math.log(0.5) - 20 * 0.001)


def test_make_reward_by_kind():
    assert make_reward(load_config(None), BASE) == BudgetReward(max_latency_ms=0.45)
    memory_only = load_config(None, {"objective.max_memory_ratio": 0.5})
    assert make_reward(memory_only, BASE) == BudgetReward(max_memory_bytes=500)
    accuracy_kind = load_config(None, {"objective.kind": "accuracy", "objective.max_accuracy_drop": 2})
    final = make_reward(accuracy_kind, BASE, final=True)
    assert isinstance(final, AccuracyFloorReward) and final.min_accuracy == pytest.approx(0.93)
    assert make_reward(accuracy_kind, BASE).min_accuracy == pytest.approx(0.90)  # relaxed by search_slack
    assert isinstance(make_reward(load_config(None, {"objective.kind": "tradeoff"}), BASE), TradeoffReward)


def test_pick_returns_the_most_accurate_within_limits():
    measured = ((0, 0.80, 0.2), (1, 0.90, 0.4), (2, 0.95, 0.8))
    points = [ParetoPoint.from_record(record(e, acc, lat)) for e, acc, lat in measured]
    summary = sample_summary(pareto=points)
    summary.policy.meta["kept_channels"] = {"layer1.0": 8}
    assert pick(summary, max_latency_ms=0.5).episode == 1
    assert pick(summary).episode == 2
    assert pick(summary, max_latency_ms=0.5, min_accuracy=0.85).episode == 1
    with pytest.raises(ModelTailorError, match="fastest result is 0.200 ms"):
        pick(summary, max_latency_ms=0.1)
    with pytest.raises(ModelTailorError, match="no result of this search meets the limits"):
        pick(summary, max_memory_bytes=50)
    policy = picked_policy(summary, pick(summary, max_latency_ms=0.5))
    assert dict(policy.meta)["picked_from_episode"] == 1 and "kept_channels" not in dict(policy.meta)
    assert dict(policy.meta)["input_shape"] == [1, 1, 16, 16]
    assert policy.actions == points[1].policy.to_policy().actions


@pytest.mark.slow
def test_unreachable_budget_is_a_clear_error(tmp_path):
    cfg = load_config(None, {**TINY, "objective.max_latency_ms": 1e-4, "tracking.enabled": False})
    with pytest.raises(ConfigError, match="below the fastest model this search can build"):
        run_search(cfg, tmp_path / "out")


@pytest.mark.slow
def test_resume_keeps_finished_episodes_and_runs_the_rest(tmp_path):
    out = tmp_path / "out"
    cfg = load_config(None, {**TINY, "search.episodes": 4, "search.searcher": "random", "tracking.enabled": False})
    run_search(cfg, out, InterruptAfter(2))
    first = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(first) == 2
    run = run_search(cfg, out, resume=True)
    lines = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in lines] == [0, 1, 2, 3]
    assert lines[:2] == first
    assert run.summary.episodes == 4


@pytest.mark.slow
def test_resume_refuses_another_deployment(tmp_path):
    out = tmp_path / "out"
    cfg = load_config(None, {**TINY, "search.episodes": 1, "tracking.enabled": False})
    run_search(cfg, out)
    other = load_config(None, {**TINY, "search.episodes": 1, "classes": [1, 2], "tracking.enabled": False})
    with pytest.raises(ConfigError, match="different deployment"):
        run_search(other, out, resume=True)


class DeviceFailsAfter(InterruptAfter):
    def episode(self, record, best) -> None:
        self.left -= 1
        if self.left == 0:
            from modeltailor.errors import DeviceError

            raise DeviceError("device agent 'lab' at http://127.0.0.1:9 is unreachable (test)")


@pytest.mark.slow
def test_device_failure_mid_search_keeps_episodes_for_resume(tmp_path):
    from modeltailor.errors import DeviceError

    out = tmp_path / "out"
    cfg = load_config(None, {**TINY, "search.episodes": 4, "tracking.enabled": False})
    with pytest.raises(DeviceError, match="after 2 episodes, all kept in .*rerun with --resume"):
        run_search(cfg, out, DeviceFailsAfter(2))
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    run = run_search(cfg, out, resume=True)
    assert run.summary.episodes == 4
