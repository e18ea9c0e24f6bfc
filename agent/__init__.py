"""Searchers: PPO (stable-baselines3) and baselines, all behind the `Searcher` protocol."""

from pathlib import Path
from typing import Any

from modeltailor.agent.base import Searcher
from modeltailor.agent.baselines import RandomSearcher, UniformSearcher
from modeltailor.agent.ppo import PPOSearcher, PPOSettings
from modeltailor.results import SearchResult

SEARCHERS: tuple[str, ...] = ("ppo", "random", "uniform")


def make_searcher(
    name: str, seed: int = 0, checkpoint: Path | None = None, ppo: dict[str, Any] | None = None
) -> Searcher:
    """A searcher by name (`ppo`, `random`, `uniform`); the config layer validates `name`.

    ``checkpoint``: where PPO keeps its agent checkpoint (what a resumed search continues from);
    the baselines have no network and ignore it. ``ppo``: PPOSettings fields (the config's `search.ppo`).
    """
    if name == "ppo":
        return PPOSearcher(seed=seed, checkpoint=checkpoint, settings=PPOSettings(**(ppo or {})))
    if name == "random":
        return RandomSearcher(seed=seed)
    if name == "uniform":
        return UniformSearcher()
    raise ValueError(f"unknown searcher {name!r}")


__all__ = [
    "SEARCHERS",
    "PPOSearcher",
    "PPOSettings",
    "RandomSearcher",
    "SearchResult",
    "Searcher",
    "UniformSearcher",
    "make_searcher",
]
