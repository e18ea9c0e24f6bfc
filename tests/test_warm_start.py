"""Agent checkpoints and warm starts: round trip, layout refusal, PPO's statistics, `auto` choosing
the nearest finished deployment in a real (SQLite) tracking store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from modeltailor.agent.ppo import PPOSearcher, agent_checkpoint, checkpoint_layout
from modeltailor.env.features import OBS_LAYOUT, DeploymentContext
from modeltailor.errors import ConfigError, ModelTailorError
from modeltailor.experiments.search.warm_start import FROM_TAG, publish_agent, resolve_warm_start
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.tracking.tracker import Tracker
from tests.test_searchers import make_env
from tests.test_searchers import model as model  # noqa: F401 - the fixture

PRUNE, JOINT = ("prune",), ("prune", "lowrank", "int8")


def observations(env, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(n, *env.observation_space.shape)).astype(np.float32)


def trained(env, path: Path, seed: int = 3) -> PPOSearcher:
    searcher = PPOSearcher(seed=seed, checkpoint=path)
    searcher.search(env, episodes=3)
    return searcher


def test_checkpoint_round_trip_gives_the_same_actions(model, tmp_path):
    env = make_env(model, JOINT)
    path = tmp_path / "agent_checkpoint.pt"
    first = trained(env, path)
    original = first.build(env)
    state = torch.load(path, weights_only=True)  # plain tensors and values: no pickle needed
    original.policy.load_state_dict(state["network"])
    assert state["observation_layout"] == OBS_LAYOUT and state["episodes"] == 3
    warm = PPOSearcher(seed=99, warm_start=path).start(make_env(model, JOINT), done=0)
    cold = PPOSearcher(seed=99).start(make_env(model, JOINT), done=0)
    obs = observations(env)
    ours, theirs = original.predict(obs, deterministic=True)[0], warm.predict(obs, deterministic=True)[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert not np.allclose(cold.predict(obs, deterministic=True)[0], ours, atol=1e-3)


def test_checkpoint_of_another_layout_is_refused(model, tmp_path):
    path = tmp_path / "agent_checkpoint.pt"
    trained(make_env(model, PRUNE), path)  # one action dimension
    with pytest.raises(ModelTailorError, match="layout .*action_dims.*: set search.warm_start"):
        PPOSearcher(warm_start=path).start(make_env(model, JOINT), done=0)  # three
    env = make_env(model, PRUNE)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "observation_layout": OBS_LAYOUT - 1}, tmp_path / "old.pt")
    with pytest.raises(ModelTailorError, match="observation_layout"):
        PPOSearcher(warm_start=tmp_path / "old.pt").start(env, done=0)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelTailorError, match="cannot be read"):
        PPOSearcher(warm_start=tmp_path / "junk.pt").start(env, done=0)


def test_checkpoint_of_the_old_layout_still_restores(model, tmp_path):
    """Format 1 saved the PPO network under "policy"; such files still warm-start and resume."""
    env = make_env(model, PRUNE)
    path = tmp_path / "agent_checkpoint.pt"
    trained(env, path)
    state = torch.load(path, weights_only=True)
    old = {**{k: v for k, v in state.items() if k != "network"}, "format": 1, "policy": state["network"]}
    torch.save(old, tmp_path / "old.pt")
    obs = observations(env)
    new_actions = PPOSearcher(warm_start=path).start(make_env(model, PRUNE), done=0).predict(obs, deterministic=True)[0]
    old_actions = PPOSearcher(warm_start=tmp_path / "old.pt").start(make_env(model, PRUNE), done=0).predict(
        obs, deterministic=True
    )[0]
    np.testing.assert_allclose(old_actions, new_actions, atol=1e-6)
    resumed = PPOSearcher(checkpoint=tmp_path / "old.pt").start(make_env(model, PRUNE), done=3)
    assert resumed.num_timesteps == state["num_timesteps"]
    np.testing.assert_allclose(resumed.predict(obs, deterministic=True)[0], new_actions, atol=1e-6)
    torch.save({k: v for k, v in old.items() if k != "policy"}, tmp_path / "headless.pt")
    with pytest.raises(ModelTailorError, match="does not fit this PPO network"):
        PPOSearcher(warm_start=tmp_path / "headless.pt").start(make_env(model, PRUNE), done=0)


def test_checkpoint_of_another_width_is_refused(model, tmp_path):
    env = make_env(model, PRUNE)
    path = tmp_path / "agent_checkpoint.pt"
    trained(env, path)
    wide = PPOSearcher(warm_start=path)
    wide.settings = dataclasses.replace(wide.settings, hidden=32)
    with pytest.raises(ModelTailorError, match="hidden=64.*search.ppo.hidden=32"):
        wide.start(env, done=0)


def test_ppo_training_statistics_are_handed_over(model):
    env = make_env(model, PRUNE)
    seen: list[tuple[dict[str, float], int]] = []
    PPOSearcher(seed=0, stats=lambda metrics, step: seen.append((metrics, step))).search(env, episodes=4)
    keys = set().union(*(m for m, _ in seen))
    assert {"ppo/approx_kl", "ppo/entropy_loss", "ppo/value_loss", "ppo/policy_gradient_loss"} <= keys
    assert all(0 < step <= 4 for _, step in seen)
    assert all(np.isfinite(v) for m, _ in seen for v in m.values())


def test_agent_checkpoint_is_plain_data(model):
    env = make_env(model, PRUNE)
    searcher = PPOSearcher(seed=0)
    state = agent_checkpoint(searcher.build(env), env, searcher.settings)
    assert {k: state[k] for k in checkpoint_layout(env)} == checkpoint_layout(env)
    assert all(isinstance(v, torch.Tensor) for v in state["network"].values())


def config_for(tmp_path: Path, **search):
    return load_config(None, {"tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", **{f"search.{k}": v for k, v in search.items()}})


def test_auto_warm_start_picks_the_nearest_finished_deployment(model, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELTAILOR_CACHE", str(tmp_path / "cache"))
    config = config_for(tmp_path, warm_start="auto")
    tracker = Tracker(config.tracking.uri)
    contexts = {
        "all-classes-45": DeploymentContext(1.0, "budget", latency_ratio=0.45),
        "three-classes-30": DeploymentContext(0.3, "budget", latency_ratio=0.3),
        "accuracy": DeploymentContext(1.0, "accuracy", accuracy_drop_points=1.0),
    }
    runs = {}
    for name, context in contexts.items():
        env = make_env(model, PRUNE)
        env.context = context
        path = tmp_path / name / "agent_checkpoint.pt"
        trained(env, path)
        with tracker.run(name, tags={"device": "cpu-1t"}) as run_id:
            publish_agent(tracker, config, env, path)
        runs[name] = run_id
    other_layout = make_env(model, JOINT)  # nearest of all, but another action space: never chosen
    other_layout.context = DeploymentContext(0.3, "budget", latency_ratio=0.32)
    trained(other_layout, tmp_path / "joint" / "agent_checkpoint.pt")
    with tracker.run("joint", tags={"device": "cpu-1t"}):
        publish_agent(tracker, config, other_layout, tmp_path / "joint" / "agent_checkpoint.pt")

    here = make_env(model, PRUNE)
    here.context = DeploymentContext(0.3, "budget", latency_ratio=0.32)
    warm = resolve_warm_start(config, here, tracker)
    assert warm is not None and warm.run_id == runs["three-classes-30"]
    assert warm.path.is_file() and "three-classes-30" in warm.note
    state = torch.load(warm.path, weights_only=True)
    assert state["action_dims"] == 1
    here.context = DeploymentContext(1.0, "accuracy", accuracy_drop_points=0.5)
    assert resolve_warm_start(config, here, tracker).run_id == runs["accuracy"]
    # the run being searched never warm-starts from itself
    assert resolve_warm_start(config, here, tracker, exclude_run=runs["accuracy"]).run_id != runs["accuracy"]
    assert FROM_TAG == "warmStartFrom"


def test_auto_with_nothing_to_start_from_is_a_cold_start(model, tmp_path):
    config = config_for(tmp_path, warm_start="auto")
    assert resolve_warm_start(config, make_env(model, PRUNE), Tracker(config.tracking.uri)) is None
    assert resolve_warm_start(config, make_env(model, PRUNE), None) is None


def test_warm_start_by_path_and_by_run(model, tmp_path):
    env = make_env(model, PRUNE)
    out = tmp_path / "search"
    trained(env, out / "agent_checkpoint.pt")
    for given in (out, out / "agent_checkpoint.pt"):
        warm = resolve_warm_start(config_for(tmp_path, warm_start=str(given)), env, None)
        assert warm is not None and warm.path == out / "agent_checkpoint.pt"
    with pytest.raises(ConfigError, match="search.warm_start: .*neither an agent checkpoint"):
        resolve_warm_start(config_for(tmp_path, warm_start=str(tmp_path / "missing")), env, None)
    missing_run = "0" * 32
    config = config_for(tmp_path, warm_start=missing_run)
    with pytest.raises(ConfigError, match="tracking is disabled"):
        resolve_warm_start(config, env, None)
    with pytest.raises(ConfigError, match=f"run '{missing_run}' is not in the tracking store"):
        resolve_warm_start(config, env, Tracker(config.tracking.uri))


def test_warm_start_needs_ppo(tmp_path):
    with pytest.raises(ConfigError, match="warm_start needs searcher: ppo or ppo-real"):
        config_for(tmp_path, warm_start=str(tmp_path), searcher="random")
    # auto, the default, is ignored by the searchers without an agent
    assert config_for(tmp_path, warm_start="auto", searcher="random").search.warm_start == "auto"


def test_warm_start_can_reset_the_action_noise(model, tmp_path):
    env = make_env(model, PRUNE)
    path = tmp_path / "agent_checkpoint.pt"
    trained(env, path)
    saved = torch.load(path, weights_only=True)["network"]
    kept = PPOSearcher(warm_start=path).start(make_env(model, PRUNE), done=0)
    reset = PPOSearcher(warm_start=path)
    reset.settings = dataclasses.replace(reset.settings, warm_noise="reset")
    fresh = reset.start(make_env(model, PRUNE), done=0)
    assert not torch.allclose(saved["log_std"], torch.full_like(saved["log_std"], reset.settings.log_std_init))
    assert torch.equal(kept.policy.log_std, saved["log_std"])
    assert torch.allclose(fresh.policy.log_std, torch.full_like(saved["log_std"], reset.settings.log_std_init))
    obs = torch.as_tensor(observations(env))
    assert torch.allclose(kept.policy.get_distribution(obs).distribution.mean,
                          fresh.policy.get_distribution(obs).distribution.mean)
