"""A search's life cycle: bad --out, interruption (Ctrl-C, SIGTERM), and --resume continuing the
PPO agent, the episodes file and the MLflow run instead of starting over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from modeltailor.agent import PPOSearcher
from modeltailor.agent import ppo as ppo_module
from modeltailor.agent.ppo import restore_checkpoint, save_checkpoint
from modeltailor.compressors.units import analyze_model
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.reward import Resources, TradeoffReward
from modeltailor.errors import ModelTailorError, SearchInterrupted
from modeltailor.experiments.search.run import (
    LogReporter,
    run_search,
)
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.tracking.tracker import Tracker
from modeltailor.models import build_model
from tests.test_cli import run_main
from tests.test_search_e2e import TINY, InterruptAfter
from tests.test_tracking import empty_db, store  # noqa: F401 - fixtures


def episodes(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / files.EPISODES).read_text().splitlines()]


# -- bad --out: one line, exit 2, before any training ---------------------------------------------


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable"])
def test_bad_out_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, case):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder\n")
    out, fragment = {
        "a file": (a_file, "is a file"),
        "under a file": (a_file / "sub", f"lies under the file '{a_file}'"),
        "not writable": (Path("/proc/modeltailor-out"), "cannot be written"),
    }[case]
    code, err = run_main(monkeypatch, capsys, "search", "--no-tracking", "--out", str(out))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--out '{out}'" in lines[0] and fragment in lines[0] and "pass --out a folder" in lines[0]
    assert not (tmp_path / "cache" / "teachers").exists(), "a teacher was trained before the error"


# -- the agent checkpoint -------------------------------------------------------------------------


def small_env(int8: bool = False) -> CompressionEnv:
    model = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5).eval()
    analysis = analyze_model(model, torch.zeros(1, 1, 16, 16))

    def never(_policy):  # these tests never finish an episode
        raise AssertionError("no episode is evaluated here")

    return CompressionEnv(analysis, never, TradeoffReward(), Resources(0.9, 1.0, 1e6), int8=int8)


def test_agent_checkpoint_is_plain_data_and_refuses_another_layout(tmp_path):
    path = tmp_path / files.AGENT_CHECKPOINT
    env = small_env()
    searcher = PPOSearcher(seed=1, checkpoint=path)
    save_checkpoint(path, searcher.build(env), env, searcher.settings)
    state = torch.load(path, weights_only=True)
    assert {"network", "optimizer", "settings", "num_timesteps", "episodes"} <= state.keys()
    assert state["observation_size"] == env.observation_space.shape[0] and state["action_dims"] == 1
    assert restore_checkpoint(path, searcher.build(env, seed=2), env)["episodes"] == 0
    joint = small_env(int8=True)  # three action dims
    with pytest.raises(ModelTailorError, match="drop --resume or use another --out") as info:
        restore_checkpoint(path, searcher.build(joint), joint)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# -- interruption -----------------------------------------------------------------------------------


class InterruptAt(LogReporter):
    """Ctrl-C when a progress message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def message(self, text: str) -> None:
        if text.startswith(self.prefix):
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupt_while_finalizing_is_search_interrupted_and_kills_the_run(tmp_path, store):  # noqa: F811
    uri, _ = store
    cfg = load_config(None, {**TINY, "search.episodes": 2, "search.searcher": "random", "tracking.uri": uri})
    out = tmp_path / "out"
    with pytest.raises(SearchInterrupted, match=r"2 of 2 episodes are kept in .*rerun with --resume"):
        run_search(cfg, out, InterruptAt("finalist"))
    run_id = json.loads((out / files.RUN).read_text())["mlflow_run_id"]
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "KILLED"


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """`kill <pid>` before any episode finished: exit 130, one line saying how to resume."""
    config = tmp_path / "d.yaml"
    config.write_text("tracking: {enabled: false}\ntrain: {epochs: 30}\ndata: {input_size: 16}\n")
    out = tmp_path / "out"
    env = {**os.environ, "MODELTAILOR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeltailor.service.cli", "search", "--config", str(config), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    while not (out / "deployment.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # inside the workbench (training the teacher)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines == [lines[0]] and "Traceback" not in err, err
    assert "search interrupted: 0 of" in lines[0] and "--resume" in lines[0]


# -- resume ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resumed_ppo_continues_instead_of_replaying(tmp_path, monkeypatch):
    restored = []
    real_restore = ppo_module.restore_checkpoint

    def spy(path, model, env):
        restored.append(path)
        return real_restore(path, model, env)

    monkeypatch.setattr(ppo_module, "restore_checkpoint", spy)
    cfg = load_config(None, {**TINY, "search.episodes": 5, "search.searcher": "ppo-real", "tracking.enabled": False})
    out = tmp_path / "out"
    run_search(cfg, out, InterruptAfter(3))  # one PPO update (2 episodes a rollout), then Ctrl-C
    first = episodes(out)
    saved = torch.load(out / files.AGENT_CHECKPOINT, weights_only=True)
    assert len(first) == 3 and saved["episodes"] == 3 and not restored
    run_search(cfg, out, resume=True)
    lines = episodes(out)
    assert [r["episode"] for r in lines] == [0, 1, 2, 3, 4] and lines[:3] == first
    assert restored == [out / files.AGENT_CHECKPOINT]
    first_policies = [r["policy"] for r in first]
    assert all(r["policy"] not in first_policies for r in lines[3:]), "the resumed run replayed policies"
    assert torch.load(out / files.AGENT_CHECKPOINT, weights_only=True)["episodes"] == 5


@pytest.mark.slow
def test_resume_continues_the_mlflow_run_and_drops_a_torn_line(tmp_path, store):  # noqa: F811
    uri, _ = store
    cfg = load_config(None, {**TINY, "search.episodes": 4, "search.searcher": "random", "tracking.uri": uri})
    out = tmp_path / "out"
    run_search(cfg, out, InterruptAfter(2))
    run_id = json.loads((out / files.RUN).read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    good = (out / files.EPISODES).read_text()
    (out / files.EPISODES).write_text(good + good.splitlines()[0][:40])  # a write torn by a kill

    run = run_search(cfg, out, resume=True)
    lines = episodes(out)  # every line parses: the torn one is gone, nothing appended onto it
    assert [r["episode"] for r in lines] == [0, 1, 2, 3]
    assert run.result.episodes[-1].episode == 3
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["resumed"] == "2"
    assert json.loads((out / "summary.json").read_text())["mlflow_run_id"] == run_id
    steps = sorted(m.step for m in client.get_metric_history(run_id, "episode/accuracy"))
    assert steps == [0, 1, 2, 3]
    assert len(client.search_runs([finished.info.experiment_id])) == 1


def test_tracker_resume_run_reopens_an_ended_run(store):  # noqa: F811
    uri, _ = store
    tracker = Tracker(uri)
    run_id = tracker.start_run("first")
    tracker.end_run("KILLED")
    again = Tracker(uri)
    assert again.resume_run(run_id) == run_id and again.run_id == run_id
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    again.end_run("FINISHED")
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    with pytest.raises(ModelTailorError, match="no-such-run"):
        again.resume_run("no-such-run")
