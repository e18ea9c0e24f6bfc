"""Shared fixtures: small real models, synthetic data and a tiny real evaluator."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import PurePath
from typing import Any

import pytest
import torch

os.environ.setdefault("MODELTAILOR_CACHE", "/tmp/modeltailor-test-cache")
torch.set_num_threads(1)

# -- `pytest -m "not slow"` starts no server, cluster, CLI process or teacher training ------------

SERVER_PROGRAMS = {"mlflow", "uvicorn", "initdb", "pg_ctl", "postgres", "ray", "raylet", "gcs_server", "modeltailor"}
SERVER_MODULES = ("mlflow", "uvicorn", "ray", "modeltailor.service", "modeltailor.devices.server")
_fast_test: str | None = None  # the node id of the test running now, unless it is marked slow


def _starts_a_server(args: Sequence[Any]) -> bool:
    """A server binary anywhere on the command line (behind runuser/setpriv too), `python -m` one of
    SERVER_MODULES, or a process of Ray's own (its workers run scripts from the ray package)."""
    words = [os.fsdecode(a) for a in args]
    if any(PurePath(w).name in SERVER_PROGRAMS or "site-packages/ray/" in w for w in words):
        return True
    module = words[words.index("-m") + 1] if "-m" in words[:-1] else ""
    return any(module == m or module.startswith(f"{m}.") for m in SERVER_MODULES)


_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]


def _guarded_execute_child(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> Any:
    command = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    if _fast_test is not None and _starts_a_server(command):
        pytest.fail(f"{_fast_test} is not marked slow but starts `{' '.join(map(os.fsdecode, command))[:200]}`: "
                    "mark it (or the test using the fixture that starts it) @pytest.mark.slow", pytrace=False)
    return _execute_child(self, args, *rest, **kwargs)


subprocess.Popen._execute_child = _guarded_execute_child  # type: ignore[attr-defined]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Teacher training checks _fast_test too, where the collected tests imported the teacher's module
    (looked up, not imported: that would cost a run of one light test file seconds)."""
    teacher = sys.modules.get("modeltailor.experiments.search.teacher")
    if teacher is None or getattr(teacher.train_model, "guarded", False):
        return
    train_model = teacher.train_model

    @functools.wraps(train_model)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _fast_test is not None:
            pytest.fail(f"{_fast_test} is not marked slow but trains a teacher: mark it @pytest.mark.slow",
                        pytrace=False)
        return train_model(*args, **kwargs)

    guarded.guarded = True  # type: ignore[attr-defined]
    teacher.train_model = guarded


@contextlib.contextmanager
def _fast_only(item: pytest.Item) -> Iterator[None]:
    """While a test not marked slow sets up and runs, it may start no server and train no teacher.
    (Teardown is left alone: it may stop a server a slow test started, `pg_ctl stop` included.)"""
    global _fast_test
    _fast_test = None if item.get_closest_marker("slow") else item.nodeid
    try:
        yield
    finally:
        _fast_test = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _fast_only(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _fast_only(item):
        return (yield)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own teacher/latency cache and MLflow store."""
    monkeypatch.setenv("MODELTAILOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MODELTAILOR_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def mlflow_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real `mlflow server` on PostgreSQL (tests/pg_mlflow.py), shared by the whole session:
    `.uri` (http://127.0.0.1:PORT), `.backend_uri` (postgresql://...), `.log_path` (the server's
    log). Skips where PostgreSQL is missing, except in CI (`CI` or MODELTAILOR_REQUIRE_POSTGRES=1),
    where that fails."""
    from tests.pg_mlflow import mlflow_on_postgres, required, skip_reason

    reason = skip_reason()
    if reason:
        if required():
            pytest.fail(f"PostgreSQL is required here (CI): {reason}", pytrace=False)
        pytest.skip(reason)
    with mlflow_on_postgres(tmp_path_factory.mktemp("mlflow-postgres")) as running:
        yield running


def synthetic_images(n: int, channels: int, size: int, classes: int, seed: int = 0):
    """Class-dependent blobs: learnable in a few steps, so accuracy numbers mean something."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, channels, size, size, generator=g) * 0.5
    for c in range(classes):
        row, col = divmod(c, max(1, int(classes**0.5) + 1))
        r0, c0 = (row * 2) % size, (col * 2) % size
        x[y == c, :, r0 : r0 + 2, c0 : c0 + 2] += 2.0
    return x, y
