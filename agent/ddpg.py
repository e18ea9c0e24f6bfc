"""DDPG search (stable-baselines3), AMC's agent, on the same env and episode budget as PPO.

As in AMC: the first ``warmup_episodes`` episodes play uniformly random actions (SB3's
``learning_starts`` = units x warmup episodes), then the actor plays with Gaussian exploration
noise whose scale decays by ``noise_decay`` after every episode; gamma = 1 (the only reward comes
at the end of the episode); the networks train once per episode (``train_freq = (1, "episode")``)
with one gradient step per step of that episode. The replay buffer is sized for the search, not
SB3's default million transitions.

Resume (``done`` > 0) simply continues with a fresh agent (seeded ``seed + done``, so its
exploration differs from the interrupted run's), which warms up again; no DDPG state is saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.noise import ActionNoise

from modeltailor.agent.base import learn_episodes
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import search_result
from modeltailor.env.records import SearchResult


@dataclass
class DDPGSettings:
    warmup_episodes: int = 4
    learning_rate: float = 1e-3
    gamma: float = 1.0
    tau: float = 0.01
    batch_size: int = 64
    noise_sigma: float = 0.5
    noise_decay: float = 0.95
    hidden: int = 64
    buffer_episodes: int = 1000


class DecayingNormalNoise(ActionNoise):
    """N(0, sigma) per action dimension from its own seeded generator; silent for the first
    `silent` episodes (the random warm-up), then sigma shrinks by `decay` after every episode."""

    def __init__(self, dims: int, sigma: float, decay: float, silent: int, seed: int) -> None:
        super().__init__()
        self.dims, self.sigma, self.decay, self.silent = dims, sigma, decay, silent
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        if self.episodes < self.silent:
            return np.zeros(self.dims, dtype=np.float32)
        return self.rng.normal(0.0, self.sigma, size=self.dims).astype(np.float32)

    def reset(self) -> None:
        """Called by SB3 at the end of every episode."""
        if self.episodes >= self.silent:
            self.sigma *= self.decay
        self.episodes += 1


@dataclass
class DDPGSearcher:
    seed: int = 0
    settings: DDPGSettings = None  # type: ignore[assignment]
    name: str = "ddpg"

    def __post_init__(self) -> None:
        self.settings = self.settings or DDPGSettings()

    def build(self, env: CompressionEnv, seed: int | None = None) -> DDPG:
        s, units = self.settings, len(env.units)
        seed = self.seed if seed is None else seed
        shape = env.action_space.shape
        assert shape is not None
        return DDPG(
            "MlpPolicy",
            env,
            learning_rate=s.learning_rate,
            buffer_size=units * s.buffer_episodes,
            learning_starts=units * s.warmup_episodes,
            batch_size=s.batch_size,
            tau=s.tau,
            gamma=s.gamma,
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=DecayingNormalNoise(int(shape[0]), s.noise_sigma, s.noise_decay, s.warmup_episodes, seed),
            policy_kwargs={"net_arch": [s.hidden, s.hidden], "activation_fn": torch.nn.ReLU},
            seed=seed,
            device="cpu",
            verbose=0,
        )

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        """Learn for `episodes` more episodes; with `done` > 0, a fresh agent (see the module doc)."""
        start = len(env.history)
        if episodes <= 0:
            return search_result(self.name, [])
        model = self.build(env, seed=self.seed + done)
        finished = learn_episodes(model, env, episodes, [])
        return search_result(self.name, env.history[start:], interrupted=not finished)
