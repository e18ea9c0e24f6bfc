"""A tiny real search end to end: outputs, MLflow run, apply, interruption, bring-your-own model."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from modeltailor.compressors.distill import predict_logits
from modeltailor.devices.session import run_onnx
from modeltailor.errors import ModelLoadError
from modeltailor.experiments.search.run import LogReporter, run_search
from modeltailor.experiments.search.teacher import load_teacher, teacher_cache_path
from modeltailor.experiments.search.warm_start import FROM_TAG
from modeltailor.experiments.search.workbench import load_deployment_data
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.spec.summary import SearchSummary
from modeltailor.experiments.tools.apply import rebuild
from modeltailor.experiments.tracking.registry import query_best
from modeltailor.experiments.tracking.tracker import get_run_summary
from tests.test_summary import key_paths, sample_summary

pytestmark = pytest.mark.slow

TINY = {
    "model.kwargs": {"width": 0.5},
    "data.input_size": 16,
    "train.epochs": 3,
    "search.episodes": 3,
    "search.round_to": 2,
    "search.calibration_policies": 4,  # the limiter's latency model: enough to fit one stage
    "search.surrogate.pretrain_episodes": 40,  # ppo's agent after its seed episodes: enough to have learned
    "search.surrogate.round_episodes": 10,
    "recovery.episode_steps": 5,
    "recovery.final_steps": 10,
    "recovery.finalists": 1,
    "device.runs": 10,
    "device.warmup": 2,
}

SUMMARY_KEYS = {
    "baseline", "best", "speedup", "accuracy_drop", "pareto", "policy", "episodes",
    "search_seconds", "device", "classes", "mlflow_run_id",
}
ENTRY_KEYS = {"accuracy", "latency_ms", "memory_bytes", "params"}


@pytest.fixture
def tiny_config(tmp_path):
    return load_config(None, {**TINY, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"})


def test_search_writes_the_contract_and_tracks_it(tmp_path, tiny_config):
    out = tmp_path / "out"
    run = run_search(tiny_config, out)
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert ENTRY_KEYS <= summary["baseline"].keys() and ENTRY_KEYS <= summary["best"].keys()
    assert summary["episodes"] == 3 and summary["classes"] == list(range(10))
    assert summary["final_timing"] == "alternating"  # local ORT: baseline and best timed in interleaved rounds
    assert summary["speedup"] == pytest.approx(summary["baseline"]["latency_ms"] / summary["best"]["latency_ms"])
    assert summary["accuracy_drop"] == pytest.approx(
        100 * (summary["baseline"]["accuracy"] - summary["best"]["accuracy"])
    )
    assert summary["best"]["params"] < summary["baseline"]["params"]
    assert summary["onnx_parity"]["metric"] == "max_abs_logit_diff" and summary["onnx_parity"]["value"] < 1e-4
    assert SearchSummary.model_validate(summary) == run.summary
    # the same keys as any summary, an int8 model's included
    assert key_paths(summary) == key_paths(sample_summary(quantized=True).model_dump(mode="json"))
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 3
    objective = summary["objective"]  # the default: 45% of the baseline's latency
    assert objective["reward"] == "BudgetReward" and objective["max_latency_ms"] > 0
    assert objective["met_at_final_measurement"] == (summary["best"]["latency_ms"] <= objective["max_latency_ms"])
    # the ratio is of the baseline timed alongside the chosen model, not of the one timed at the start
    assert objective["max_latency_ms"] == pytest.approx(0.45 * summary["baseline"]["latency_ms"])
    tracked = get_run_summary(tiny_config.tracking.uri, summary["mlflow_run_id"])
    assert {"summary.json", "policy.json", "model.onnx", "pareto.png"} <= set(tracked["artifacts"])
    assert tracked["tags"]["model"] == "resnet20" and tracked["status"] == "FINISHED"
    assert tracked["metrics"]["final/speedup"] == pytest.approx(summary["speedup"])
    assert run.result.best is not None
    # registered: a version of the device's model, champion of its deployment, linked from the run's description
    registered = run.extra["registered"]
    assert registered.run_id == summary["mlflow_run_id"] and registered.device == "cpu-1t"
    assert registered.latency_ms == summary["best"]["latency_ms"] and registered.aliases
    note = tracked["tags"]["mlflow.note.content"]
    assert f"versions/{registered.version}" in note and "pareto.png" in note and "| chosen |" in note
    answer = query_best(tiny_config.tracking.uri, "cpu-1t")
    assert answer.chosen.version == registered.version


def test_apply_rebuilds_the_searched_model(tmp_path, tiny_config):
    out = tmp_path / "out"
    run_search(tiny_config, out)
    rebuilt = rebuild(tiny_config, out / "policy.json", tmp_path / "apply", out / "model.pt", 0)
    x = torch.randn(5, 1, 16, 16)
    onnx_logits = run_onnx((out / "model.onnx").read_bytes(), x.numpy())
    torch_logits = predict_logits(rebuilt["model"], x).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert rebuilt["params"] == summary["best"]["params"]


class InterruptAfter(LogReporter):
    def __init__(self, episodes: int) -> None:
        self.left = episodes

    def episode(self, record, best) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_agent_is_logged_and_warm_starts_the_next_deployment(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELTAILOR_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_search(load_config(None, {**TINY, "tracking.uri": uri}), tmp_path / "first").summary
    tracked = get_run_summary(uri, first.mlflow_run_id)
    assert "agent/agent_checkpoint.pt" in tracked["artifacts"]
    assert {"ppo/approx_kl", "ppo/entropy_loss", "ppo/value_loss"} <= tracked["metrics"].keys()
    assert FROM_TAG not in tracked["tags"]  # nothing to start from: cold
    messages: list[str] = []
    reporter = LogReporter()
    reporter.message = messages.append  # type: ignore[method-assign]
    later = {**TINY, "tracking.uri": uri, "classes": [0, 3, 7], "search.warm_start": "auto"}
    second = run_search(load_config(None, later), tmp_path / "second", reporter).summary
    assert get_run_summary(uri, second.mlflow_run_id)["tags"][FROM_TAG] == first.mlflow_run_id
    assert any(m.startswith("warm start (auto) from the agent of") for m in messages)


@pytest.mark.parametrize("agent", ["ppo", "random"])
def test_interrupted_search_keeps_finished_episodes(tmp_path, agent):
    cfg = load_config(None, {**TINY, "search.episodes": 6, "search.searcher": agent, "tracking.enabled": False})
    out = tmp_path / "out"
    run = run_search(cfg, out, InterruptAfter(2))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["episodes"] == 2
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    assert (out / "model.onnx").stat().st_size > 0
    assert run.result.interrupted


def test_bring_your_own_model(tmp_path, monkeypatch):
    package = tmp_path / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent('''
        from torch import nn

        def small_cnn(num_classes=10, width=8):
            return nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
            )
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymodels", None)
    from mymodels.nets import small_cnn  # type: ignore[import-not-found]

    settings = {**TINY, "model.kwargs": {"width": 8}, "model.factory": "mymodels.nets:small_cnn", "train.epochs": 15,
                "tracking.enabled": False, "objective.kind": "tradeoff"}
    cfg = load_config(None, settings)
    with pytest.raises(ModelLoadError, match="has no weights: train it .*modeltailor train"):
        run_search(cfg, tmp_path / "untrained")  # never a search on an untrained network
    weights = tmp_path / "small.pt"
    torch.save(small_cnn(width=8).state_dict(), weights)
    with pytest.raises(ModelLoadError, match="near chance .* looks untrained"):
        run_search(load_config(None, {**settings, "model.weights": str(weights)}), tmp_path / "random-weights")
    full, _, _ = load_deployment_data(cfg)
    teacher, source = load_teacher(cfg, full, train=True)  # what `modeltailor train` does: trained and cached
    assert source.startswith("trained now, cached at") and "small_cnn-digits-" in source
    run = run_search(cfg, tmp_path / "out")
    assert run.summary.teacher == str(teacher_cache_path(cfg))
    assert run.summary.best.params <= run.summary.baseline.params
