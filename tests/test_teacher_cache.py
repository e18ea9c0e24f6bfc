"""The teacher cache when two searches fill it at once: one trains, the other waits and loads it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from modeltailor.experiments.search import teacher as teacher_module
from modeltailor.experiments.search.teacher import load_teacher, teacher_cache_path
from modeltailor.experiments.search.workbench import load_deployment_data
from modeltailor.experiments.spec.deployment import load_config

pytestmark = pytest.mark.slow  # trains a real teacher


def test_two_searches_train_the_teacher_once(monkeypatch):
    cfg = load_config(None, {"train.epochs": 1, "data.input_size": 8, "model.kwargs": {"width": 0.25}})
    full, _, _ = load_deployment_data(cfg)
    trained = []
    real_train = teacher_module.train_model

    def slow_train(model, splits, config, progress=None, compute=None):
        trained.append(threading.current_thread().name)
        time.sleep(0.5)  # the other search arrives while this one trains
        return real_train(model, splits, config, progress, compute)

    monkeypatch.setattr(teacher_module, "train_model", slow_train)
    results: dict[str, tuple[torch.nn.Module, str]] = {}

    def search(name: str) -> None:
        results[name] = load_teacher(cfg, full)

    threads = [threading.Thread(target=search, args=(name,), name=name) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    path = teacher_cache_path(cfg)
    assert len(trained) == 1, trained
    sources = sorted(source for _, source in results.values())
    assert sources == [str(path), f"trained now, cached at {path}"]
    first, second = (model.state_dict() for model, _ in results.values())
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []
