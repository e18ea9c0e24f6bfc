"""Shared fixtures: small real models, synthetic data and a tiny real evaluator."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

os.environ.setdefault("MODELTAILOR_CACHE", "/tmp/modeltailor-test-cache")
torch.set_num_threads(1)


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
