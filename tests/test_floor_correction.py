"""An accuracy floor the search can use: what the long recovery gives back, learned from finalists
(env/reward.py RecoveryCorrection), read from the experience, and used by the search's reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeltailor.common.jsonl_log import JsonlLog
from modeltailor.compressors.policy import Policy
from modeltailor.env.limiter import TighteningLimiter
from modeltailor.env.records import EpisodeRecord
from modeltailor.env.reward import AccuracyFloorReward, RecoveryCorrection, Resources
from modeltailor.errors import ConfigError
from modeltailor.experiments.search.experience import Experience
from modeltailor.experiments.search.objective import build_env, make_reward
from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.search.workbench import build_workbench
from modeltailor.experiments.spec.deployment import load_config
from tests.test_search_e2e import TINY

BASE = Resources(accuracy=0.95, latency_ms=1.0, memory_bytes=1000)
# mild cuts recover fully, deep ones partly: (episode drop, final drop)
PAIRS = [(0.01, 0.0), (0.05, 0.01), (0.20, 0.04), (0.40, 0.15)]


def test_correction_is_monotone_and_never_optimistic_outside_what_it_saw():
    c = RecoveryCorrection.fit(PAIRS)
    assert c is not None and c.pairs == 4
    drops = [c.final_drop(x) for x in (0.0, 0.01, 0.1, 0.2, 0.3, 0.4)]
    assert drops == sorted(drops)  # deeper episode drop, deeper final drop
    assert c.final_drop(0.20) == pytest.approx(0.04)
    assert c.final_drop(0.30) == pytest.approx(0.095)  # between the knots
    # deeper than every finalist: the gain seen at the deepest (0.25) is kept, not extrapolated upward
    assert c.final_drop(0.60) == pytest.approx(0.60 - 0.25)
    # never worse than the episode itself: a long recovery does not lose accuracy
    assert c.final_drop(0.005) == pytest.approx(0.0) and c.final_drop(-0.01) == pytest.approx(-0.01)
    # a violating pair is pooled with its neighbour, not followed
    bumpy = RecoveryCorrection.fit([(0.1, 0.05), (0.2, 0.01), (0.3, 0.1)])
    assert bumpy is not None and list(bumpy.final_drops) == pytest.approx([0.03, 0.03, 0.1])
    assert "4 finalists" in c.describe() and "20.0->4.0" in c.describe()


def test_too_little_to_learn_from_is_no_correction():
    assert RecoveryCorrection.fit(PAIRS[:2]) is None
    assert RecoveryCorrection.fit([(0.1, 0.02)] * 5) is None  # one episode drop: no slope to learn


def test_the_floor_judges_a_deep_cut_by_what_its_long_recovery_will_reach():
    c = RecoveryCorrection.fit(PAIRS)
    deep = Resources(accuracy=0.95 - 0.20, latency_ms=0.3, memory_bytes=400)  # 20 points down after the episode
    raw = AccuracyFloorReward(min_accuracy=0.94)
    corrected = AccuracyFloorReward(min_accuracy=0.94, correction=c, reference=0.95)
    assert not raw.feasible(deep)
    # predicted final drop 4 points: still below a 1-point floor, at a penalty for 3 points, not 19
    assert not corrected.feasible(deep)
    assert corrected(deep, BASE) == pytest.approx(raw(deep, BASE) + 20 * (0.20 - 0.04))
    loose = AccuracyFloorReward(min_accuracy=0.90, correction=c, reference=0.95)
    assert loose.feasible(deep) and not AccuracyFloorReward(min_accuracy=0.90).feasible(deep)
    mild = Resources(accuracy=0.945, latency_ms=0.8, memory_bytes=900)
    assert corrected.judged(mild.accuracy) == pytest.approx(0.95)  # a mild cut recovers fully


def test_make_reward_uses_the_correction_only_for_the_search_and_when_asked():
    config = load_config(None, {"objective.kind": "accuracy", "objective.max_accuracy_drop": 1})
    c = RecoveryCorrection.fit(PAIRS)
    search = make_reward(config, BASE, correction=c)
    assert isinstance(search, AccuracyFloorReward)
    assert search.min_accuracy == pytest.approx(0.94) and search.correction is c  # the real floor, not relaxed
    assert make_reward(config, BASE, final=True, correction=c).correction is None
    assert make_reward(config, BASE).min_accuracy == pytest.approx(0.91)  # no correction: search_slack 3
    slack = load_config(None, {"objective.kind": "accuracy", "objective.floor_correction": "slack"})
    assert make_reward(slack, BASE, correction=c).correction is None


def test_a_bad_floor_correction_is_one_clear_error():
    with pytest.raises(ConfigError, match="floor_correction"):
        load_config(None, {"objective.floor_correction": "magic"})


def record(episode: int, accuracy: float) -> EpisodeRecord:
    return EpisodeRecord(episode=episode, policy=Policy.uniform(["a", "b"], 0.5), accuracy=accuracy, latency_ms=0.5,
                         latency_p90_ms=0.6, memory_bytes=500, params=50, macs=500, reward=0.0, feasible=True,
                         cached=False, seconds=1.0)


def test_pairs_come_from_finalists_of_the_same_regime_and_long_recovery(tmp_path: Path):
    log = JsonlLog(tmp_path / "exp.jsonl")
    steps = {"steps": 800, "lr": 0.02}

    def experience(run: str, regime: str = "r1", final: dict | None = None) -> Experience:
        return Experience(log, regime, "cpu|abc", BASE, None, 10, {"name": "d"}, run, final_recovery=final or steps)

    a = experience("run-a")
    for episode, accuracy in ((1, 0.90), (2, 0.75), (3, 0.94)):
        a.append(record(episode, accuracy))
    a.append_finals([(1, 0.94), (2, 0.85)])
    b = experience("run-b", final={"steps": 400, "lr": 0.02})  # another long recovery
    b.append(record(3, 0.90))
    b.append_finals([(3, 0.95)])
    other = experience("run-c", regime="r2")
    other.append(record(1, 0.5))
    other.append_finals([(1, 0.9)])  # another regime
    with log.path.open("a") as handle:  # a final written before the long recovery was recorded
        handle.write(json.dumps({"kind": "final", "format": 1, "of": "run-a/3", "regime": "r1", "final_accuracy": 0.95}))
        handle.write("\n")
    pairs = sorted(experience("run-d").correction_pairs())
    assert [p[0] for p in pairs] == pytest.approx([0.05, 0.20]) and [p[1] for p in pairs] == pytest.approx([0.01, 0.10])


@pytest.mark.slow
def test_a_second_search_judges_its_floor_by_the_first_ones_finalists(tmp_path: Path):
    settings = {**TINY, "tracking.enabled": False, "search.searcher": "random", "search.episodes": 5,
                "recovery.finalists": 3, "objective.kind": "accuracy", "search.experience": str(tmp_path / "exp")}
    first = run_search(load_config(None, settings), tmp_path / "first").summary
    assert first.accuracy_floor is not None and first.accuracy_floor.judged_by == "search_slack"
    assert first.accuracy_floor.finalists == 0
    finals = [r for r in JsonlLog(next((tmp_path / "exp").glob("*.jsonl"))).read().records if r["kind"] == "final"]
    assert len(finals) == 3 and all(r["final_recovery"]["steps"] == TINY["recovery.final_steps"] for r in finals)
    # the same seed (another seed is another regime: its episodes recover on another data order)
    floor = run_search(load_config(None, settings), tmp_path / "second").summary.accuracy_floor
    assert floor is not None
    episodes = {r["id"]: r["accuracy"] for r in JsonlLog(next((tmp_path / "exp").glob("*.jsonl"))).read().records
                if r["kind"] == "episode"}
    if len({episodes[r["of"]] for r in finals}) > 1:  # one episode accuracy for all three: no slope to learn
        assert floor.judged_by == "learned correction" and floor.finalists == 3 and floor.correction
    # the floor relaxed by search_slack as asked, and a budget tightening below the best within it
    tightened = {**settings, "objective.floor_correction": "slack", "objective.tighten_step": 0.1}
    bench = build_workbench(load_config(None, tightened), lambda _m: None)
    base = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    limiter = build_env(bench, make_reward(bench.config, base), base).limiter
    assert isinstance(limiter, TighteningLimiter) and limiter.inner.predictor is not None and limiter.best is None
    third = run_search(load_config(None, tightened), tmp_path / "third").summary
    assert third.accuracy_floor is not None and third.accuracy_floor.judged_by == "search_slack"
    budget = run_search(load_config(None, {**settings, "objective.kind": "budget"}), tmp_path / "budget").summary
    assert budget.accuracy_floor is None and budget.subset_gain is None
    assert first.subset_gain is None  # all classes: nothing to compare
    # a class subset after them (same regime and device): compared with their all-class episodes
    subset = {**settings, "classes": [0, 3, 7], "objective.max_accuracy_drop": 90.0}
    gain = run_search(load_config(None, subset), tmp_path / "subset").summary.subset_gain
    assert gain is not None and gain.all_class_episodes >= 15 and gain.pays == (gain.ratio >= 1.1)
    assert gain.says.startswith("the class subset ") and gain.max_drop == pytest.approx(93.0)
