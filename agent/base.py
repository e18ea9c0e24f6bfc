"""What every searcher shares: the protocol, the result, and running one episode on the env."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import search_result
from modeltailor.results import EpisodeRecord, SearchResult


class Searcher(Protocol):
    """Searches policies on a CompressionEnv for a fixed number of episodes.

    ``done`` is how many episodes an earlier, interrupted run of the same search finished (their
    records are already in ``env.history``): a resumed searcher continues from there instead of
    replaying the policies it already tried.
    """

    name: str

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult: ...


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
        return search_result(name, env.history[start:], interrupted=True)
    return search_result(name, env.history[start:])
