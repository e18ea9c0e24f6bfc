"""Searchers: PPO (stable-baselines3) and baselines, all behind the `Searcher` protocol."""

from modeltailor.agent.base import Searcher
from modeltailor.agent.baselines import RandomSearcher, UniformSearcher
from modeltailor.agent.ppo import PPOSearcher, PPOSettings
from modeltailor.results import SearchResult

SEARCHERS: tuple[str, ...] = ("ppo", "random", "uniform")


def make_searcher(name: str, seed: int = 0) -> Searcher:
    """A searcher by name (`ppo`, `random`, `uniform`); the config layer validates `name`."""
    if name == "ppo":
        return PPOSearcher(seed=seed)
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
