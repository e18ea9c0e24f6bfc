"""PPO search (stable-baselines3) tuned for short episodes with one expensive final step.

An episode is one decision per unit (10-30 steps) and only the last step pays (compress, recover,
measure), so: a rollout is a few whole episodes (`n_steps = units * episodes_per_rollout`), one
minibatch is one episode, gamma = 1 (no discounting inside an episode whose only reward is at the
end), and a modest initial exploration noise so early episodes are not all clipped to the bounds.

With a `checkpoint` path the agent checkpoint (network, optimizer, settings, observation layout) is
saved there after every PPO update and when the search ends or is interrupted; a resumed search
(`done > 0`) restores it and continues learning instead of replaying the first run's policies.

With `warm_start` (another search's agent checkpoint) a fresh search starts from that network
instead of a random one: the policy and value weights (and the learned action noise, unless
`warm_noise` is "reset") are loaded, the optimizer starts afresh. The checkpoint's observation layout and network width must match.

With `stats`, PPO's own training statistics (losses, entropy, KL, clip fraction, explained
variance, action noise) are handed over after each update through stable-baselines3's logger,
keyed `ppo/<name>` and stepped by the episodes finished so far.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger

from modeltailor.agent.base import learn_episodes
from modeltailor.common.storage import atomic_write
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.features import OBS_LAYOUT
from modeltailor.env.history import search_result
from modeltailor.env.records import SearchResult
from modeltailor.errors import ModelTailorError, first_line

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
    warm_noise: str = "keep"  # a warm start keeps the checkpoint's action noise, or resets it to log_std_init
    minibatch_episodes: int = 1  # episodes per gradient step (at most episodes_per_rollout)


CHECKPOINT_FORMAT = 2
"""2: the network's state dict under "network" (format 1 named it "policy", like the compression
policy it is not); format-1 files still load (restore_checkpoint reads either key)."""


def agent_checkpoint(model: BaseAlgorithm, env: CompressionEnv, settings: PPOSettings) -> dict[str, Any]:
    """The agent checkpoint: plain tensors and values only (loads with weights_only=True)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "network": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "settings": asdict(settings),
        "num_timesteps": int(model.num_timesteps),
        "episodes": len(env.history),
        **checkpoint_layout(env),
    }


def save_checkpoint(path: Path, model: BaseAlgorithm, env: CompressionEnv, settings: PPOSettings) -> None:
    buffer = io.BytesIO()
    torch.save(agent_checkpoint(model, env, settings), buffer)
    atomic_write(path, buffer.getvalue())


RESUME_ADVICE = "drop --resume or use another --out"


def read_checkpoint(path: Path, env: CompressionEnv, advice: str = RESUME_ADVICE) -> dict[str, Any]:
    """The agent checkpoint at `path` (plain tensors, no pickle); its layout must match `env`'s."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelTailorError(f"agent checkpoint '{path}' cannot be read ({exc.__class__.__name__}): {advice}") from None
    layout = {key: state.get(key) for key in checkpoint_layout(env)} if isinstance(state, dict) else None
    if layout != checkpoint_layout(env):
        raise ModelTailorError(
            f"agent checkpoint '{path}' was saved for layout {layout}, this search has {checkpoint_layout(env)}: {advice}"
        )
    return state


def restore_checkpoint(
    path: Path, model: BaseAlgorithm, env: CompressionEnv, advice: str = RESUME_ADVICE, optimizer: bool = True
) -> dict[str, Any]:
    """Load the network (and the optimizer) saved at `path` into `model`; its layout must match `env`'s."""
    state = read_checkpoint(path, env, advice)
    try:
        model.policy.load_state_dict(network_state(state))
        if optimizer:
            model.policy.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelTailorError(
            f"agent checkpoint '{path}' does not fit this PPO network ({first_line(exc)}): {advice}"
        ) from None
    if optimizer:
        model.num_timesteps = int(state.get("num_timesteps", 0))
    return state


def network_state(state: dict[str, Any]) -> Any:
    """The PPO network's state dict of a checkpoint: "network", or "policy" in a format-1 file
    (old agent checkpoints still load); a KeyError when neither is there."""
    network = state.get("network", state.get("policy"))
    if network is None:
        raise KeyError("network")
    return network


def checkpoint_layout(env: CompressionEnv) -> dict[str, int]:
    obs, act = env.observation_space.shape, env.action_space.shape
    assert obs is not None and act is not None
    return {"observation_layout": OBS_LAYOUT, "observation_size": int(obs[0]), "action_dims": int(act[0])}


Stats = Callable[[dict[str, float], int], None]
"""``stats(metrics, step)``: where PPO's training statistics go (e.g. MLflow)."""


class StatsWriter(KVWriter):
    """stable-baselines3 logger output that hands the numeric `train/*` values to `stats`."""

    def __init__(self, stats: Stats, env: CompressionEnv) -> None:
        self.stats, self.env = stats, env

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        numbers = {
            f"ppo/{key.split('/', 1)[1]}": float(value)
            for key, value in key_values.items()
            if key.startswith("train/") and isinstance(value, int | float | np.number)
        }
        if numbers:
            self.stats(numbers, len(self.env.history))

    def close(self) -> None:
        return None


class _SaveAfterUpdate(BaseCallback):
    """Saves the agent checkpoint each time a rollout starts after a PPO update."""

    def __init__(self, path: Path, env: CompressionEnv, settings: PPOSettings) -> None:
        super().__init__()
        self.path, self.env, self.settings, self.rollouts = path, env, settings, 0

    def _on_rollout_start(self) -> None:
        if self.rollouts > 0:  # the previous rollout has been trained on
            save_checkpoint(self.path, self.model, self.env, self.settings)
        self.rollouts += 1

    def _on_step(self) -> bool:
        return True


@dataclass
class PPOSearcher:
    seed: int = 0
    settings: PPOSettings = None  # type: ignore[assignment]
    name: str = "ppo"
    checkpoint: Path | None = None
    warm_start: Path | None = None
    stats: Stats | None = None

    def __post_init__(self) -> None:
        self.settings = self.settings or PPOSettings()

    def build(self, env: CompressionEnv, seed: int | None = None) -> PPO:
        s, units = self.settings, len(env.units)
        return PPO(
            "MlpPolicy",
            env,
            n_steps=units * s.episodes_per_rollout,
            batch_size=units * max(1, min(s.minibatch_episodes, s.episodes_per_rollout)),
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
            seed=self.seed if seed is None else seed,
            device="cpu",
            verbose=0,
        )

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        """Learn for `episodes` more episodes; with `done` > 0, continue from the checkpoint."""
        start = len(env.history)
        if episodes <= 0:
            return search_result(self.name, [])
        model = self.start(env, done)
        if self.stats is not None:
            model.set_logger(Logger(folder=None, output_formats=[StatsWriter(self.stats, env)]))
        callbacks: list[BaseCallback] = []
        if self.checkpoint is not None:
            callbacks.append(_SaveAfterUpdate(self.checkpoint, env, self.settings))
        if not learn_episodes(model, env, episodes, callbacks):
            self._save(model, env)
            return search_result(self.name, env.history[start:], interrupted=True)
        model.logger.dump(model.num_timesteps)  # the last update's statistics
        self._save(model, env)
        return search_result(self.name, env.history[start:])

    def start(self, env: CompressionEnv, done: int) -> PPO:
        """A fresh agent (warm-started when asked), or (resuming after `done` episodes) the
        checkpoint's, with new noise."""
        model = self.build(env, seed=self.seed + done)
        if done > 0 and self.checkpoint is not None and self.checkpoint.is_file():
            state = restore_checkpoint(self.checkpoint, model, env)
            log.info("PPO resumes from %s (saved after %s episodes)", self.checkpoint, state.get("episodes"))
        elif self.warm_start is not None:
            self._warm(model, env, self.warm_start)
        return model

    def _warm(self, model: PPO, env: CompressionEnv, path: Path) -> None:
        advice = "set search.warm_start to a search with the same methods and search.ppo.hidden, or drop it"
        state = read_checkpoint(path, env, advice)
        hidden = (state.get("settings") or {}).get("hidden")
        if hidden != self.settings.hidden:
            raise ModelTailorError(
                f"agent checkpoint '{path}' has hidden={hidden}, this search search.ppo.hidden={self.settings.hidden}: {advice}"
            )
        restore_checkpoint(path, model, env, advice, optimizer=False)
        if self.settings.warm_noise == "reset":  # the checkpoint's policy, explored afresh
            with torch.no_grad():
                model.policy.log_std.fill_(self.settings.log_std_init)
        log.info("PPO warm-starts from %s (trained for %s episodes)", path, state.get("episodes"))

    def _save(self, model: PPO, env: CompressionEnv) -> None:
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, model, env, self.settings)
