"""Tracking (MLflow through Tracker) and report plots: fast tests on a tmp SQLite store, plus one
test against a real `mlflow server` process."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from modeltailor.errors import ModelTailorError
from modeltailor.experiments.search.plots import format_bytes, plot_pareto
from modeltailor.experiments.tracking.tracker import (
    Tracker,
    default_tracking_uri,
    flatten_params,
    get_run_summary,
    quiet_mlflow_logging,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow SQLite file with no experiment of ours; copying it skips ~1 s of setup."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    quiet_mlflow_logging()
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A SQLite URI under tmp_path/store while the test runs from an unrelated cwd."""
    for var in ("MODELTAILOR_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db_dir = tmp_path / "store"
    db_dir.mkdir()
    shutil.copy(empty_db, db_dir / "mlflow.db")
    return f"sqlite:///{db_dir / 'mlflow.db'}", db_dir


def test_run_roundtrip_params_tags_metrics_artifacts(store: tuple[str, Path], tmp_path: Path):
    uri, db_dir = store
    tracker = Tracker(uri, experiment="roundtrip")
    source = tmp_path / "policy.txt"
    source.write_text("prune conv1 30%")
    params = {"search": {"episodes": 3, "agent": "ppo"}, "target": "cpu", "long": "x" * 10_000}
    with tracker.run("search", params, {"deployment": "edge"}) as run_id:
        assert tracker.run_id == run_id
        for episode in range(3):
            tracker.log_episode(
                episode, {"episode/accuracy": 0.5 + episode / 10, "skip": None, "nan": math.nan}
            )
        tracker.log_metrics({"best/accuracy": 0.7})
        tracker.log_artifact(source, artifact_path="policies")
        tracker.log_dict({"path": Path("/x"), "amount": 0.3}, "chosen.json")
        tracker.set_tags({"stage": "done"})
    assert tracker.run_id is None

    summary = get_run_summary(uri, run_id)
    assert summary["status"] == "FINISHED"
    assert summary["run_name"] == "search"
    assert summary["params"]["search.episodes"] == "3"
    assert summary["params"]["search.agent"] == "ppo"
    assert summary["params"]["target"] == "cpu"
    assert len(summary["params"]["long"]) <= 6000
    assert summary["tags"]["deployment"] == "edge"
    assert summary["tags"]["stage"] == "done"
    assert summary["metrics"]["episode/accuracy"] == pytest.approx(0.7)
    assert summary["metrics"]["best/accuracy"] == pytest.approx(0.7)
    assert "skip" not in summary["metrics"] and "nan" not in summary["metrics"]
    assert summary["artifacts"] == ["chosen.json", "policies/policy.txt"]

    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "episode/accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [0.5, 0.6, 0.7]
    )

    artifact_dir = db_dir / "mlartifacts" / run_id / "artifacts"
    assert (artifact_dir / "policies" / "policy.txt").read_text() == "prune conv1 30%"
    assert (artifact_dir / "chosen.json").is_file()
    assert not (Path.cwd() / "mlruns").exists()
    assert not (Path.cwd() / "mlartifacts").exists()


def test_failing_block_marks_run_failed_and_reraises(store: tuple[str, Path]):
    uri, _ = store
    tracker = Tracker(uri)
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.run("bad", {}, {}) as run_id:
            raise RuntimeError("boom")
    assert get_run_summary(uri, run_id)["status"] == "FAILED"
    assert tracker.run_id is None


def test_keyboard_interrupt_marks_run_killed(store: tuple[str, Path]):
    uri, _ = store
    tracker = Tracker(uri)
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("interrupted", {}, {}) as run_id:
            raise KeyboardInterrupt
    assert get_run_summary(uri, run_id)["status"] == "KILLED"


def test_nested_run_has_parent_tag_and_parent_stays_active(store: tuple[str, Path]):
    uri, _ = store
    tracker = Tracker(uri)
    parent = tracker.start_run("parent", {"a": 1}, {})
    child = tracker.start_run("child", {"b": 2}, {}, parent_run_id=parent)
    assert tracker.run_id == child
    tracker.end_run()
    assert tracker.run_id == parent
    tracker.end_run("KILLED")
    tracker.end_run()  # nothing active: no-op
    assert get_run_summary(uri, child)["tags"]["mlflow.parentRunId"] == parent
    assert get_run_summary(uri, child)["status"] == "FINISHED"
    assert get_run_summary(uri, parent)["status"] == "KILLED"


def test_two_trackers_coexist_and_share_the_experiment(store: tuple[str, Path]):
    uri, db_dir = store
    first, second = Tracker(uri), Tracker(uri)
    assert first.experiment_id == second.experiment_id
    run_a = first.start_run("a", {}, {})
    run_b = second.start_run("b", {}, {})
    first.log_metrics({"m": 1.0})
    second.log_metrics({"m": 2.0})
    first.end_run()
    second.end_run()
    assert get_run_summary(uri, run_a)["metrics"]["m"] == 1.0
    assert get_run_summary(uri, run_b)["metrics"]["m"] == 2.0


def test_misuse_raises_model_tailor_error(store: tuple[str, Path], tmp_path: Path):
    uri, _ = store
    tracker = Tracker(uri)
    with pytest.raises(ModelTailorError, match="no active tracking run"):
        tracker.log_metrics({"m": 1.0})
    with tracker.run("r", {}, {}):
        with pytest.raises(ModelTailorError, match="does not exist"):
            tracker.log_artifact(tmp_path / "missing.bin")
        with pytest.raises(ModelTailorError, match="unknown"):
            tracker.end_run("DONE")


def test_default_tracking_uri_honors_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MODELTAILOR_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert (
        default_tracking_uri(tmp_path / "runs") == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri() == "http://mlflow.example:5000"
    monkeypatch.setenv("MODELTAILOR_TRACKING_URI", "sqlite:///rel.db")
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/rel.db"


def test_ui_hint_names_the_backend_store(store: tuple[str, Path]):
    uri, _ = store
    tracker = Tracker(uri)
    assert tracker.ui_hint() == (f"mlflow ui --backend-store-uri {uri}, then open "
                                 f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}?workflowType=machine_learning")


def test_flatten_params_dots_nested_keys():
    assert flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": "1",
        "a.c.d": "[1, 2]",
        "e": "None",
    }


def test_unreachable_http_server_raises_quickly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(ModelTailorError, match="unreachable") as info:
        Tracker("http://127.0.0.1:9")
    assert time.monotonic() - start < 10
    assert "\n" not in str(info.value)


def test_plot_pareto_writes_png(tmp_path: Path):
    episodes = [
        {"accuracy": 0.70 + i / 100, "latency_ms": 5.0 + i, "memory_bytes": 1e6 * (1 + i)}
        for i in range(8)
    ]
    pareto = [episodes[0], episodes[3], episodes[7]]
    baseline = {"accuracy": 0.80, "latency_ms": 20.0, "memory_bytes": 12e6}
    out = plot_pareto(episodes, pareto, baseline, episodes[3], tmp_path / "plots" / "pareto.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    bare = plot_pareto([], [], baseline, None, tmp_path / "bare.png")
    assert bare.read_bytes()[:8] == PNG_MAGIC


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1_200_000) == "1.2 MB"
    assert format_bytes(3.5e9) == "3.5 GB"


# -- a real tracking server ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"mlflow server at {url} did not answer /health in {timeout_s}s")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    artifacts = tmp_path / "server-artifacts"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp_path / "server.log").open("w")
    # own session, so teardown can stop the server's uvicorn workers with it (its process group)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, artifacts
    finally:
        _stop_group(proc)
        log.close()


@pytest.mark.slow
def test_tracker_over_http_server(mlflow_server: tuple[str, Path], tmp_path: Path):
    url, artifacts = mlflow_server
    tracker = Tracker(url, experiment="over-http")
    report = tmp_path / "report.txt"
    report.write_text("hello")
    with tracker.run("remote", {"agent": {"name": "ppo"}}, {"k": "v"}) as run_id:
        tracker.log_episode(0, {"episode/accuracy": 0.5})
        tracker.log_episode(1, {"episode/accuracy": 0.6})
        tracker.log_artifact(report)
    summary = get_run_summary(url, run_id)
    assert summary["status"] == "FINISHED"
    assert summary["params"] == {"agent.name": "ppo"}
    assert summary["tags"]["k"] == "v"
    assert summary["metrics"]["episode/accuracy"] == pytest.approx(0.6)
    assert summary["artifacts"] == ["report.txt"]
    assert list(artifacts.rglob("report.txt"))
    assert tracker.ui_hint().startswith(f"open {url}")
