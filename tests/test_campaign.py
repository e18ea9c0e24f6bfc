"""Campaigns on a local Ray: every deployment searched by the same run_search, a failing one
reported without stopping the others, MLflow parent and child runs over a real mlflow server,
and crash safety: `kill -9` then --resume, and Ctrl-C."""

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
import yaml

from modeltailor.errors import ConfigError
from modeltailor.experiments.fleet.campaign import run_campaign
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.campaign import load_campaign
from modeltailor.experiments.spec.summary import SearchSummary
from modeltailor.experiments.tracking.registry import device_versions

pytestmark = pytest.mark.slow

BASE = {
    "model": {"name": "resnet20", "kwargs": {"width": 0.5}},
    "data": {"input_size": 16},
    "train": {"epochs": 3},
    "search": {"episodes": 3, "round_to": 2, "searcher": "random"},
    "recovery": {"episode_steps": 5, "final_steps": 10, "finalists": 1},
    "device": {"runs": 10, "warmup": 2},
    "objective": {"kind": "tradeoff"},  # no budget a noisy tiny-model baseline could make infeasible
}
MODELTAILOR = str(Path(sys.executable).parent / "modeltailor")


def write_campaign(folder: Path, deployments: list[dict], **extra) -> Path:
    spec = {"name": "tiny", "base": BASE, "deployments": deployments, "max_concurrent": 2, **extra}
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def episodes_in(folder: Path) -> list[int]:
    lines = (folder / "episodes.jsonl").read_text().splitlines() if (folder / "episodes.jsonl").exists() else []
    return [json.loads(line)["episode"] for line in lines if line.strip()]


def runs_of(db: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("modeltailor")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_campaign_searches_every_deployment_and_reports_a_failing_one(tmp_path):
    path = write_campaign(tmp_path, [
        {"name": "all-1t", "device": {"name": "cpu-1t"}},
        {"name": "c037-2t", "classes": [0, 3, 7], "device": {"name": "cpu-2t"}},
        {"name": "broken", "device": {"name": "no-such-device"}},
    ], tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    out = tmp_path / "out"
    run = run_campaign(load_campaign(path), out)

    states = {s.name: s.state for s in run.statuses}
    assert states == {"all-1t": "finished", "c037-2t": "finished", "broken": "failed"}
    broken = next(s for s in run.statuses if s.name == "broken")
    assert "no-such-device" in broken.error and "\n" not in broken.error
    for name in ("all-1t", "c037-2t"):
        summary = SearchSummary.model_validate_json((out / name / "summary.json").read_text())
        assert (out / name / "model.onnx").stat().st_size > 0
        assert summary.episodes == 3 and summary.best.params < summary.baseline.params
    assert SearchSummary.model_validate_json((out / "c037-2t" / "summary.json").read_text()).classes == [0, 3, 7]

    record = json.loads((out / files.CAMPAIGN).read_text())
    assert [d["state"] for d in record["deployments"]] == ["finished", "finished", "failed"]
    assert record["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert record["logged_through"].startswith("http://127.0.0.1:")  # a real mlflow server over SQLite
    assert (out / "campaign.png").stat().st_size > 0

    runs = {r.info.run_name: r for r in runs_of(tmp_path / "mlflow.db")}
    parent = runs["tiny"]
    assert parent.info.run_id == record["mlflow_run_id"]
    assert parent.info.status == "FAILED"  # one deployment failed
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["all-1t", "c037-2t"]
    assert all(r.info.status == "FINISHED" for r in children)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert {"campaign.json", "campaign.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "summary.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    # every finished deployment is a registered version, tagged with its campaign, linked from the parent run
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name, device in (("all-1t", "cpu-1t"), ("c037-2t", "cpu-2t")):
        (version,) = device_versions(uri, device)
        assert version.campaign == "tiny" and version.deployment == name and version.aliases
        assert json.loads((out / name / "trial.json").read_text())["result"]["registered_version"] == version.version
        assert f"#/models/modeltailor-{device}/versions/{version.version}" in parent.data.tags["mlflow.note.content"]


def test_an_existing_campaign_folder_needs_resume(tmp_path):
    path = write_campaign(tmp_path, [{"name": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / files.CAMPAIGN).write_text("{}")
    with pytest.raises(ConfigError, match="holds a campaign already: pass --resume"):
        run_campaign(load_campaign(path), out)
    assert (out / files.CAMPAIGN).read_text() == "{}"


def start_campaign(path: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [MODELTAILOR, "campaign", "--config", str(path), "--out", str(out), "--no-tracking", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )


def wait_for_episodes(out: Path, names: list[str], at_least: int, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(len(episodes_in(out / n)) >= at_least for n in names):
            return
        if process.poll() is not None:
            raise AssertionError(f"campaign ended early: {process.communicate()}")
        time.sleep(0.3)
    raise AssertionError(f"no {at_least} episodes in {names} within {timeout_s} s")


def test_kill_9_then_resume_keeps_finished_and_continues_the_rest(tmp_path):
    """A quick deployment finishes, a long one is cut by kill -9 mid-search; --resume does not run
    the finished one again and continues the other from its episodes.jsonl."""
    path = write_campaign(tmp_path, [
        {"name": "quick", "search": {"episodes": 2}},
        {"name": "long", "classes": [0, 3, 7], "search": {"episodes": 16}},  # cut after its 3rd
    ])
    out = tmp_path / "out"
    process = start_campaign(path, out)
    deadline = time.monotonic() + 240
    while json.loads((out / "quick" / files.TRIAL).read_text() if (out / "quick" / files.TRIAL).exists() else "{}").get("state") != "finished":
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.3)
    wait_for_episodes(out, ["long"], 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    quick_summary = (out / "quick" / "summary.json").read_bytes()
    kept = episodes_in(out / "long")
    assert 3 <= len(kept) < 16

    resumed = start_campaign(path, out, "--resume")
    stdout, stderr = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, stderr
    assert "1 finished deployments kept, 1 to run" in stdout
    assert (out / "quick" / "summary.json").read_bytes() == quick_summary  # not run again
    assert episodes_in(out / "long") == list(range(16))  # continued, every episode once
    record = json.loads((out / files.CAMPAIGN).read_text())
    assert {d["name"]: d["state"] for d in record["deployments"]} == {"quick": "finished", "long": "finished"}


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_and_keeps_what_finished(tmp_path, stop):
    path = write_campaign(tmp_path, [
        {"name": "first", "search": {"episodes": 30}},
        {"name": "second", "classes": [1, 2], "search": {"episodes": 30}},
    ])
    out = tmp_path / "out"
    process = start_campaign(path, out)
    wait_for_episodes(out, ["first", "second"], 2, process)
    if stop == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
    else:
        os.kill(process.pid, signal.SIGTERM)  # `kill PID`, `docker stop`: the campaign process alone
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("campaign interrupted")
    assert "--resume" in stderr
    record = json.loads((out / files.CAMPAIGN).read_text())
    states = {d["name"]: (d["state"], d["episodes_done"]) for d in record["deployments"]}
    for name in ("first", "second"):
        state, done = states[name]
        assert state == "interrupted" and done == len(episodes_in(out / name)) >= 2
