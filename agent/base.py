"""What every searcher shares: the protocol, the result, and running one episode on the env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import EpisodeRecord, best_record, pareto_front


@dataclass
class SearchResult:
    """Every episode of a search, its Pareto set and the best record under the objective."""

    searcher: str
    episodes: list[EpisodeRecord]
    pareto: list[EpisodeRecord] = field(default_factory=list)
    best: EpisodeRecord | None = None
    interrupted: bool = False

    @classmethod
    def from_records(
        cls, searcher: str, records: list[EpisodeRecord], interrupted: bool = False
    ) -> SearchResult:
        return cls(searcher, list(records), pareto_front(records), best_record(records), interrupted)


class Searcher(Protocol):
    """Searches policies on a CompressionEnv for a fixed number of episodes."""

    name: str

    def search(self, env: CompressionEnv, episodes: int) -> SearchResult: ...


def run_episode(env: CompressionEnv, choose: Callable[[np.ndarray, int], float]) -> EpisodeRecord:
    """Play one episode, `choose(observation, step)` giving each action in [-1, 1]."""
    obs, _ = env.reset()
    step, done = 0, False
    while not done:
        action = np.array([choose(obs, step)], dtype=np.float32)
        obs, _, done, _, _ = env.step(action)
        step += 1
    return env.history[-1]


def search_loop(
    name: str, env: CompressionEnv, episodes: int, play: Callable[[int], EpisodeRecord]
) -> SearchResult:
    """Run `play(i)` for each episode; Ctrl-C keeps every finished episode."""
    start = len(env.history)
    try:
        for i in range(episodes):
            play(i)
    except KeyboardInterrupt:
        return SearchResult.from_records(name, env.history[start:], interrupted=True)
    return SearchResult.from_records(name, env.history[start:])
