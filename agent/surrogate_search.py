"""Surrogate-assisted search: the agent learns on the surrogate, real episodes verify (Dyna-style).

A real episode costs seconds, so a search cannot afford the thousands an agent needs to learn.
Here the proposer (PPO, or aging evolution for the rival recipe of Once-for-All) learns on a
sibling of the real env whose evaluator is the surrogate (`env/surrogate.py`), fitted on the
experience: every real episode of earlier searches of the same model and data, plus this one's.
The search then repeats, until the real-episode budget is spent:

1. the proposer plays `round_episodes` surrogate episodes (PPO learns from them), and
   `design_candidates` fresh genomes of a space-filling design are played beside it; the PPO
   search also plays `local_candidates` mutations of the best models measured for real so far
   (candidates around the incumbent, as BANANAS optimizes its acquisition by mutation), and
   takes `allocation_candidates` of greedy search's allocations computed from the surrogate's
   predicted per-unit sensitivities (what greedy measures with one real probe per unit and ratio);
2. every distinct model played so far (the archives) is ranked by the current surrogate's
   predicted reward (an upper confidence bound: accuracy plus `optimism` standard deviations), and
   the best one not measured yet is evaluated for real on the real env (so it lands in the
   episode records, the experience, MLflow, and the budget limiter's cost models); `notes`
   counts whether the agent, the design or the incumbent's mutations played it;
3. the surrogate is refitted with it.

Before the first round the proposer trains for `pretrain_episodes`. With too little experience to
fit on (fewer than `seed_episodes` samples of this model, data and recovery),
a designed set of seed episodes (a Latin hypercube over the overall compression level and each
unit's deviation from it: mild to aggressive, every unit covered) is measured first, out of the
episode budget.

A warm start (another search's agent checkpoint) must never make the search worse than a cold
one. The warm agent has learned already, so it trains only `warm_pretrain_episodes` on this
deployment's surrogate. Its first `warm_trial` proposals alternate with as many from a rival that
costs no training: a space-filling design played on the surrogate and ranked by it (what the
search would measure with no agent at all). If the rival's proposals measure the better reward,
the warm start falls back: a cold agent trains (`pretrain_episodes`) and goes on; within
`warm_margin` (the noise of one episode's score) it is a tie, and the warm one goes on. `notes` says what was decided. (Pretraining a cold agent beside every warm one,
as before, cost as much surrogate time as the real episodes a warm start saves.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from stable_baselines3.common.logger import Logger

from modeltailor.agent.base import learn_episodes, run_episode
from modeltailor.agent.evolution import EvolutionSearcher, mutate, realized_genome
from modeltailor.agent.greedy import Allocations, probe_plan, probe_policy
from modeltailor.agent.ppo import (
    PPOSearcher,
    PPOSettings,
    Stats,
    StatsWriter,
    restore_checkpoint,
    save_checkpoint,
)
from modeltailor.compressors.policy import Policy
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.features import DeploymentContext
from modeltailor.env.history import search_result
from modeltailor.env.limiter import ActionLimiter, Budget, BudgetLimiter, NoLimit, TighteningLimiter
from modeltailor.env.records import EpisodeRecord, SearchResult
from modeltailor.env.reward import AccuracyFloorReward, BudgetReward, Resources, RewardFunction
from modeltailor.env.surrogate import (
    LatencyFn,
    PolicyEncoder,
    Sample,
    Surrogate,
    SurrogateEvaluator,
    fit_surrogate,
    rank_encoded,
    sample_of,
)

log = logging.getLogger(__name__)

PROPOSERS: tuple[str, ...] = ("ppo", "evolution")
OTHER_SOURCES: tuple[str, ...] = ("design", "local", "allocation")
"""Candidate sources beside the agent, counted apart in `notes["proposals"]`."""
MUTATION, SIGMA = EvolutionSearcher.mutation, EvolutionSearcher.sigma
"""The local candidates' mutation: each unit's action with this probability (at least one unit),
half resampled, half perturbed by N(0, SIGMA): evolution's own operator and defaults."""


@dataclass(frozen=True)
class SurrogateSettings:
    seed_episodes: int = 8
    """Samples the surrogate needs before it is trusted: seed episodes make up the shortfall."""
    pretrain_episodes: int = 600
    """Surrogate episodes the proposer plays before its first real proposal."""
    warm_pretrain_episodes: int = 150
    """The same for a warm-started agent, which learned on earlier deployments already."""
    round_episodes: int = 60
    """Surrogate episodes between two real episodes."""
    select_every: int = 12
    """Real episodes between two choices of the regressor kind (by cross-validated Kendall tau)."""
    warm_trial: int = 2
    """Real episodes each for the warm agent and the design rival before the warm agent goes on or
    falls back to a cold one."""
    warm_margin: float | None = None
    """The warm agent falls back only when the design's best real reward beats its own by more than
    this; None: one binomial standard error of an episode's accuracy at the design's best, on the
    images episodes are scored on (96% on 136 images: 1.7 points; on 360: 1.0). Within it the two
    are a tie, and a tie keeps the warm agent."""
    rollout_episodes: int = 16
    """PPO episodes per update on the surrogate (episodes are cheap there: larger, steadier batches
    than the real-episode PPO's `episodes_per_rollout`)."""
    minibatch_episodes: int = 4
    """Surrogate episodes per PPO gradient step: a quarter of a rollout, so an update is 4 minibatches
    x n_epochs steps (one episode per step made an update 16 x 10 steps; on CPU the time goes to
    the steps' overhead, not their size)."""
    design_candidates: int = 30
    """Fresh genomes of a space-filling design played on the surrogate each round beside the PPO
    agent's episodes: their models are ranked with the agent's, so a real episode goes to whichever
    the surrogate rates best (0: the agent's alone). Surrogate-ranked designs are strong at small
    budgets (predictor-guided random search, as BANANAS found); the agent has to beat them to be
    measured, and `notes["proposals"]` counts who won."""
    local_candidates: int = 30
    """The PPO search's third source of candidates: mutations of the `local_parents` best models
    measured for real so far, played on the surrogate each round and ranked with the agent's and
    the design's (0: none). The agent and the design explore; these refine what the real episodes
    found best, where the surrogate is most trustworthy. Evolution on the surrogate (Once-for-All's
    recipe, the rival) keeps the recipe as published: its proposer mutates its own population."""
    allocation_candidates: int = 12
    """The PPO search's fourth source: greedy's allocations (`agent.greedy`) on the surrogate's
    sensitivities, up to this many per round (0: none). Each unit alone at `allocation_ratios` keep
    ratios (a skippable block also removed), the rest untouched, is predicted by the current
    surrogate instead of measured; from those drops, the marginal allocations (the cheapest drop per
    MAC saved until the limiter predicts the budget met) and the tolerance allocations are ranked
    with the other sources' models. What greedy search spends 36 of 48 real episodes on (CIFAR-10
    ResNet-20), the surrogate answers in milliseconds, and each real episode corrects it."""
    allocation_ratios: int = 4
    """Keep ratios each unit's predicted probes try (greedy's `probe_keeps`), mildest first."""
    local_parents: int = 4
    """How many of the best real episodes the local candidates are mutated from (round robin)."""
    local_every: int = 2
    """The local candidates join the ranking on every `local_every`-th real episode only; the others
    go to the agent's or the design's models. Ranked on every episode, they won 35-40 of 40 real
    episodes (digits ResNet-20, 30% budget), and on one seed a poor early incumbent held the whole
    search near it (87.78% after 48; without local candidates that seed reached 96.30)."""
    variants: bool = True
    """PPO learns across variants of the deployment (other budgets or floors, the class subsets in
    the experience) besides the deployment itself; see `deployment_variants`."""
    optimism: float = 1.0
    """Proposals are ranked with each predicted accuracy raised by this many standard deviations."""
    floor_pessimism: float = 1.0
    """Under an accuracy floor the agent plays the surrogate with each predicted accuracy lowered by
    this many standard deviations: it learns models the surrogate is sure clear the floor, not the
    ones it merely cannot rule out (its errors are what an optimizer against it finds first)."""
    device_latency: bool = True
    """On the searched device, latency from the limiter's calibrated model (`device_latency`);
    False: the regressor's on every device (the ablation bench/searchers.py runs as
    `ppo-regressor-latency`)."""


def score_noise(reward: float, env: CompressionEnv) -> float:
    """One binomial standard error of an episode's accuracy near `reward` (clipped into [0.5, 1)),
    on as many images as the env's evaluator scores on; 0.01 when it does not say (a modelled one)."""
    data = getattr(getattr(env, "evaluator", None), "data", None)
    images = len(getattr(data, "score_y", ()))
    if images == 0:
        return 0.01
    p = min(max(reward, 0.5), 1.0 - 1.0 / images)
    return float(np.sqrt(p * (1.0 - p) / images))


@dataclass(frozen=True)
class ExperienceView:
    """What the searcher knows about the deployment beyond its env: the earlier real episodes of
    the same model and data (as samples), and how this deployment's episodes become samples."""

    prior: tuple[Sample, ...] = ()
    classes: tuple[int, ...] | None = None
    num_classes: int = 1
    device: str = "device"
    round_to: int = 1

    def sample(self, record: EpisodeRecord, baseline: Resources) -> Sample:
        return sample_of(record.policy, record.accuracy, record.latency_ms, record.memory_bytes, baseline,
                         self.classes, self.device)


class Proposer(Protocol):
    played: int
    """Surrogate episodes played so far (a PPO agent's variants included)."""

    def learn(self, env: CompressionEnv, episodes: int) -> list[Policy]:
        """Play (and learn from) `episodes` surrogate episodes; the searched deployment's policies."""
        ...


class DeploymentMixture(gym.Env):
    """The searched deployment's surrogate env and variants of it (other budgets, floors, class
    subsets: same units and spaces) behind one env, so one agent learns across deployments: each
    reset picks the searched deployment half of the time, else a variant (seeded). `history` holds
    every episode played; `main.history` the searched deployment's alone."""

    metadata = {"render_modes": []}

    def __init__(self, main: CompressionEnv, variants: list[CompressionEnv], seed: int) -> None:
        super().__init__()
        self.main, self.variants = main, variants
        self.observation_space, self.action_space = main.observation_space, main.action_space
        self.units = main.units
        self.history: list[EpisodeRecord] = []
        self._active = main
        self._rng = np.random.default_rng([seed, 7])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        pick = self.variants and self._rng.random() >= 0.5
        self._active = self.variants[int(self._rng.integers(len(self.variants)))] if pick else self.main
        return self._active.reset(seed=seed, options=options)

    def step(self, action: np.ndarray):
        obs, reward, done, truncated, info = self._active.step(action)
        if done:
            self.history.append(self._active.history[-1])
        return obs, reward, done, truncated, info


@dataclass
class PPOProposer:
    model: Any  # stable_baselines3.PPO bound to its own mixture of surrogate envs
    played: int = 0

    def learn(self, env: CompressionEnv, episodes: int) -> list[Policy]:
        mixture = self.model.get_env().envs[0].unwrapped
        start, before = len(mixture.main.history), len(mixture.history)
        if not learn_episodes(self.model, mixture, episodes, []):
            raise KeyboardInterrupt  # Ctrl-C while learning on the surrogate stops the search
        self.played += len(mixture.history) - before
        return [r.policy for r in mixture.main.history[start:]]


@dataclass
class EvolutionProposer:
    evolution: EvolutionSearcher
    played: int = 0

    def learn(self, env: CompressionEnv, episodes: int) -> list[Policy]:
        start = len(env.history)
        if self.evolution.search(env, episodes, done=len(env.history)).interrupted:
            raise KeyboardInterrupt
        self.played += len(env.history) - start
        return [r.policy for r in env.history[start:]]


@dataclass
class DesignProposer:
    """No learning: plays fresh genomes of a space-filling design (`seed_design`) on the surrogate.
    Ranked by the surrogate like any proposer's, they are the rival a warm agent must beat."""

    seed: int
    played: int = 0

    def learn(self, env: CompressionEnv, episodes: int) -> list[Policy]:
        start = len(env.history)
        for genome in seed_design(len(env.units), _dims(env), episodes, self.seed + self.played):
            run_episode(env, _player(genome))
        self.played += len(env.history) - start
        return [r.policy for r in env.history[start:]]


@dataclass
class LocalProposer:
    """No learning: mutations (evolution's operator and rates) of the `parents` best models the
    real env has measured so far, played on the surrogate; nothing before the first real episode."""

    real: CompressionEnv
    seed: int
    parents: int = 4
    played: int = 0

    def learn(self, env: CompressionEnv, episodes: int) -> list[Policy]:
        best = sorted((r for r in self.real.history if r.failure is None), key=lambda r: -r.reward)[: self.parents]
        if not best:
            return []
        genomes = [realized_genome(self.real, r.policy) for r in best]
        rng = np.random.default_rng([self.seed, 11, self.played])
        start = len(env.history)
        for i in range(episodes):
            run_episode(env, _player(mutate(genomes[i % len(genomes)], rng, MUTATION, SIGMA)))
        self.played += len(env.history) - start
        return [r.policy for r in env.history[start:]]


@dataclass
class AllocationProposer:
    """No learning: greedy's allocations from the surrogate's predicted probes (see
    `SurrogateSettings.allocation_candidates`); the probes are predicted, never played."""

    ratios: int = 4
    played: int = 0

    def learn(self, env: CompressionEnv, episodes: int) -> list[Policy]:
        plan = probe_plan(env, len(env.units) * (self.ratios + 1), self.ratios)
        accuracy = {probe: env.evaluator(probe_policy(env, probe)).accuracy for probe in plan}
        policies: list[Policy] = []
        for policy in Allocations(env, episodes).candidates(accuracy):
            if policy not in policies:
                policies.append(policy)
            if len(policies) >= episodes:
                break
        self.played += len(policies)
        return policies


@dataclass
class Archive:
    """Every distinct model a proposer has played on the surrogate, with its encoding, oldest first
    (the oldest dropped beyond `limit`): the candidates real episodes are spent on."""

    limit: int = 4000
    policies: list[Policy] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    encoded: list[np.ndarray] = field(default_factory=list)

    def add(self, policies: list[Policy], encoder: PolicyEncoder, classes: tuple[int, ...] | None) -> None:
        known = set(self.keys)
        for policy in policies:
            row = encoder.encode(policy, classes)
            key = row.round(6).tobytes()
            if key not in known:
                known.add(key)
                self.policies.append(policy)
                self.keys.append(key)
                self.encoded.append(row)
        if len(self.keys) > self.limit:
            cut = len(self.keys) - self.limit
            del self.policies[:cut], self.keys[:cut], self.encoded[:cut]

    def rows(self, indices: list[int]) -> np.ndarray:
        return np.array([self.encoded[i] for i in indices])


@dataclass
class _Agent:
    """A proposer with its own surrogate env (SB3 keeps per-env episode state), the models it
    played there, and its real results."""

    label: str
    proposer: Proposer
    env: CompressionEnv
    model: Any = None
    rewards: list[float] = field(default_factory=list)
    archive: Archive = field(default_factory=Archive)


@dataclass
class SurrogateSearcher:
    """Dyna-style search on the surrogate with real verification (see the module doc)."""

    proposer: str = "ppo"
    seed: int = 0
    settings: SurrogateSettings = field(default_factory=SurrogateSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    experience: ExperienceView | None = None
    checkpoint: Path | None = None
    warm_start: Path | None = None
    report: Callable[[str], None] = log.info
    stats: Stats | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or ("ppo" if self.proposer == "ppo" else f"{self.proposer}-surrogate")

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        start = len(env.history)
        if episodes <= 0:
            return search_result(self.name, [])
        view = self.experience or ExperienceView(num_classes=1)
        encoder = PolicyEncoder(env.analysis, view.num_classes, view.round_to)
        self.notes = {"proposer": self.proposer, "prior_samples": len(view.prior), "seed_episodes": 0,
                      "surrogate_episodes": 0, "agent_from": "cold", "deployment_variants": 0}
        try:
            seeds = self._seed(env, view, episodes)
            if len(env.history) - start >= episodes and (self.proposer != "ppo" or self.checkpoint is None):
                return self._result(env, start, False)
            # a search spent on seed episodes still leaves an agent (trained on what they taught
            # the surrogate) for the next deployment to start from
            surrogate = self._fit(env, view, encoder, None)
            floor = isinstance(env.reward_fn, AccuracyFloorReward)
            evaluator = SurrogateEvaluator(
                surrogate, env.baseline, view.classes, view.device, env.analysis, view.round_to,
                latency=self._latency(env),
                accuracy_shift=-self.settings.floor_pessimism if floor else 0.0,
            )
            variants = deployment_variants(env, view) if self.proposer == "ppo" and self.settings.variants else []
            evaluators = [evaluator, *(replace(evaluator, classes=v.classes, _memo={}) for v in variants)]
            self.notes["deployment_variants"] = len(variants)
            agents = self._agents(env, evaluators, variants, done)
            for agent in agents:
                agent.archive.add(self._train(agent, self._pretrain(agent)), encoder, view.classes)
            self.report(
                f"surrogate: fitted on {len(surrogate.samples)} real episodes ({surrogate.kind}"
                f"{_scores(surrogate)}); the {agents[0].label} agent trained on {self._pretrain(agents[0])} "
                f"surrogate episodes{' (a space-filling design is its rival for the first proposals)' if len(agents) > 1 else ''}"
            )
            self._save(agents[0], env)
            measured = {_key(encoder, r.policy, view.classes) for r in env.history if r.failure is None}
            real = seeds
            design = agents[-1] if len(agents) > 1 else self._design(env, evaluators)
            local = self._local(env, evaluators)
            allocate = self._allocations(env, evaluators)
            self.notes["proposals"] = {"agent": 0, "design": 0, **({"local": 0} if local else {}),
                                       **({"allocation": 0} if allocate else {})}
            while len(env.history) - start < episodes:
                # the warm check alternates the two sources; after it, all feed one ranking (the local
                # candidates every `local_every`-th real episode)
                refine = local if real % max(self.settings.local_every, 1) == 0 else []
                sources = [agents[real % len(agents)]] if len(agents) > 1 else [agents[0], design, *refine, *allocate]
                policy, predicted, agent = self._propose(sources, evaluator, measured, env)
                record = env.evaluate(policy)
                measured.add(_key(encoder, record.policy, view.classes))
                agent.rewards.append(record.reward)
                self.notes["proposals"][agent.label if agent.label in OTHER_SOURCES else "agent"] += 1
                real += 1
                self._log_round(real, predicted, record, surrogate)
                reselect = real % self.settings.select_every == 0
                surrogate = self._fit(env, view, encoder, None if reselect else surrogate.kind)
                for each in evaluators:
                    each.surrogate = surrogate
                if reselect:
                    self.report(
                        f"surrogate: {len(env.history) - start} of {episodes} real episodes, "
                        f"{self.notes['surrogate_episodes']} surrogate episodes; refitted on {len(surrogate.samples)} "
                        f"({surrogate.kind}{_scores(surrogate)})"
                    )
                if len(agents) > 1 and all(len(a.rewards) >= self.settings.warm_trial for a in agents):
                    agents = [self._decide(agents, env, evaluators, variants, encoder, view)]
                self._save(agents[0], env)
        except KeyboardInterrupt:
            return self._result(env, start, True)
        return self._result(env, start, False)

    # --- the steps ----------------------------------------------------------------------------
    def _seed(self, env: CompressionEnv, view: ExperienceView, episodes: int) -> int:
        """Measure the seed episodes the experience lacks (out of the budget); how many. Where the
        regressor predicts this device's latency (no calibrated limiter model: `device_latency`),
        experience from other devices is not enough: half the seed episodes are measured here."""
        own = [r for r in env.history if r.failure is None]
        on_device = sum(1 for s in view.prior if s.device == view.device) + len(own)
        total = len(view.prior) + len(own)
        wanted = max(self.settings.seed_episodes - total, 0)
        short_here = self._latency(env) is None and on_device < self.settings.seed_episodes // 2
        if short_here:
            wanted = max(wanted, self.settings.seed_episodes // 2 - on_device)
        wanted = min(wanted, episodes)
        if wanted <= 0:
            return 0
        why = " (the latency on this device is the regressor's, from episodes measured here)" if short_here else ""
        self.report(
            f"experience: {len(view.prior)} earlier real episodes of this model and data ({on_device} on this "
            f"device): measuring {wanted} seed episodes (a space-filling design, out of the {episodes}-episode budget){why}"
        )
        for genome in seed_design(len(env.units), _dims(env), wanted, self.seed + len(own)):
            run_episode(env, _player(genome))
        self.notes["seed_episodes"] = wanted
        return wanted

    def _latency(self, env: CompressionEnv) -> LatencyFn | None:
        return device_latency(env) if self.settings.device_latency else None

    def _fit(self, env: CompressionEnv, view: ExperienceView, encoder: PolicyEncoder, kind: str | None) -> Surrogate:
        own = [view.sample(r, env.baseline) for r in env.history if r.failure is None]
        surrogate = fit_surrogate([*view.prior, *own], encoder, kind=kind, seed=self.seed)
        if surrogate.scores:
            self.notes["predictor"] = {"kind": surrogate.kind, "samples": len(surrogate.samples),
                                       "cv_kendall_tau": {k: round(v, 4) for k, v in surrogate.scores.items()}}
        return surrogate

    def _agents(
        self, env: CompressionEnv, evaluators: list[SurrogateEvaluator], variants: list[Variant], done: int
    ) -> list[_Agent]:
        if self.proposer == "evolution":
            sibling = env.sibling(evaluators[0])
            return [_Agent("evolution", EvolutionProposer(EvolutionSearcher(seed=self.seed)), sibling)]
        settings = self._ppo_settings()
        if self.warm_start is not None and done == 0:
            warm_env = self._mixture(env, evaluators, variants, 1)
            warm = PPOSearcher(seed=self.seed, settings=settings, warm_start=self.warm_start).start(env, 0)
            warm.set_env(warm_env)
            return [self._logged(_Agent("warm", PPOProposer(warm), warm_env.main, warm), env),
                    self._design(env, evaluators)]
        cold = self._cold(env, evaluators, variants, done)
        if done > 0 and self.checkpoint is not None and self.checkpoint.is_file():
            restore_checkpoint(self.checkpoint, cold.model, env)
            self.notes["agent_from"] = "resumed"
            cold.label = "resumed"
        return [cold]

    def _cold(self, env: CompressionEnv, evaluators: list[SurrogateEvaluator], variants: list[Variant],
              done: int) -> _Agent:
        """A fresh PPO agent on its own mixture of surrogate envs."""
        mixture = self._mixture(env, evaluators, variants, 0)
        ppo = PPOSearcher(seed=self.seed, settings=self._ppo_settings(), checkpoint=self.checkpoint)
        model = ppo.build(mixture, seed=self.seed + done)  # type: ignore[arg-type]
        return self._logged(_Agent("cold", PPOProposer(model), mixture.main, model), env)

    def _logged(self, agent: _Agent, env: CompressionEnv) -> _Agent:
        if self.stats is not None:  # PPO's training statistics, stepped by the real episodes so far
            agent.model.set_logger(Logger(folder=None, output_formats=[StatsWriter(self.stats, env)]))
        return agent

    def _pretrain(self, agent: _Agent) -> int:
        if agent.label == "design":
            return 0
        return self.settings.warm_pretrain_episodes if agent.label == "warm" else self.settings.pretrain_episodes

    def _mixture(self, env: CompressionEnv, evaluators: list[SurrogateEvaluator], variants: list[Variant],
                 salt: int) -> DeploymentMixture:
        """The searched deployment's surrogate env and its variants', each on its own evaluator."""
        main, *others = evaluators
        envs = [env.sibling(e, v.reward, v.limiter, v.context) for e, v in zip(others, variants, strict=True)]
        return DeploymentMixture(env.sibling(main), envs, self.seed + salt)

    def _train(self, agent: _Agent, episodes: int) -> list[Policy]:
        before = agent.proposer.played
        policies = agent.proposer.learn(agent.env, episodes)
        self.notes["surrogate_episodes"] += agent.proposer.played - before
        return policies

    def _propose(
        self, sources: list[_Agent], evaluator: SurrogateEvaluator, measured: set[bytes], env: CompressionEnv
    ) -> tuple[Policy, float, _Agent]:
        """Each source plays a round on the surrogate (the agent `round_episodes`, the design
        `design_candidates` fresh genomes); every distinct model they have played so far (their
        archives) is ranked by the current surrogate's predicted reward, and the best one not yet
        measured is proposed, with the source that played it (up to three rounds of play to find
        one; else the best)."""
        surrogate = evaluator.surrogate
        for _ in range(3):
            for source in sources:
                played = self._train(source, self._round(source))
                source.archive.add(played, surrogate.encoder, evaluator.classes)
            pool = [(s, i) for s in sources for i, key in enumerate(s.archive.keys) if key not in measured]
            if pool:
                break
        pool = pool or [(s, i) for s in sources for i in range(len(s.archive.keys))]
        rows = np.array([s.archive.encoded[i] for s, i in pool])
        policies = [s.archive.policies[i] for s, i in pool]
        ranked = rank_encoded(surrogate, rows, policies, evaluator.device, env.baseline, env.reward_fn,
                              self.settings.optimism, evaluator.latency)
        predicted, best = ranked[0]
        source = next(s for s, i in pool if s.archive.policies[i] is best)
        return best, predicted, source

    def _round(self, source: _Agent) -> int:
        """Models per round: a source's `<label>_candidates`, the agent's `round_episodes`."""
        if source.label in OTHER_SOURCES:
            return int(getattr(self.settings, f"{source.label}_candidates"))
        return self.settings.round_episodes

    def _local(self, env: CompressionEnv, evaluators: list[SurrogateEvaluator]) -> list[_Agent]:
        """The PPO search's mutations of its best real episodes, on the searched deployment's
        surrogate (none for evolution, or with `local_candidates` 0)."""
        if self.proposer != "ppo" or self.settings.local_candidates <= 0:
            return []
        proposer = LocalProposer(env, self.seed, self.settings.local_parents)
        return [_Agent("local", proposer, env.sibling(evaluators[0]))]

    def _allocations(self, env: CompressionEnv, evaluators: list[SurrogateEvaluator]) -> list[_Agent]:
        """The PPO search's greedy allocations on the surrogate (none for evolution, or with
        `allocation_candidates` 0)."""
        if self.proposer != "ppo" or self.settings.allocation_candidates <= 0:
            return []
        proposer = AllocationProposer(self.settings.allocation_ratios)
        return [_Agent("allocation", proposer, env.sibling(evaluators[0]))]

    def _design(self, env: CompressionEnv, evaluators: list[SurrogateEvaluator]) -> _Agent:
        """The space-filling design on the searched deployment's surrogate: a warm agent's rival
        and, beside any agent, a source of candidates that owes nothing to what the agent learned."""
        return _Agent("design", DesignProposer(self.seed), env.sibling(evaluators[0]))

    def _decide(self, agents: list[_Agent], env: CompressionEnv, evaluators: list[SurrogateEvaluator],
                variants: list[Variant], encoder: PolicyEncoder, view: ExperienceView) -> _Agent:
        """The warm agent goes on unless the design's proposals measured better; then a cold agent
        trains and goes on, starting from every model the two played."""
        warm, rival = agents
        margin = self.settings.warm_margin
        if margin is None:
            margin = score_noise(max(rival.rewards), env)
        keep = max(warm.rewards) >= max(rival.rewards) - margin
        self.notes["agent_from"] = "warm" if keep else "cold (the warm start fell back)"
        self.notes["warm_check"] = {"warm_best_reward": max(warm.rewards), "design_best_reward": max(rival.rewards),
                                    "margin": margin, "episodes_each": len(warm.rewards),
                                    "kept": "warm" if keep else "cold"}
        self.report(
            f"warm start check: the warm agent's best of {len(warm.rewards)} real episodes {max(warm.rewards):.4f}, "
            f"the space-filling design's {max(rival.rewards):.4f} (a tie within {margin:.4f}): "
            + ("going on with the warm agent" if keep else
               f"falling back to a cold agent ({self.settings.pretrain_episodes} surrogate episodes)")
        )
        if keep:
            return warm
        cold = self._cold(env, evaluators, variants, 0)
        cold.rewards = list(warm.rewards)
        cold.archive = warm.archive
        cold.archive.add(self._train(cold, self.settings.pretrain_episodes), encoder, view.classes)
        return cold

    def _log_round(self, real: int, predicted: float, record: EpisodeRecord, surrogate: Surrogate) -> None:
        if self.stats is not None:
            self.stats({"surrogate/predicted_reward": predicted, "surrogate/real_reward": record.reward,
                        "surrogate/episodes": float(self.notes["surrogate_episodes"])}, real)

    def _save(self, agent: _Agent, env: CompressionEnv) -> None:
        if self.checkpoint is not None and agent.model is not None and agent.label != "design":
            save_checkpoint(self.checkpoint, agent.model, env,
                            self._ppo_settings())

    def _ppo_settings(self) -> PPOSettings:
        """PPO's settings on the surrogate: larger rollouts and minibatches than on real episodes."""
        return replace(self.ppo, episodes_per_rollout=self.settings.rollout_episodes,
                       minibatch_episodes=self.settings.minibatch_episodes)

    def _result(self, env: CompressionEnv, start: int, interrupted: bool) -> SearchResult:
        self.notes["real_episodes"] = len(env.history) - start
        result = search_result(self.name, env.history[start:], interrupted=interrupted)
        result.notes = dict(self.notes)
        return result


@dataclass(frozen=True)
class Variant:
    """A deployment near the searched one, on the same units: its classes, reward, limits and what
    the agent observes of it."""

    classes: tuple[int, ...] | None
    reward: RewardFunction
    limiter: ActionLimiter
    context: DeploymentContext


BUDGET_FACTORS = (0.7, 0.85, 1.2, 1.4)
FLOOR_SHIFTS = (-0.01, 0.01, 0.02)
"""Variants of a budget (its limits times each factor) and of an accuracy floor (moved by each
shift); a tradeoff's weights are not observed, so it has no such variants."""
MAX_SUBSETS = 3


def deployment_variants(env: CompressionEnv, view: ExperienceView) -> list[Variant]:
    """Deployments near the searched one for the agent to learn across: its budget tighter and
    looser (or its accuracy floor moved), and the other class subsets the experience has seen
    (up to `MAX_SUBSETS`, most measured first) under its own objective. Variants share the searched
    deployment's baseline and device; their observations say what differs."""
    reward, limiter, context = env.reward_fn, env.limiter, env.context
    variants = []
    if isinstance(reward, BudgetReward):
        for f in BUDGET_FACTORS:
            scaled = Budget(*(None if v is None else v * f for v in (reward.max_latency_ms, reward.max_memory_bytes)))
            cap: ActionLimiter = NoLimit()
            if isinstance(limiter, BudgetLimiter):
                cap = BudgetLimiter(scaled, limiter.latency_model, limiter.memory_model, limiter.safety, limiter.predictor)
            variants.append(Variant(view.classes, replace(reward, max_latency_ms=scaled.max_latency_ms,
                                                          max_memory_bytes=scaled.max_memory_bytes), cap,
                                    replace(context, latency_ratio=context.latency_ratio * f,
                                            memory_ratio=context.memory_ratio * f)))
    elif isinstance(reward, AccuracyFloorReward):
        for shift in FLOOR_SHIFTS:
            variants.append(Variant(view.classes, replace(reward, min_accuracy=reward.min_accuracy + shift), limiter,
                                    replace(context, accuracy_drop_points=max(0.0, context.accuracy_drop_points
                                                                              - 100 * shift))))
    counts: dict[tuple[int, ...] | None, int] = {}
    for sample in view.prior:
        if sample.classes != view.classes:
            counts[sample.classes] = counts.get(sample.classes, 0) + 1
    for classes in sorted(counts, key=lambda c: -counts[c])[:MAX_SUBSETS]:
        fraction = len(classes) / max(view.num_classes, 1) if classes else 1.0
        variants.append(Variant(classes, reward, limiter, replace(context, class_fraction=fraction)))
    return variants


def device_latency(env: CompressionEnv) -> LatencyFn | None:
    """The latency the env's limiter predicts for a policy on the searched device (its model is
    calibrated on that device and refitted on every real episode; see `env.surrogate`), or None
    where the limiter has no latency model or the agent picks int8 per unit (the model ignores
    bits): the surrogate's regressor then."""
    limiter = env.limiter.inner if isinstance(env.limiter, TighteningLimiter) else env.limiter
    if not isinstance(limiter, BudgetLimiter) or limiter.predictor is None or env.int8:
        return None
    return lambda policy: limiter.predicted_latency(env.analysis, policy.keep_ratios(), policy.lowrank_ratios())


def seed_design(units: int, dims: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` genomes (units x dims actions in [-1, 1]) from a Latin hypercube: one column sets the
    overall level (spread evenly from mild to aggressive), one per unit its deviation from it; with
    more action dimensions, the method selector and int8 flag of each unit are drawn too."""
    from scipy.stats import qmc

    columns = 1 + units * dims
    design = qmc.LatinHypercube(d=columns, seed=seed).random(count) * 2.0 - 1.0
    genomes = []
    for row in design:
        genome = np.zeros((units, dims), dtype=np.float32)
        genome[:, 0] = np.clip(row[0] + 0.5 * row[1 : 1 + units], -1.0, 1.0)
        if dims > 1:
            genome[:, 1:] = np.where(row[1 + units :].reshape(units, dims - 1) > 0.4, 0.5, -0.5)
        genomes.append(genome)
    return genomes


def _player(genome: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    """Plays `genome`: its row for each step."""
    return lambda _obs, step: genome[step]


def _key(encoder: PolicyEncoder, policy: Policy, classes: tuple[int, ...] | None) -> bytes:
    return encoder.encode(policy, classes).round(6).tobytes()


def _dims(env: CompressionEnv) -> int:
    shape = env.action_space.shape
    assert shape is not None
    return int(shape[0])


def _scores(surrogate: Surrogate) -> str:
    if not surrogate.scores:
        return ""
    return ", cross-validated Kendall tau " + ", ".join(f"{k} {v:.2f}" for k, v in surrogate.scores.items())
