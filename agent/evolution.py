"""Regularized (aging) evolution, in the manner of Real et al. (2019) and Once-for-All's search.

A genome is one action per unit, shape ``(units, action_dims)`` in [-1, 1]: every dimension the
env's action space has (amount; with low-rank or int8 offered, also method selector and int8 flag).
The first ``population`` episodes play random genomes; after that each episode samples ``sample``
members of the population, mutates the one with the best reward (each unit's action, all its
dimensions, is mutated with probability ``mutation``, at least one unit per child: half the time
resampled uniformly, half the time perturbed by N(0, ``sigma``) and clipped) and plays the child
step by step through ``run_episode``, so the env's limiter keeps it within a budget. The child
joins the population and the *oldest* member leaves, however good it was.

The genome stored for a member is the action *as realized*, read back from its episode's policy:
the amount of the keep ratio the env recorded (which the limiter may have capped below the one
sent; a skipped block maps to the middle of the skip range), and for the selector and flag a
canonical +-0.5 for the method and bits the env chose. A child therefore departs from the policy
that was actually measured, and a population can be rebuilt from episode records alone.

Randomness comes from one generator per episode, seeded by ``(seed, episode index in the search)``.
Resume (``done`` > 0): the population is rebuilt from the last ``population`` records of
``env.history[-done:]`` and the search goes on from episode ``done``, drawing exactly what the
uninterrupted search would have drawn (the same policies, for a deterministic evaluator).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from modeltailor.agent.base import SearchResult, run_episode, search_loop
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.units import Unit
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.records import EpisodeRecord

ON, OFF = 0.5, -0.5  # canonical selector / flag genes for a realized setting (> 0 on, <= 0 off)
EDGE = 1e-6  # keeps a realized minimum keep ratio clear of a skippable unit's skip range


@dataclass(frozen=True)
class Member:
    """One member of the population: its genome, the reward it earned, and its episode."""

    genome: np.ndarray
    reward: float
    episode: int


@dataclass
class EvolutionSearcher:
    """Aging evolution over per-unit action vectors (see the module doc)."""

    seed: int = 0
    population: int = 16
    sample: int = 4
    mutation: float = 0.1
    sigma: float = 0.3
    name: str = "evolution"
    survivors: list[Member] = field(default_factory=list, init=False, repr=False)
    """The population when the last search ended, oldest first."""

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        previous = env.history[max(0, len(env.history) - done) :] if done else []
        alive: deque[Member] = deque(maxlen=self.population)
        alive.extend(member_of(env, record) for record in previous[-self.population :])
        shape = (len(env.units), _dims(env))
        self.survivors = list(alive)

        def play(i: int) -> EpisodeRecord:
            rng = np.random.default_rng([self.seed, done + i])
            if done + i < self.population or not alive:
                genome = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
            else:
                genome = mutate(select_parent(list(alive), self.sample, rng).genome, rng, self.mutation, self.sigma)
            record = run_episode(env, lambda _obs, step: genome[step])
            alive.append(member_of(env, record))  # the deque's maxlen drops the oldest
            self.survivors = list(alive)
            return record

        return search_loop(self.name, env, episodes, play)


def select_parent(population: Sequence[Member], sample: int, rng: np.random.Generator) -> Member:
    """Tournament: `sample` members drawn without replacement; the best reward wins (first on ties)."""
    drawn = rng.choice(len(population), size=min(sample, len(population)), replace=False)
    return max((population[int(i)] for i in drawn), key=lambda m: m.reward)


def mutate(genome: np.ndarray, rng: np.random.Generator, probability: float, sigma: float) -> np.ndarray:
    """A child: each unit's action (every dimension) mutated with `probability`, at least one unit."""
    child = genome.copy()
    chosen = rng.random(len(child)) < probability
    if not chosen.any():
        chosen[rng.integers(len(child))] = True
    for unit in np.flatnonzero(chosen):
        if rng.random() < 0.5:
            child[unit] = rng.uniform(-1.0, 1.0, size=child.shape[1])
        else:
            child[unit] = np.clip(child[unit] + rng.normal(0.0, sigma, size=child.shape[1]), -1.0, 1.0)
    return child.astype(np.float32)


def member_of(env: CompressionEnv, record: EpisodeRecord) -> Member:
    return Member(realized_genome(env, record.policy), record.reward, record.episode)


def realized_genome(env: CompressionEnv, policy: Policy) -> np.ndarray:
    """The genome that plays `policy` again: one action per unit, as the env realized it."""
    actions = {a.unit: a for a in policy.actions}
    dims = _dims(env)
    rows = [_realized_action(env, unit, actions.get(unit.name, UnitAction(unit.name)), dims) for unit in env.units]
    return np.array(rows, dtype=np.float32).reshape(len(env.units), dims)


def _realized_action(env: CompressionEnv, unit: Unit, action: UnitAction, dims: int) -> list[float]:
    skippable = unit.block is not None and action.method != "lowrank"
    amount = amount_for(env.range, action.keep, action.method == "skip", skippable)
    if dims == 1:
        return [amount]
    return [amount, ON if action.method == "lowrank" else OFF, ON if action.bits == 8 else OFF]


def amount_for(r: ActionRange, keep: float, skip: bool, skippable: bool) -> float:
    """The amount action that gives `keep` (or the skip, in the middle of its range)."""
    if skip:
        return -1.0 + r.skip_fraction
    a = float(np.clip(r.to_action(keep), -1.0, 1.0))
    if skippable and r.skip_fraction > 0:
        return min(1.0, max(r.skip_below + EDGE, r.skip_below + (a + 1.0) / 2.0 * (1.0 - r.skip_below)))
    return a


def _dims(env: CompressionEnv) -> int:
    shape = env.action_space.shape
    assert shape is not None
    return int(shape[0])
