"""Searchers behind the `Searcher` protocol: PPO and DDPG (stable-baselines3), and baselines:
random, uniform, greedy (per-unit sensitivity) and evolution (aging evolution)."""

from pathlib import Path
from typing import Any

from modeltailor.agent.base import Searcher
from modeltailor.agent.baselines import RandomSearcher, UniformSearcher
from modeltailor.agent.ddpg import DDPGSearcher, DDPGSettings
from modeltailor.agent.evolution import EvolutionSearcher
from modeltailor.agent.greedy import GreedySearcher
from modeltailor.agent.ppo import PPOSearcher, PPOSettings, Stats
from modeltailor.env.records import SearchResult

SEARCHERS: tuple[str, ...] = ("ppo", "random", "uniform", "greedy", "evolution", "ddpg")


def make_searcher(
    name: str,
    seed: int = 0,
    checkpoint: Path | None = None,
    ppo: dict[str, Any] | None = None,
    *,
    warm_start: Path | None = None,
    stats: Stats | None = None,
) -> Searcher:
    """A searcher by name (one of `SEARCHERS`); the config layer validates `name`.

    ``checkpoint``: where PPO keeps its agent checkpoint (what a resumed search continues from);
    the others ignore it (DDPG resumes with a fresh agent). ``ppo``: PPOSettings fields (the config's `search.ppo`).
    ``warm_start``: an agent checkpoint PPO starts from; ``stats``: where PPO's training statistics go.
    """
    if name == "ppo":
        return PPOSearcher(
            seed=seed, checkpoint=checkpoint, settings=PPOSettings(**(ppo or {})), warm_start=warm_start, stats=stats
        )
    if name == "random":
        return RandomSearcher(seed=seed)
    if name == "uniform":
        return UniformSearcher()
    if name == "greedy":
        return GreedySearcher(seed=seed)
    if name == "evolution":
        return EvolutionSearcher(seed=seed)
    if name == "ddpg":
        return DDPGSearcher(seed=seed)
    raise ValueError(f"unknown searcher {name!r}")


__all__ = [
    "SEARCHERS",
    "DDPGSearcher",
    "DDPGSettings",
    "EvolutionSearcher",
    "GreedySearcher",
    "PPOSearcher",
    "PPOSettings",
    "RandomSearcher",
    "SearchResult",
    "Searcher",
    "UniformSearcher",
    "make_searcher",
]
