"""Baseline searchers on the same env and budget as PPO: random and uniform keep ratios."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeltailor.agent.base import SearchResult, run_episode, search_loop
from modeltailor.env.compression_env import CompressionEnv


@dataclass
class RandomSearcher:
    """Independent uniform random action per unit."""

    seed: int = 0
    name: str = "random"

    def search(self, env: CompressionEnv, episodes: int) -> SearchResult:
        rng = np.random.default_rng(self.seed)
        return search_loop(
            self.name, env, episodes, lambda _i: run_episode(env, lambda _o, _s: rng.uniform(-1, 1))
        )


@dataclass
class UniformSearcher:
    """The same keep ratio for every unit, swept from mild to aggressive over the episodes."""

    name: str = "uniform"

    def search(self, env: CompressionEnv, episodes: int) -> SearchResult:
        actions = np.linspace(1.0, -1.0, num=max(episodes, 1))
        return search_loop(
            self.name, env, episodes, lambda i: run_episode(env, lambda _o, _s: float(actions[i]))
        )
