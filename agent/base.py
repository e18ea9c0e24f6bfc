"""What every searcher shares: the protocol, the result, and running one episode on the env."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import search_result
from modeltailor.env.records import EpisodeRecord, SearchResult


class Searcher(Protocol):
    """Searches policies on a CompressionEnv for a fixed number of episodes.

    ``done`` is how many episodes an earlier, interrupted run of the same search finished (their
    records are already in ``env.history``): a resumed searcher continues from there instead of
    replaying the policies it already tried.
    """

    name: str

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult: ...


Chooser = Callable[[np.ndarray, int], np.ndarray]
"""``choose(observation, step)``: the whole action for that step, a member of ``env.action_space``."""


def run_episode(env: CompressionEnv, choose: Chooser) -> EpisodeRecord:
    """Play one episode, `choose(observation, step)` giving each action of the env's full shape."""
    obs, _ = env.reset()
    step, done = 0, False
    while not done:
        action = np.asarray(choose(obs, step), dtype=np.float32)
        assert env.action_space.contains(action), f"action {action} outside {env.action_space}"
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


class EpisodeBudget(BaseCallback):
    """Stops a stable-baselines3 learner once the env has recorded `episodes` more episodes."""

    def __init__(self, env: CompressionEnv, episodes: int) -> None:
        super().__init__()
        self.env, self.target = env, len(env.history) + episodes

    def _on_step(self) -> bool:
        return len(self.env.history) < self.target


def learn_episodes(model: Any, env: CompressionEnv, episodes: int, callbacks: list[BaseCallback]) -> bool:
    """Let a stable-baselines3 learner play `episodes` more episodes; False if Ctrl-C stopped it."""
    total = (episodes + 1) * len(env.units) * 2  # an upper bound: the episode budget stops learning
    try:
        model.learn(total_timesteps=total, callback=[EpisodeBudget(env, episodes), *callbacks],
                    reset_num_timesteps=False)
    except KeyboardInterrupt:
        return False
    return True
