"""The surrogate and the surrogate-assisted searchers.

- the surrogate evaluator against the real one (a small real model compressed, recovered,
  exported and timed on a deterministic device) on the same held-out policies;
- the policy encoding: equal models encode equally, subsets and methods are told apart;
- the search: seed episodes only where the experience is short, determinism for a seed, real
  episodes never repeating a measured model, the fall-back from a poor warm start;
- the experience: appended and read back by regime, finals, a torn line.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modeltailor.agent import make_searcher
from modeltailor.agent import surrogate_search as surrogate_search_module
from modeltailor.agent.ppo import PPOSearcher, PPOSettings, save_checkpoint
from modeltailor.agent.surrogate_search import (
    AllocationProposer,
    ExperienceView,
    LocalProposer,
    SurrogateSearcher,
    SurrogateSettings,
    device_latency,
    score_noise,
    seed_design,
)
from modeltailor.common.jsonl_log import JsonlLog
from modeltailor.compressors.distill import DistillConfig, TeacherLogits
from modeltailor.compressors.pipeline import PolicyApplier
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import ChannelPruningCompressor
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.evaluator import EvalData, PolicyEvaluator
from modeltailor.env.limiter import Budget, BudgetLimiter, TighteningLimiter
from modeltailor.env.reward import AccuracyFloorReward, BudgetReward, Resources
from modeltailor.env.surrogate import (
    PolicyEncoder,
    Regressor,
    SurrogateEvaluator,
    fit_surrogate,
    kendall_tau,
    rank_encoded,
    sample_of,
    select_kind,
)
from modeltailor.experiments.search.experience import Experience
from modeltailor.experiments.spec.summary import SearchAgentInfo
from modeltailor.models import build_model
from tests.conftest import synthetic_images
from tests.test_latency_table import CostModelDevice
from tests.test_searchers import make_env, model  # noqa: F401 - the fixture

FAST = SurrogateSettings(seed_episodes=6, pretrain_episodes=40, round_episodes=12)
SHAPE = (1, 1, 16, 16)


def random_policy(units, rng: np.random.Generator) -> Policy:
    top = rng.uniform(0.3, 1.0)
    return Policy(tuple(UnitAction(u.name, keep=round(float(rng.uniform(0.25, top)), 4)) for u in units))


@pytest.fixture(scope="module")
def real_evaluator():
    torch.manual_seed(0)
    teacher = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5)
    x, y = synthetic_images(160, 1, 16, 4)
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    for step in range(40):  # a trained teacher: pruning it costs accuracy, by how much the surrogate learns
        batch = slice(16 * (step % 6), 16 * (step % 6) + 16)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(teacher(x[batch]), y[batch]).backward()
        optimizer.step()
    teacher.eval()
    evaluator = PolicyEvaluator(
        teacher=teacher,
        compressor=PolicyApplier(ChannelPruningCompressor(round_to=2)),
        data=EvalData(x[:96], y[:96], x[96:], y[96:]),
        teacher_logits=TeacherLogits(teacher, x[:96]),
        recovery=DistillConfig(steps=0, batch_size=16),
        device=CostModelDevice(),
        input_shape=SHAPE,
    )
    return evaluator, evaluator.measure(teacher)


@pytest.mark.slow  # 34 real episodes: compressed, recalibrated, exported (about 18 s)
def test_surrogate_evaluator_predicts_the_real_one_on_held_out_policies(real_evaluator):
    """Fitted on 24 real episodes, the surrogate ranks 10 policies it never saw the way the real
    evaluator measures them: latency and memory (deterministic device) closely, accuracy (no
    recovery: batch norm recalibrated only) clearly better than chance."""
    evaluator, base = real_evaluator
    analysis = evaluator.analysis
    baseline = Resources(base.accuracy, base.latency_ms, base.memory_bytes)
    rng = np.random.default_rng(0)
    policies = [random_policy(analysis.units, rng) for _ in range(34)]
    outcomes = [evaluator(p) for p in policies]
    samples = [sample_of(p, o.accuracy, o.latency_ms, o.memory_bytes, baseline, None, "cost-model")
               for p, o in zip(policies, outcomes, strict=True)]
    encoder = PolicyEncoder(analysis, num_classes=4, round_to=2)
    surrogate = fit_surrogate(samples[:24], encoder, seed=0)
    predicted = SurrogateEvaluator(surrogate, baseline, None, "cost-model", analysis, round_to=2)
    held = list(zip(policies[24:], outcomes[24:], strict=True))
    guesses = [predicted(p) for p, _ in held]
    latency_error = [abs(g.latency_ms / o.latency_ms - 1) for g, (_, o) in zip(guesses, held, strict=True)]
    memory_error = [abs(g.memory_bytes / o.memory_bytes - 1) for g, (_, o) in zip(guesses, held, strict=True)]
    assert np.median(latency_error) < 0.1, latency_error
    assert np.median(memory_error) < 0.1, memory_error
    assert kendall_tau(np.array([o.latency_ms for _, o in held]), np.array([g.latency_ms for g in guesses])) > 0.6
    assert kendall_tau(np.array([o.accuracy for _, o in held]), np.array([g.accuracy for g in guesses])) > 0.2
    assert all(g.cached and g.measurement.device == "surrogate" for g in guesses)  # never a measurement


def test_encoding_tells_models_and_subsets_apart(model):  # noqa: F811
    analysis, _ = model
    encoder = PolicyEncoder(analysis, num_classes=4, round_to=8)
    names = [u.name for u in analysis.units]
    # 0.51 and 0.55 of a unit round to the same channel count: one model, one encoding
    assert np.array_equal(encoder.encode(Policy.uniform(names, 0.51), None), encoder.encode(Policy.uniform(names, 0.55), None))
    assert not np.array_equal(encoder.encode(Policy.uniform(names, 0.5), None), encoder.encode(Policy.uniform(names, 1.0), None))
    assert not np.array_equal(encoder.encode(Policy.uniform(names, 0.5), [0, 1]), encoder.encode(Policy.uniform(names, 0.5), None))
    skipped = Policy((UnitAction(names[1], method="skip", keep=0.0),))
    quantized = Policy((UnitAction(names[1], bits=8),))
    assert encoder.encode(skipped, None)[3] == 0.0 and encoder.encode(quantized, None)[5] == 1.0


def test_kind_is_picked_by_cross_validated_rank():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(40, 5))
    y = x[:, 0] * 2 + np.sin(3 * x[:, 1])
    kind, scores = select_kind(x, y)
    assert set(scores) == {"gp", "trees", "mlp", "additive"} and scores[kind] == max(scores.values()) and scores[kind] > 0.7
    assert select_kind(x[:10], y[:10]) == ("trees", {})  # too few to cross-validate


def test_the_additive_model_ranks_per_unit_sensitivities_from_few_episodes():
    """Accuracy as a sum of one curve per unit (a few units matter, most hardly): fitted on fewer
    episodes than it has features, the additive model ranks held-out policies better than the trees
    and tells which unit hurts most when it alone is pruned."""
    rng = np.random.default_rng(3)
    units = 24
    weight = np.where(np.arange(units) % 6 == 0, 3.0, 0.1)
    def drop(keep: np.ndarray) -> np.ndarray:
        return ((1.0 - keep) ** 2 * weight).sum(axis=1) + rng.normal(0.0, 0.02, len(keep))
    x = rng.uniform(0.2, 1.0, size=(40, units))
    held = rng.uniform(0.2, 1.0, size=(200, units))
    taus = {kind: kendall_tau(drop(held), Regressor(kind, 0).fit(x, drop(x)).predict(held)[0])
            for kind in ("additive", "trees")}
    assert taus["additive"] > taus["trees"] + 0.1 and taus["additive"] > 0.6
    probes = np.ones((units, units)) - 0.7 * np.eye(units)  # each unit alone at keep 0.3
    predicted, std = Regressor("additive", 0).fit(x, drop(x)).predict(probes)
    assert set(np.argsort(-predicted)[:4]) <= set(np.flatnonzero(weight > 1)) and (std > 0).all()


def test_allocations_come_from_the_surrogates_predicted_probes(model):  # noqa: F811
    """Greedy's allocations on a modelled evaluator whose units differ in sensitivity (weights 1, 2,
    3 by index): the probes are predicted, never played, and the allocations prune the least
    sensitive units hardest."""
    env = make_env(model, ("prune",), modelled=True)
    proposer = AllocationProposer(ratios=3)
    policies = proposer.learn(env, 5)
    assert len(policies) == 5 == proposer.played and len(set(policies)) == 5 and env.history == []
    weights = {u.name: u.index % 3 for u in env.units}
    for policy in policies:
        keep = {w: np.mean([a.keep for a in policy.actions if weights[a.unit] == w]) for w in range(3)}
        assert keep[0] < keep[2]


def test_the_trees_mean_is_the_forests_own_prediction():
    """The trees' per-tree predictions skip sklearn's input checks (one check for all): their mean
    must still be exactly what the fitted forest predicts."""
    rng = np.random.default_rng(2)
    x, y = rng.uniform(size=(60, 7)), rng.uniform(size=60)
    regressor = Regressor("trees").fit(x, y)
    rows = rng.uniform(size=(5, 7))
    mean, std = regressor.predict(rows)
    forest = regressor._models[0].predict(regressor._x(rows))
    assert np.allclose(mean, forest * regressor._y[1] + regressor._y[0]) and np.all(std > 0)


def test_seed_design_spans_mild_to_aggressive():
    genomes = seed_design(units=10, dims=1, count=8, seed=0)
    levels = sorted(float(g.mean()) for g in genomes)
    assert len(genomes) == 8 and all(g.shape == (10, 1) and np.abs(g).max() <= 1 for g in genomes)
    assert levels[0] < -0.4 and levels[-1] > 0.4  # the mildest and the most aggressive are far apart


def surrogate_search(model, seed: int, episodes: int = 14, view: ExperienceView | None = None, **kwargs):  # noqa: F811
    env = make_env(model, ("prune",), modelled=True)
    searcher = SurrogateSearcher(seed=seed, settings=FAST, ppo=PPOSettings(hidden=16), experience=view, **kwargs)
    return env, searcher, searcher.search(env, episodes)


def test_surrogate_search_is_deterministic_for_a_seed_and_spends_the_budget(model):  # noqa: F811
    env, searcher, first = surrogate_search(model, seed=3)
    _, _, again = surrogate_search(model, seed=3)
    _, _, other = surrogate_search(model, seed=4)
    assert [r.policy for r in first.episodes] == [r.policy for r in again.episodes]
    assert [r.policy for r in first.episodes] != [r.policy for r in other.episodes]
    assert len(first.episodes) == 14 and len(env.history) == 14
    notes = first.notes
    assert notes["seed_episodes"] == FAST.seed_episodes and notes["real_episodes"] == 14
    assert SearchAgentInfo(**notes).surrogate_episodes == notes["surrogate_episodes"]  # what summary.json holds
    assert notes["surrogate_episodes"] >= FAST.pretrain_episodes + 8 * FAST.round_episodes
    # each real episode after the seeds went to the agent's models or the design's, both ranked
    assert sum(notes["proposals"].values()) == 14 - FAST.seed_episodes
    # every real episode after the seeds is a model not measured before
    encoder = PolicyEncoder(env.analysis, 1)
    keys = [encoder.encode(r.policy, None).round(6).tobytes() for r in first.episodes]
    assert len(set(keys)) == len(keys)


def test_without_design_or_local_candidates_every_proposal_is_the_agents(model):  # noqa: F811
    env = make_env(model, ("prune",), modelled=True)
    settings = replace(FAST, design_candidates=0, local_candidates=0, allocation_candidates=0)
    searcher = SurrogateSearcher(seed=0, settings=settings, ppo=PPOSettings(hidden=16))
    result = searcher.search(env, FAST.seed_episodes + 3)
    assert result.notes["proposals"] == {"agent": 3, "design": 0}


def test_local_candidates_are_mutations_of_the_best_real_episodes(model):  # noqa: F811
    env = make_env(model, ("prune",), modelled=True)
    for keep in (0.9, 0.5, 0.3):
        env.evaluate(Policy(tuple(UnitAction(u.name, keep=keep) for u in env.units)))
    best = max(env.history, key=lambda r: r.reward)
    proposer = LocalProposer(env, seed=0, parents=1)
    played = proposer.learn(env.sibling(env.evaluator), 6)
    assert len(played) == 6 and proposer.played == 6
    parent = {a.unit: a.keep for a in best.policy.actions}
    for policy in played:  # each child differs from the best real episode in a few units, not all
        changed = sum(1 for a in policy.actions if a.keep != parent[a.unit])
        assert 1 <= changed < len(env.units) // 2
    assert LocalProposer(make_env(model, ("prune",), modelled=True), seed=0).learn(env, 3) == []  # nothing measured yet


def test_only_the_ppo_search_plays_local_candidates(model):  # noqa: F811
    _, _, ppo = surrogate_search(model, seed=0, episodes=FAST.seed_episodes + 4)
    assert set(ppo.notes["proposals"]) == {"agent", "design", "local", "allocation"}
    assert sum(ppo.notes["proposals"].values()) == 4
    env = make_env(model, ("prune",), modelled=True)
    evolution = make_searcher("evolution-surrogate", 0, surrogate=vars(FAST)).search(env, FAST.seed_episodes + 2)
    assert set(evolution.notes["proposals"]) == {"agent", "design"}


def test_evolution_on_the_surrogate_beats_its_own_seeds(model):  # noqa: F811
    env = make_env(model, ("prune",), modelled=True)
    result = make_searcher("evolution-surrogate", 0, surrogate=vars(FAST)).search(env, 16)
    seeds, verified = result.episodes[: FAST.seed_episodes], result.episodes[FAST.seed_episodes :]
    assert result.searcher == "evolution-surrogate" and result.notes["proposer"] == "evolution"
    assert max(r.reward for r in verified) > max(r.reward for r in seeds)


def test_enough_experience_means_no_seed_episodes(model):  # noqa: F811
    env, _, first = surrogate_search(model, seed=0)
    view = ExperienceView(prior=tuple(sample_of(r.policy, r.accuracy, r.latency_ms, r.memory_bytes, env.baseline,
                                                None, "device") for r in first.episodes))
    _, _, second = surrogate_search(model, seed=1, episodes=4, view=view)
    assert second.notes["seed_episodes"] == 0 and second.notes["prior_samples"] == 14
    assert len(second.episodes) == 4


def test_experience_from_other_devices_alone_still_seeds_this_one(model, monkeypatch):  # noqa: F811
    """With no calibrated latency model on the searched device the regressor predicts its latency,
    so experience measured only elsewhere is not enough: half the seed episodes are measured here.
    With the limiter's model (standing in: the mean keep ratio) none are."""
    env, _, first = surrogate_search(model, seed=0)
    view = ExperienceView(prior=tuple(sample_of(r.policy, r.accuracy, r.latency_ms, r.memory_bytes, env.baseline,
                                                None, "elsewhere") for r in first.episodes))
    _, _, second = surrogate_search(model, seed=1, episodes=5, view=view)
    assert second.notes["seed_episodes"] == FAST.seed_episodes // 2 and len(second.episodes) == 5
    model_latency = KeptChannelsModel()
    monkeypatch.setattr(surrogate_search_module, "device_latency",
                        lambda env: lambda policy: model_latency.predict(policy.keep_ratios()))
    _, _, third = surrogate_search(model, seed=1, episodes=5, view=view)
    assert third.notes["seed_episodes"] == 0 and len(third.episodes) == 5


@pytest.mark.parametrize("margin", [None, 100.0])
def test_a_poor_warm_start_falls_back_to_a_cold_agent(model, tmp_path: Path, margin: float):  # noqa: F811
    """A warm agent that always proposes the most compressed model, under an accuracy floor no such
    model meets, loses the warm check to a cold agent and is dropped; a gap within the margin is a
    tie, and a tie keeps the warm agent."""
    env = make_env(model, ("prune",), modelled=True)
    env.reward_fn = AccuracyFloorReward(min_accuracy=0.85)
    poor = PPOSearcher(seed=0, settings=PPOSettings(hidden=16)).build(env)
    with torch.no_grad():
        poor.policy.action_net.weight.zero_()
        poor.policy.action_net.bias.fill_(-3.0)
        poor.policy.log_std.fill_(-5.0)
    path = tmp_path / "poor.pt"
    save_checkpoint(path, poor, env, PPOSettings(hidden=16))
    fresh = make_env(model, ("prune",), modelled=True)
    fresh.reward_fn = AccuracyFloorReward(min_accuracy=0.85)
    searcher = SurrogateSearcher(seed=0, settings=replace(FAST, warm_margin=margin), ppo=PPOSettings(hidden=16),
                                 warm_start=path)
    result = searcher.search(fresh, FAST.seed_episodes + 6)
    check = result.notes["warm_check"]
    assert check["design_best_reward"] > check["warm_best_reward"] + 0.01, check  # clearly worse, beyond noise
    if margin is None:  # the modelled evaluator scores no images: the 0.01 default
        assert check["margin"] == 0.01
        assert result.notes["agent_from"] == "cold (the warm start fell back)" and check["kept"] == "cold", check
    else:
        assert check["margin"] == margin and result.notes["agent_from"] == "warm" and check["kept"] == "warm", check


def test_the_warm_check_margin_is_one_standard_error_of_a_score():
    """On 136 scored images at 96.3% (digits 0-4 in the shared_agent run) one standard error is 1.6
    points; a score below 50% uses 50% (the widest), a perfect one still leaves one image's worth."""
    from types import SimpleNamespace

    def env(images: int) -> Any:
        return SimpleNamespace(evaluator=SimpleNamespace(data=SimpleNamespace(score_y=torch.zeros(images))))

    assert score_noise(131 / 136, env(136)) == pytest.approx(math.sqrt(131 / 136 * 5 / 136 / 136))
    assert score_noise(0.2, env(100)) == pytest.approx(0.05) == score_noise(0.5, env(100))
    assert 0 < score_noise(1.0, env(400)) == pytest.approx(math.sqrt(399 / 400 / 400 / 400))
    assert score_noise(0.9, SimpleNamespace(evaluator=lambda policy: None)) == 0.01  # no images to say


def test_experience_is_read_back_by_regime_with_torn_lines_skipped(model, tmp_path: Path):  # noqa: F811
    env = make_env(model, ("prune",), modelled=True)
    records = [env.evaluate(Policy.uniform([u.name for u in env.units], k)) for k in (1.0, 0.5)]
    log = JsonlLog(tmp_path / "exp.jsonl")

    def experience(run: str, regime: str = "r1") -> Experience:
        return Experience(log, regime, "cpu|abc", env.baseline, (0, 2), 4, {"name": "d"}, run)

    writer = experience("run-a")
    for record in records:
        writer.append(record)
    writer.append(replace(records[0], failure="export failed"))  # measured nothing: left out
    writer.append_finals([(1, 0.9)])
    with (tmp_path / "exp.jsonl").open("a") as handle:
        handle.write('{"kind": "episode", "regi')  # a writer killed mid-line
    experience("run-b", "r2").append(records[1])  # another recovery: another regime
    samples = experience("run-c").samples()
    assert [s.policy for s in samples] == [r.policy for r in records]
    assert samples[1].latency_ratio == pytest.approx(records[1].latency_ms / env.baseline.latency_ms)
    assert samples[0].classes == (0, 2) and samples[0].device == "cpu|abc"
    assert experience("run-a").samples() == []  # a search's own episodes come from its env, not read back
    finals = [r for r in log.read().records if r["kind"] == "final"]
    assert finals == [{"kind": "final", "format": 1, "of": "run-a/1", "regime": "r1", "final_recovery": {},
                       "final_accuracy": 0.9}]
    assert log.read().skipped == 1  # the torn line, fenced off by the next append


def test_surrogate_env_never_teaches_the_real_limiter(model):  # noqa: F811
    env: CompressionEnv = make_env(model, ("prune",), modelled=True)
    recorded = []
    env.limiter.record = recorded.append  # type: ignore[method-assign]
    sibling = env.sibling(env.evaluator)
    sibling.evaluate(Policy.uniform([u.name for u in env.units], 0.5))
    assert recorded == [] and env.history == [] and len(sibling.history) == 1
    env.evaluate(Policy.uniform([u.name for u in env.units], 0.5))
    assert len(recorded) == 1


def test_an_interrupted_surrogate_search_keeps_its_episodes_and_resumes(model, tmp_path: Path):  # noqa: F811
    env = make_env(model, ("prune",), modelled=True)
    real = env.evaluator
    calls = {"n": 0}

    def stops_at_ten(policy: Policy):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(policy)

    env.evaluator = stops_at_ten
    checkpoint = tmp_path / "agent_checkpoint.pt"
    first = SurrogateSearcher(seed=0, settings=FAST, ppo=PPOSettings(hidden=16), checkpoint=checkpoint).search(env, 14)
    assert first.interrupted and len(first.episodes) == 9 and checkpoint.is_file()
    env.evaluator = real
    resumed = SurrogateSearcher(seed=0, settings=FAST, ppo=PPOSettings(hidden=16), checkpoint=checkpoint)
    second = resumed.search(env, 5, done=9)
    assert not second.interrupted and len(env.history) == 14
    assert second.notes["agent_from"] == "resumed" and second.notes["seed_episodes"] == 0


def test_ppo_learns_across_variants_of_the_deployment(model):  # noqa: F811
    """Under a budget the agent also plays tighter and looser budgets and the class subsets the
    experience has seen; each variant's observation says what differs, and only the searched
    deployment's episodes become candidates."""
    from modeltailor.agent.surrogate_search import DeploymentMixture, deployment_variants
    from modeltailor.env.limiter import Budget, BudgetLimiter
    from modeltailor.env.reward import BudgetReward

    analysis, _ = model
    env = make_env(model, ("prune",), modelled=True, limiter=BudgetLimiter(Budget(max_latency_ms=0.1)))
    env.reward_fn = BudgetReward(max_latency_ms=0.1)
    env.limiter.record(env.evaluator(Policy.uniform([u.name for u in analysis.units], 1.0)))
    env.limiter.record(env.evaluator(Policy.uniform([u.name for u in analysis.units], 0.3)))
    prior = tuple(sample_of(Policy(()), 0.9, 0.2, 2000, env.baseline, classes, "device")
                  for classes in ((0, 1), (0, 1), (2,), None))
    variants = deployment_variants(env, ExperienceView(prior=prior, classes=None, num_classes=4))
    budgets = [v.reward.max_latency_ms for v in variants[:4]]  # type: ignore[attr-defined]
    assert budgets == pytest.approx([0.07, 0.085, 0.12, 0.14])
    assert [v.limiter.budget.max_latency_ms for v in variants[:4]] == pytest.approx(budgets)  # type: ignore[attr-defined]
    assert [v.classes for v in variants[4:]] == [(0, 1), (2,)]  # most measured first; its own subset left out
    assert [v.context.class_fraction for v in variants[4:]] == [0.5, 0.25]
    envs = [env.sibling(env.evaluator, v.reward, v.limiter, v.context) for v in variants]
    observed = {tuple(e.reset()[0][20:28].round(4)) + (float(e.reset()[0][16]),) for e in [env, *envs]}
    assert len(observed) == 7  # every variant looks different to the agent
    mixture = DeploymentMixture(env.sibling(env.evaluator), envs, seed=0)
    for _ in range(12):
        mixture.reset()
        done = False
        while not done:
            done = mixture.step(mixture.action_space.sample())[2]
    assert len(mixture.history) == 12 and 0 < len(mixture.main.history) < 12
    assert env.history == []  # the real env never played


def test_an_unwritable_experience_folder_is_one_clear_error(tmp_path: Path):
    from modeltailor.errors import ConfigError
    from modeltailor.experiments.search.experience import check_writable

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"search.experience: '.*a-file/sub/x.jsonl' cannot be written"):
        check_writable(blocker / "sub" / "x.jsonl")
    check_writable(tmp_path / "fine" / "x.jsonl")  # created when missing
    assert (tmp_path / "fine").is_dir()


class KeptChannelsModel:
    """A stand-in latency model: the mean keep ratio asked about, in ms (so any policy's is known)."""

    def predict(self, keep, ranks=None) -> float:
        return float(np.mean(list(keep.values())))


def test_the_searched_device_latency_is_the_limiters_calibrated_model(model):  # noqa: F811
    """On the searched device the surrogate's latency is what the limiter's model (fitted on that
    device's own measurements) predicts, in the evaluator the agent plays and in the ranking;
    without a latency model, or with int8 chosen per unit (which it ignores), the regressor's."""
    analysis, _ = model
    names = [u.name for u in analysis.units]
    limiter = BudgetLimiter(Budget(max_latency_ms=1.0), predictor=KeptChannelsModel())  # type: ignore[arg-type]
    env = make_env(model, ("prune",), modelled=True, limiter=limiter)
    latency = device_latency(env)
    assert latency is not None and latency(Policy.uniform(names, 0.5)) == pytest.approx(0.5)
    floor = TighteningLimiter(limiter, lambda _out: True)
    assert device_latency(make_env(model, ("prune",), modelled=True, limiter=floor)) is not None
    assert device_latency(make_env(model, ("prune",), modelled=True)) is None  # no budget: no model
    assert device_latency(make_env(model, ("prune", "int8"), modelled=True, limiter=limiter)) is None

    rng = np.random.default_rng(0)
    policies = [random_policy(analysis.units, rng) for _ in range(12)]
    baseline = Resources(0.95, 0.2, 2000)
    samples = [sample_of(p, 0.9, 0.1 + 0.01 * i, 1000, baseline, None, "cpu-1t") for i, p in enumerate(policies)]
    surrogate = fit_surrogate(samples, PolicyEncoder(analysis, num_classes=4, round_to=1), kind="trees", seed=0)
    plain = SurrogateEvaluator(surrogate, baseline, None, "cpu-2t", analysis)
    calibrated = replace(plain, latency=latency, _memo={})
    for p in policies[:3]:
        assert calibrated(p).latency_ms == pytest.approx(np.mean(list(p.keep_ratios().values())))
        assert calibrated(p).accuracy == plain(p).accuracy and plain(p).latency_ms != calibrated(p).latency_ms
    # the ranking judges the budget by the same latencies: a budget only the mildest policy misses
    budget = BudgetReward(max_latency_ms=max(latency(p) for p in policies) - 1e-6)
    ranked = rank_encoded(surrogate, surrogate.encoder.encode_all(policies, None), policies, "cpu-2t", baseline,
                          budget, 0.0, latency)
    mildest = max(policies, key=latency)
    assert ranked[-1][1] is mildest and ranked[-1][0] < ranked[0][0]


def test_under_a_floor_the_surrogate_plays_a_lower_bound_of_accuracy(model, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """accuracy_shift -1: each accuracy the evaluator gives is its prediction less one standard
    deviation; the search sets it only under an accuracy floor (`floor_pessimism`)."""
    analysis, _ = model
    rng = np.random.default_rng(1)
    policies = [random_policy(analysis.units, rng) for _ in range(16)]
    baseline = Resources(0.95, 0.2, 2000)
    samples = [sample_of(p, float(rng.uniform(0.5, 0.95)), 0.1, 1000, baseline, None, "cpu-1t") for p in policies]
    surrogate = fit_surrogate(samples, PolicyEncoder(analysis, num_classes=4, round_to=1), kind="trees", seed=0)
    mean = SurrogateEvaluator(surrogate, baseline, None, "cpu-1t", analysis)
    lower = replace(mean, accuracy_shift=-1.0, _memo={})
    fresh = random_policy(analysis.units, rng)
    std = float(surrogate.predict([fresh], None, "cpu-1t", baseline).accuracy_std[0])
    assert std > 0 and lower(fresh).accuracy == pytest.approx(mean(fresh).accuracy - std)

    shifts: list[float] = []
    original = SurrogateEvaluator.__call__

    def spy(self: SurrogateEvaluator, policy: Policy):  # type: ignore[no-untyped-def]
        shifts.append(self.accuracy_shift)
        return original(self, policy)

    monkeypatch.setattr(SurrogateEvaluator, "__call__", spy)
    for reward, expected in ((AccuracyFloorReward(min_accuracy=0.9), -1.0), (BudgetReward(max_latency_ms=1.0), 0.0)):
        shifts.clear()
        env = make_env(model, ("prune",), modelled=True)
        env.reward_fn = reward
        SurrogateSearcher(seed=0, settings=FAST, ppo=PPOSettings(hidden=16)).search(env, 10)
        assert shifts and set(shifts) == {expected}, (reward, set(shifts))
