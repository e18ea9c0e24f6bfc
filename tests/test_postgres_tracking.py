"""Tracking through a real `mlflow server` whose store is PostgreSQL (the `mlflow_postgres` session
fixture, tests/pg_mlflow.py): runs and registered models land in PostgreSQL's tables, and the
servers are gone once their context managers exit, also when the body or the start-up failed."""

from __future__ import annotations

import socket
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest

from modeltailor.experiments.tracking.tracker import Tracker, get_run_summary
from tests.pg_mlflow import mlflow_server, postgres_server

pytestmark = pytest.mark.slow  # PostgreSQL and mlflow servers


def _query(pg, sql: str, *args) -> list[tuple]:
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _unique(prefix: str) -> str:
    """The server is shared by the session: names of one test must not meet another's."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _live(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _live_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp
            found.append(int(entry.name))
    return found


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_server_stores_in_postgresql(mlflow_postgres):
    assert mlflow_postgres.uri.startswith("http://127.0.0.1:")
    assert mlflow_postgres.backend_uri.startswith("postgresql")
    with urllib.request.urlopen(f"{mlflow_postgres.uri}/health", timeout=5) as resp:
        assert resp.status == 200
    pg = mlflow_postgres.postgres
    (version,) = _query(pg, "SELECT version()")[0]
    assert version.startswith("PostgreSQL ")
    tables = {
        row[0] for row in _query(pg, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"runs", "experiments", "registered_models", "alembic_version"} <= tables
    assert _query(pg, "SELECT current_user")[0][0] == "mlflow"  # no password: trust on loopback
    assert mlflow_postgres.log_path.is_file()


def test_tracker_run_lands_in_postgresql(mlflow_postgres, tmp_path: Path):
    uri, pg = mlflow_postgres.uri, mlflow_postgres.postgres
    experiment = _unique("pg-tracking")
    tracker = Tracker(uri, experiment)
    policy = tmp_path / "policy.json"
    policy.write_text('{"conv1": 0.3}')
    run_id = tracker.start_run("search", {"search": {"episodes": 2}, "agent": "ppo"}, {"k": "v"})
    for episode in range(2):
        tracker.log_episode(episode, {"episode/accuracy": 0.5 + episode / 10})
    tracker.log_artifact(policy, artifact_path="policies")
    tracker.end_run()

    summary = get_run_summary(uri, run_id)
    assert summary["status"] == "FINISHED"
    assert summary["run_name"] == "search"
    assert summary["params"] == {"search.episodes": "2", "agent": "ppo"}
    assert summary["tags"]["k"] == "v"
    assert summary["metrics"]["episode/accuracy"] == pytest.approx(0.6)
    assert summary["artifacts"] == ["policies/policy.json"]
    # the artifact went through the server into its artifacts destination
    # (this run's: the server is the session's, and other tests log policies to it too)
    stored = [p for p in mlflow_postgres.server.artifacts.rglob("policy.json") if run_id in p.parts]
    assert [p.read_text() for p in stored] == ['{"conv1": 0.3}']

    # ... and the rows are PostgreSQL's, not some local file's
    rows = _query(
        pg,
        "SELECT r.name, r.status, r.end_time IS NOT NULL, e.name FROM runs r "
        "JOIN experiments e ON e.experiment_id = r.experiment_id WHERE r.run_uuid = %s",
        run_id,
    )
    assert rows == [("search", "FINISHED", True, experiment)]
    params = dict(_query(pg, "SELECT key, value FROM params WHERE run_uuid = %s", run_id))
    assert params == {"search.episodes": "2", "agent": "ppo"}
    steps = _query(
        pg, "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = %s ORDER BY step",
        run_id, "episode/accuracy",
    )  # fmt: skip
    assert steps == [(0, pytest.approx(0.5)), (1, pytest.approx(0.6))]


def test_registered_model_version_and_alias(mlflow_postgres):
    uri, pg = mlflow_postgres.uri, mlflow_postgres.postgres
    tracker = Tracker(uri, _unique("pg-registry"))
    with tracker.run("train") as run_id:
        tracker.log_dict({"layers": 3}, "model/policy.json")
    client = mlflow.MlflowClient(uri)
    name = _unique("tailored")
    client.create_registered_model(name, description="tailored for cpu-1t")
    first = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    second = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    assert (first.version, second.version) == ("1", "2")
    client.set_registered_model_alias(name, "champion", first.version)

    by_alias = client.get_model_version_by_alias(name, "champion")
    assert (by_alias.version, by_alias.run_id) == ("1", run_id)
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    assert _query(
        pg, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", name
    ) == [("champion", 1)]
    versions = _query(
        pg, "SELECT version, run_id FROM model_versions WHERE name = %s ORDER BY version", name
    )
    assert versions == [(1, run_id), (2, run_id)]


def test_servers_are_gone_after_exit(mlflow_postgres, tmp_path: Path):
    with postgres_server() as pg:
        pid, root = pg.pid(), pg.root
        assert pid is not None and _live(pid) and _listening(pg.port)
    assert not _live(pid) and not _listening(pg.port) and not root.exists()

    # a second mlflow server on the session's database (already migrated, so it starts fast),
    # left through an exception: stopped all the same, uvicorn worker included
    with pytest.raises(LookupError, match="the test's own"):
        with mlflow_server(mlflow_postgres.backend_uri, tmp_path / "second") as server:
            port = int(server.uri.rsplit(":", 1)[1])
            assert len(_live_in_group(server.pid)) >= 2  # mlflow and its uvicorn
            raise LookupError("the test's own failure")
    assert _live_in_group(server.pid) == [] and not _listening(port)


def test_failed_start_reports_log_and_cleans_up(tmp_path: Path):
    """Needs no PostgreSQL: the server's database is one that is not there."""
    dead = "postgresql+psycopg2://mlflow@127.0.0.1:1/mlflow"  # nothing listens on port 1
    started = []
    with pytest.raises((RuntimeError, TimeoutError), match="log tail"):
        with mlflow_server(dead, tmp_path, timeout_s=4) as server:
            started.append(server)  # not reached
    assert not started
    assert _server_cmdlines(tmp_path) == []  # neither mlflow nor its uvicorn is left running


def _server_cmdlines(root: Path) -> list[Path]:
    """cmdline files of live processes started for root (their args name root/artifacts)."""
    found = []
    for entry in Path("/proc").iterdir():
        cmdline = entry / "cmdline"
        try:
            if entry.name.isdigit() and str(root) in cmdline.read_text(errors="ignore"):
                if _live(int(entry.name)):
                    found.append(cmdline)
        except OSError:
            continue
    return found
