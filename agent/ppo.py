"""PPO search (stable-baselines3) tuned for short episodes with one expensive final step.

An episode is one decision per unit (10-30 steps) and only the last step pays (compress, recover,
measure), so: a rollout is a few whole episodes (`n_steps = units * episodes_per_rollout`), one
minibatch is one episode, gamma = 1 (no discounting inside an episode whose only reward is at the
end), and a modest initial exploration noise so early episodes are not all clipped to the bounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import search_result
from modeltailor.results import SearchResult

log = logging.getLogger(__name__)


@dataclass
class PPOSettings:
    episodes_per_rollout: int = 2
    n_epochs: int = 10
    learning_rate: float = 1e-3
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    clip_range: float = 0.2
    log_std_init: float = -0.7
    hidden: int = 64


class _EpisodeBudget(BaseCallback):
    """Stops learning once the env has recorded `episodes` more episodes."""

    def __init__(self, env: CompressionEnv, episodes: int) -> None:
        super().__init__()
        self.env, self.target = env, len(env.history) + episodes

    def _on_step(self) -> bool:
        return len(self.env.history) < self.target


@dataclass
class PPOSearcher:
    seed: int = 0
    settings: PPOSettings = None  # type: ignore[assignment]
    name: str = "ppo"

    def __post_init__(self) -> None:
        self.settings = self.settings or PPOSettings()

    def build(self, env: CompressionEnv) -> PPO:
        s, units = self.settings, len(env.units)
        return PPO(
            "MlpPolicy",
            env,
            n_steps=units * s.episodes_per_rollout,
            batch_size=units,
            n_epochs=s.n_epochs,
            learning_rate=s.learning_rate,
            gamma=s.gamma,
            gae_lambda=s.gae_lambda,
            ent_coef=s.ent_coef,
            clip_range=s.clip_range,
            policy_kwargs={
                "log_std_init": s.log_std_init,
                "net_arch": [s.hidden, s.hidden],
                "activation_fn": torch.nn.Tanh,
            },
            seed=self.seed,
            device="cpu",
            verbose=0,
        )

    def search(self, env: CompressionEnv, episodes: int) -> SearchResult:
        start = len(env.history)
        model = self.build(env)
        budget = _EpisodeBudget(env, episodes)
        try:
            # the callback stops learning at the episode budget; total_timesteps is an upper bound
            model.learn(total_timesteps=(episodes + 1) * len(env.units) * 2, callback=budget)
        except KeyboardInterrupt:
            return search_result(self.name, env.history[start:], interrupted=True)
        return search_result(self.name, env.history[start:])
