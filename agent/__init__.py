"""Searchers behind the `Searcher` protocol: surrogate-assisted PPO (the default) and evolution,
PPO and DDPG on real episodes (stable-baselines3), and baselines: random, uniform, greedy
(per-unit sensitivity) and evolution (aging evolution)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modeltailor.agent.base import Searcher
from modeltailor.agent.baselines import RandomSearcher, UniformSearcher
from modeltailor.agent.ddpg import DDPGSearcher, DDPGSettings
from modeltailor.agent.evolution import EvolutionSearcher
from modeltailor.agent.greedy import GreedySearcher
from modeltailor.agent.ppo import PPOSearcher, PPOSettings, Stats
from modeltailor.agent.surrogate_search import ExperienceView, SurrogateSearcher, SurrogateSettings
from modeltailor.env.records import SearchResult

SEARCHERS: tuple[str, ...] = ("ppo", "ppo-real", "evolution-surrogate", "random", "uniform", "greedy", "evolution", "ddpg")
SURROGATE_SEARCHERS: tuple[str, ...] = ("ppo", "evolution-surrogate")
"""Searchers that learn on the surrogate and spend real episodes on its best proposals."""


def make_searcher(
    name: str,
    seed: int = 0,
    checkpoint: Path | None = None,
    ppo: dict[str, Any] | None = None,
    *,
    warm_start: Path | None = None,
    stats: Stats | None = None,
    surrogate: dict[str, Any] | None = None,
    experience: ExperienceView | None = None,
    report: Callable[[str], None] | None = None,
) -> Searcher:
    """A searcher by name (one of `SEARCHERS`); the config layer validates `name`.

    ``checkpoint``: where PPO keeps its agent checkpoint (what a resumed search continues from);
    the others ignore it (DDPG resumes with a fresh agent). ``ppo``: PPOSettings fields (the config's `search.ppo`).
    ``warm_start``: an agent checkpoint PPO starts from; ``stats``: where PPO's training statistics go.
    ``surrogate``: SurrogateSettings fields (`search.surrogate`); ``experience``: the earlier real
    episodes the surrogate-assisted searchers learn from besides their own; ``report``: where they
    say what they do (seed episodes, the surrogate's fit, the warm-start check).
    """
    if name in SURROGATE_SEARCHERS:
        return SurrogateSearcher(
            proposer="ppo" if name == "ppo" else "evolution", seed=seed,
            settings=SurrogateSettings(**(surrogate or {})), ppo=PPOSettings(**(ppo or {})),
            experience=experience, checkpoint=checkpoint, warm_start=warm_start, stats=stats,
            report=report if report is not None else SurrogateSearcher.report,
        )
    if name == "ppo-real":
        return PPOSearcher(
            seed=seed, checkpoint=checkpoint, settings=PPOSettings(**(ppo or {})), warm_start=warm_start, stats=stats,
            name="ppo-real",
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
    "SURROGATE_SEARCHERS",
    "ExperienceView",
    "SurrogateSearcher",
    "SurrogateSettings",
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
