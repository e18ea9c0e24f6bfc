"""Baseline searchers on the same env, action space and budget as PPO: random and uniform.

Both emit actions of the env's full shape: with more methods than pruning the action is
(amount, method selector, int8 flag), and a baseline that only moved the amount would search a
smaller space than PPO does. Both resume: given ``done`` finished episodes, they play exactly the
episodes an uninterrupted search would have played next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from modeltailor.agent.base import SearchResult, run_episode, search_loop
from modeltailor.env.compression_env import CompressionEnv

OFF, ON = -1.0, 1.0  # a selector or flag dimension: <= 0 is off, > 0 is on


@dataclass
class RandomSearcher:
    """Independent uniform random action per unit, drawn from the env's whole action space."""

    seed: int = 0
    name: str = "random"

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        # a seeded copy: the same draws as seeding the env's space, without reseeding the env's own
        space = copy.deepcopy(env.action_space)
        space.seed(self.seed)
        for _ in range(done * len(env.units)):  # the draws of the episodes done: one per unit each
            space.sample()

        def draw(_obs: np.ndarray, _step: int) -> np.ndarray:
            return space.sample()

        return search_loop(self.name, env, episodes, lambda _i: run_episode(env, draw))


@dataclass
class UniformSearcher:
    """One action for every unit of an episode: the amount swept from mild to aggressive over the
    episodes while the modes the space offers (prune or low-rank, float or int8) take turns."""

    name: str = "uniform"

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        sweep = uniform_sweep(env, done + episodes)[done:]
        return search_loop(self.name, env, episodes, lambda i: run_episode(env, lambda _o, _s: sweep[i]))


def uniform_sweep(env: CompressionEnv, episodes: int) -> list[np.ndarray]:
    """Episode i's action: amount ``linspace(1, -1)[i]`` with mode ``i % modes``."""
    modes = offered_modes(env)
    amounts = np.linspace(1.0, -1.0, num=max(episodes, 1))
    return [np.array([amounts[i], *modes[i % len(modes)]], dtype=np.float32) for i in range(episodes)]


def offered_modes(env: CompressionEnv) -> list[tuple[float, ...]]:
    """The (method selector, int8 flag) settings that change something, in a fixed order: prune
    float, low-rank float, prune int8, low-rank int8; ``()`` when the action is the amount alone."""
    if env.action_space.shape == (1,):
        return [()]
    selectors = [OFF, ON] if env.lowrank_units else [OFF]
    flags = [OFF, ON] if env.int8 else [OFF]
    return [(selector, flag) for flag in flags for selector in selectors]
