"""Shared fixtures: small real models, synthetic data and a tiny real evaluator."""

from __future__ import annotations

import os

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
