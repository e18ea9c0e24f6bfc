"""The registry: registration, idempotency, champion aliases, queries, downloads, the CLI.

Search output folders here are built without searching: a real (tiny) ONNX model, a summary made
like build_summary makes it (tests/test_summary.py), a real MLflow run. Their metrics are set per
test, so "a later search finds a better model" is exact rather than left to chance; a real search
and a real campaign register through the same function (tests/test_search_e2e.py,
tests/test_campaign.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modeltailor.compressors.export import export_onnx
from modeltailor.env.reward import AccuracyFloorReward, BudgetReward
from modeltailor.errors import ModelTailorError, NoMatchError, NotFoundError
from modeltailor.experiments.search.finalize import describe_objective
from modeltailor.experiments.tracking import registry
from modeltailor.experiments.tracking.tracker import KIND, KIND_TAG, Tracker
from modeltailor.service.cli import app
from tests.test_cli import run_main
from tests.test_summary import sample_summary

BUDGET = describe_objective(BudgetReward(max_latency_ms=0.25), met=True)
DEVICE = {"name": "cpu-1t", "kind": "local-ort", "intra_op_threads": 1, "onnxruntime": "1.31.1"}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, Tracker(uri, "modeltailor")


def _onnx(classes: int, width: int) -> bytes:
    torch.manual_seed(width)
    model = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(width, classes)).eval()
    return export_onnx(model, (1, 16, 16))


def make_out(
    root: Path, tracker: Tracker, name: str, *, accuracy: float, latency_ms: float, memory: int = 1000,
    classes: tuple[int, ...] = (0, 3, 7), device: dict | None = None, objective=BUDGET,
    deployment: str | None = None, spread_ms: float = 0.0,
) -> Path:
    """A finished search's folder (model.onnx, policy.json, summary.json) with its MLflow run; its final
    measurement's p90 lies `spread_ms` above its median."""
    out = root / name
    out.mkdir(parents=True)
    base = sample_summary()
    run_id = tracker.start_run(deployment or name)
    tracker.end_run()
    summary = base.model_copy(update={
        "deployment": deployment or name,
        "best": base.best.model_copy(update={"accuracy": accuracy, "latency_ms": latency_ms, "memory_bytes": memory,
                                             "latency_p90_ms": latency_ms + spread_ms,
                                             "latency_spread": spread_ms / latency_ms}),
        "speedup": base.baseline.latency_ms / latency_ms,
        "memory_reduction": base.baseline.memory_bytes / memory,
        "objective": objective,
        "classes": list(classes), "class_names": [str(c) for c in classes], "subset": len(classes) < 10,
        "device": device or DEVICE, "mlflow_run_id": run_id,
        "config": {"name": name, "model": {"name": "resnet20"}, "data": {"name": "digits"},
                   "objective": {"kind": objective.name, "limits": objective.limits()}},
    })
    (out / "model.onnx").write_bytes(_onnx(len(classes), 4))
    (out / "policy.json").write_text(json.dumps(summary.policy.model_dump(mode="json")))
    (out / "summary.json").write_text(json.dumps(summary.model_dump(mode="json")))
    return out


def _alias_version(uri: str, alias: str) -> int:
    return int(mlflow.MlflowClient(uri).get_model_version_by_alias("modeltailor-cpu-1t", alias).version)


def test_registering_logs_an_onnx_model_linked_to_its_run_and_tags_the_version(tmp_path, store):
    uri, tracker = store
    out = make_out(tmp_path, tracker, "edge", accuracy=0.9, latency_ms=0.2)
    version = registry.register_search(uri, out)
    client = mlflow.MlflowClient(uri)
    mv = client.get_model_version("modeltailor-cpu-1t", str(version.version))
    summary = json.loads((out / "summary.json").read_text())
    assert mv.run_id == summary["mlflow_run_id"] and version.model_id and mv.source == f"models:/{version.model_id}"
    assert mv.tags["classes"] == "0,3,7" and mv.tags["device"] == "cpu-1t" and mv.tags["objective"] == "budget"
    assert float(mv.tags["latency_ms"]) == 0.2 and version.aliases == [registry.deployment_alias(
        registry.SearchSummary.model_validate(summary))]
    logged = client.get_logged_model(version.model_id)
    assert logged.source_run_id == mv.run_id  # the logged model is the run's
    run = client.get_run(mv.run_id)
    assert version.model_id in [o.model_id for o in run.outputs.model_outputs]
    model_dir = Path(mlflow.artifacts.download_artifacts(logged.artifact_location, dst_path=str(tmp_path / "m")))
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "onnx:" in mlmodel and "CPUExecutionProvider" in mlmodel and "signature:" in mlmodel
    assert (model_dir / "extra_files" / "policy.json").is_file() and (model_dir / "input_example.json").is_file()
    assert client.get_experiment(logged.experiment_id).tags[KIND_TAG] == KIND


def test_download_gives_the_same_model_its_summary_and_policy(tmp_path, store):
    uri, tracker = store
    out = make_out(tmp_path, tracker, "edge", accuracy=0.9, latency_ms=0.2)
    version = registry.register_search(uri, out)
    files = registry.download_version(uri, "cpu-1t", version.version, tmp_path / "dl")
    assert files["model.onnx"].read_bytes() == (out / "model.onnx").read_bytes()
    assert json.loads(files["summary.json"].read_text()) == json.loads((out / "summary.json").read_text())
    session = ort.InferenceSession(str(files["model.onnx"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 16, 16), np.float32)})[0]
    assert logits.shape == (1, len(json.loads(files["summary.json"].read_text())["classes"]))


def test_registering_the_same_run_again_changes_nothing(tmp_path, store):
    uri, tracker = store
    out = make_out(tmp_path, tracker, "edge", accuracy=0.9, latency_ms=0.2)
    first = registry.register_search(uri, out)
    again = registry.register_search(uri, out)
    assert again.version == first.version
    assert len(registry.device_versions(uri, "cpu-1t")) == 1


def test_a_second_campaign_moves_only_the_champion_it_beats(tmp_path, store):
    uri, tracker = store
    first_a = registry.register_search(uri, make_out(tmp_path / "c1", tracker, "a", accuracy=0.90, latency_ms=0.20,
                                                     deployment="c037"))
    first_b = registry.register_search(uri, make_out(tmp_path / "c1", tracker, "b", accuracy=0.95, latency_ms=0.20,
                                                     classes=tuple(range(10)), deployment="all"))
    alias_a, alias_b = first_a.aliases[0], first_b.aliases[0]
    assert alias_a != alias_b
    # the second campaign: the same two deployments; a better model for c037, a worse one for all
    second_a = registry.register_search(uri, make_out(tmp_path / "c2", tracker, "a", accuracy=0.93, latency_ms=0.21,
                                                      deployment="c037"))
    second_b = registry.register_search(uri, make_out(tmp_path / "c2", tracker, "b", accuracy=0.94, latency_ms=0.19,
                                                      classes=tuple(range(10)), deployment="all"))
    assert _alias_version(uri, alias_a) == second_a.version
    assert _alias_version(uri, alias_b) == first_b.version and second_b.aliases == []
    # over budget (0.25 ms) loses even with more accuracy: the objective decides, not accuracy alone
    third_a = registry.register_search(uri, make_out(tmp_path / "c3", tracker, "a", accuracy=0.99, latency_ms=0.30,
                                                     deployment="c037"))
    assert _alias_version(uri, alias_a) == second_a.version and third_a.aliases == []


def test_an_accuracy_objective_ranks_by_speed_and_has_its_own_alias(tmp_path, store):
    uri, tracker = store
    floor = describe_objective(AccuracyFloorReward(min_accuracy=0.9), met=True)
    budget = registry.register_search(uri, make_out(tmp_path, tracker, "a", accuracy=0.95, latency_ms=0.2))
    slow = registry.register_search(uri, make_out(tmp_path, tracker, "b", accuracy=0.95, latency_ms=0.3,
                                                  objective=floor))
    fast = registry.register_search(uri, make_out(tmp_path, tracker, "c", accuracy=0.91, latency_ms=0.1,
                                                  objective=floor))
    assert budget.aliases != slow.aliases  # another objective, another deployment
    assert _alias_version(uri, slow.aliases[0]) == fast.version  # faster within the floor wins
    below = registry.register_search(uri, make_out(tmp_path, tracker, "d", accuracy=0.85, latency_ms=0.05,
                                                   objective=floor))
    assert below.aliases == [] and _alias_version(uri, slow.aliases[0]) == fast.version


def test_a_champion_measured_on_another_profile_is_replaced(tmp_path, store):
    uri, tracker = store
    old = registry.register_search(uri, make_out(tmp_path, tracker, "a", accuracy=0.95, latency_ms=0.1))
    new_ort = {**DEVICE, "onnxruntime": "9.9.9"}
    new = registry.register_search(uri, make_out(tmp_path, tracker, "b", accuracy=0.90, latency_ms=0.2,
                                                 device=new_ort))
    assert new.aliases == old.aliases and _alias_version(uri, new.aliases[0]) == new.version


def test_a_faster_version_takes_the_alias_only_past_the_measured_spread(tmp_path, store):
    uri, tracker = store
    floor = describe_objective(AccuracyFloorReward(min_accuracy=0.9), met=True)  # latency decides

    def register(name: str, latency_ms: float, spread_ms: float) -> registry.VersionInfo:
        return registry.register_search(uri, make_out(tmp_path, tracker, name, accuracy=0.95, latency_ms=latency_ms,
                                                      spread_ms=spread_ms, objective=floor))

    champion = register("a", 0.200, 0.02)
    assert float(mlflow.MlflowClient(uri).get_model_version("modeltailor-cpu-1t", str(champion.version))
                 .tags["latency_spread_ms"]) == pytest.approx(0.02)
    alias = champion.aliases[0]
    noise = register("b", 0.170, 0.02)  # 0.03 ms faster, the spreads add up to 0.04 ms
    assert noise.aliases == [] and _alias_version(uri, alias) == champion.version
    better = register("c", 0.150, 0.02)  # 0.05 ms faster: past the 0.04 ms
    assert _alias_version(uri, alias) == better.version


def test_versions_registered_without_a_spread_compare_as_before(tmp_path, store):
    uri, tracker = store
    floor = describe_objective(AccuracyFloorReward(min_accuracy=0.9), met=True)
    old = registry.register_search(uri, make_out(tmp_path, tracker, "a", accuracy=0.95, latency_ms=0.2,
                                                 objective=floor))
    client = mlflow.MlflowClient(uri)
    client.delete_model_version_tag("modeltailor-cpu-1t", str(old.version), "latency_spread_ms")  # an older version
    new = registry.register_search(uri, make_out(tmp_path, tracker, "b", accuracy=0.95, latency_ms=0.199,
                                                 objective=floor))
    assert _alias_version(uri, old.aliases[0]) == new.version  # spread 0 on both sides: the plain rule


def test_best_picks_within_the_limits_and_lists_the_pareto_runners_up(tmp_path, store):
    uri, tracker = store
    v = {name: registry.register_search(uri, make_out(tmp_path, tracker, name, accuracy=acc, latency_ms=ms,
                                                      memory=mem)).version
         for name, acc, ms, mem in [("fast", 0.90, 0.10, 800), ("mid", 0.94, 0.18, 900), ("slow", 0.97, 0.30, 2000),
                                    ("dominated", 0.89, 0.20, 1500)]}
    answer = registry.query_best(uri, "cpu-1t", classes=[7, 3, 0], max_latency_ms=0.2)
    assert answer.chosen.version == v["mid"]
    assert [r.version for r in answer.runners_up] == [v["fast"]]  # "dominated" fits but is dominated
    assert answer.policy["units"] and answer.filters["classes"] == [0, 3, 7]
    assert registry.query_best(uri, "cpu-1t", [0, 3, 7], min_accuracy=0.96).chosen.version == v["slow"]
    assert registry.query_best(uri, "cpu-1t", [0, 3, 7], max_memory_bytes=850).chosen.version == v["fast"]
    with pytest.raises(NoMatchError, match=r"meets the limits; closest: v\d+: accuracy 0.9000, 0.100 ms") as caught:
        registry.query_best(uri, "cpu-1t", [0, 3, 7], max_latency_ms=0.05)
    assert caught.value.closest[0]["version"] == v["fast"]
    with pytest.raises(NoMatchError, match="registered class sets: 0,3,7"):
        registry.query_best(uri, "cpu-1t", [1, 2])


def test_unknown_devices_and_impossible_filters_are_one_line_errors(tmp_path, store):
    uri, tracker = store
    registry.register_search(uri, make_out(tmp_path, tracker, "a", accuracy=0.9, latency_ms=0.2))
    with pytest.raises(NotFoundError, match=r"^device 'cpu-9t' has no registered models; devices in the registry: cpu-1t$"):
        registry.query_best(uri, "cpu-9t")
    with pytest.raises(ModelTailorError, match="max_latency_ms must be a positive number"):
        registry.query_best(uri, "cpu-1t", max_latency_ms=-1)
    with pytest.raises(ModelTailorError, match=r"min_accuracy is a fraction in \[0, 1\]"):
        registry.query_best(uri, "cpu-1t", min_accuracy=95)
    with pytest.raises(ModelTailorError, match="is not a device name"):
        registry.query_best(uri, "../etc")
    with pytest.raises(NotFoundError, match="has no version 7"):
        registry.download_file(uri, "cpu-1t", 7, "model.onnx")
    with pytest.raises(NotFoundError, match="is not served"):
        registry.download_file(uri, "cpu-1t", 1, "model.pt")


def test_the_cli_answers_what_the_library_answers(tmp_path, store, monkeypatch, capsys):
    uri, tracker = store
    registry.register_search(uri, make_out(tmp_path, tracker, "a", accuracy=0.9, latency_ms=0.2))
    runner = CliRunner()
    result = runner.invoke(app, ["best", "--device", "cpu-1t", "--classes", "0,3,7", "--json", "--tracking-uri", uri,
                                 "--download", str(tmp_path / "dl")])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer == {**registry.query_best(uri, "cpu-1t", [0, 3, 7]).model_dump(mode="json"),
                      "downloaded": answer["downloaded"]}
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["model.onnx", "policy.json", "summary.json"]
    listed = runner.invoke(app, ["registry", "list", "--tracking-uri", uri])
    assert listed.exit_code == 0 and "cpu-1t" in listed.output and "champion-resnet20-digits-c0_3_7" in listed.output
    code, err = run_main(monkeypatch, capsys, "best", "--device", "cpu-1t", "--max-latency-ms", "0.01",
                         "--tracking-uri", uri)
    assert code == 2 and "no version on 'cpu-1t' meets the limits" in err and "Traceback" not in err


def test_registry_add_registers_a_folder_once(tmp_path, store, monkeypatch, capsys):
    uri, tracker = store
    out = make_out(tmp_path, tracker, "a", accuracy=0.9, latency_ms=0.2)
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["registry", "add", str(out), "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
    assert len(registry.device_versions(uri, "cpu-1t")) == 1
    code, err = run_main(monkeypatch, capsys, "registry", "add", str(tmp_path / "nope"), "--tracking-uri", uri)
    assert code == 2 and "is not a folder" in err


@pytest.mark.slow
def test_the_registry_works_through_a_real_server_on_postgresql(tmp_path, mlflow_postgres):
    """The team setup: registration, champion moves, queries and downloads over HTTP, PostgreSQL behind."""
    uri = mlflow_postgres.uri
    tracker = Tracker(uri, f"registry-{tmp_path.name}")
    device = {**DEVICE, "name": f"pg-{tmp_path.name[-12:].strip('_')}"}  # the session's server is shared
    first = registry.register_search(uri, make_out(tmp_path / "1", tracker, "a", accuracy=0.90, latency_ms=0.2,
                                                   device=device))
    better = registry.register_search(uri, make_out(tmp_path / "2", tracker, "a", accuracy=0.95, latency_ms=0.2,
                                                    device=device))
    assert first.aliases == better.aliases and first.version != better.version  # the alias moved to the better
    held = mlflow.MlflowClient(uri).get_model_version_by_alias(registry.model_name(device["name"]), better.aliases[0])
    assert int(held.version) == better.version
    assert registry.register_search(uri, tmp_path / "2" / "a").version == better.version
    answer = registry.query_best(uri, device["name"], [0, 3, 7])
    assert answer.chosen.version == better.version and answer.runners_up == []
    files = registry.download_version(uri, device["name"], better.version, tmp_path / "dl")
    assert files["model.onnx"].read_bytes() == (tmp_path / "2" / "a" / "model.onnx").read_bytes()
    assert device["name"] in [d.device for d in registry.registered_devices(uri)]
