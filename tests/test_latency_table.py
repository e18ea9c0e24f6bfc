"""Latency tables: node keys, single-node models, persistence, TableDevice, calibration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import typer
from typer.testing import CliRunner

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import ChannelPruningCompressor
from modeltailor.compressors.units import analyze_model
from modeltailor.devices.base import Device, DeviceDefaults
from modeltailor.devices.latency_table import (
    LatencyTable,
    TableDevice,
    graph_nodes,
    measure_nodes,
    node_keys,
    single_node_model,
)
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.devices.measurement import Measurement
from modeltailor.devices.memory import onnx_memory
from modeltailor.errors import ConfigError, DeviceError, ModelTailorError
from modeltailor.experiments.tools.calibrate import calibrate
from modeltailor.models.zoo import build_model
from modeltailor.service.devices_cli import calibrate_command

SIZE = 16
SHAPE = (1, SIZE, SIZE)
FAST = LocalOrtDevice(warmup=5, runs=40, rounds=2)


def tiny(width: float = 0.5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet20", in_channels=1, input_size=SIZE, num_classes=10, width=width)


def pruned(keep: float) -> torch.nn.Module:
    net = tiny()
    example = torch.zeros(1, *SHAPE)
    units = [u.name for u in analyze_model(net, example).units]
    return ChannelPruningCompressor(round_to=4).apply(net, Policy.uniform(units, keep), example)


@pytest.fixture(scope="module")
def tiny_onnx() -> bytes:
    return export_onnx(tiny(), SHAPE)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: bytes) -> Path:
    """A table of the tiny model and a pruned one, fitted on both."""
    table = LatencyTable(device=FAST.describe())
    models = [tiny_onnx, export_onnx(pruned(0.5), SHAPE)]
    for onnx_bytes in models:
        measure_nodes(FAST, onnx_bytes, table, runs=20)
    sums = [table.explain(b).node_sum_ms for b in models]
    table.fit(sums, [FAST.measure(b).latency.median_ms for b in models])
    return table.save(tmp_path_factory.mktemp("tables") / "fast.json")


def test_keys_ignore_weights_but_not_channel_counts(tiny_onnx: bytes) -> None:
    keys = node_keys(tiny_onnx)
    assert keys == node_keys(export_onnx(tiny(seed=1), SHAPE))
    assert keys != node_keys(export_onnx(tiny(width=1.0), SHAPE))
    assert any(k.startswith("Conv|d1x1|g1|k3x3|p1x1x1x1|s1x1|in1x8x16x16|w8x8x3x3") for k in keys)
    assert {k.split("|")[0] for k in keys} == {"Conv", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"}


def test_single_node_models_run_with_the_inferred_output_shape(tiny_onnx: bytes) -> None:
    distinct = {n.key: n for n in graph_nodes(tiny_onnx)}
    for node in distinct.values():
        session = ort.InferenceSession(single_node_model(node), providers=["CPUExecutionProvider"])
        feed = {
            i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)
            for i in session.get_inputs()
        }
        (output,) = session.run(None, feed)
        assert output.shape == node.outputs[0].shape, node.key


def test_save_load_round_trip(table_file: Path, tmp_path: Path) -> None:
    table = LatencyTable.load(table_file)
    table.mape = 12.5
    copy = LatencyTable.load(table.save(tmp_path / "sub" / "t.json"))
    assert copy.entries == table.entries and copy.mape == 12.5
    assert (copy.intercept, copy.scale, copy.device, copy.created) == (
        table.intercept, table.scale, table.device, table.created,
    )


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": 1, "entries": []}), "[]"])
def test_corrupt_or_missing_table_is_one_line_device_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DeviceError, match="unreadable") as info:
        LatencyTable.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ModelTailorError, match="not found"):
        TableDevice("remote", tmp_path / "nope.json")


def test_table_device_predicts(table_file: Path, tiny_onnx: bytes) -> None:
    device = TableDevice("remote", table_file)
    assert isinstance(device, Device)
    result = device.measure(tiny_onnx)
    assert result.latency.runs == 0 and device.last_estimated == 0
    assert result.latency.std_ms == 0 and result.latency.p90_ms == result.latency.median_ms
    assert result.memory == onnx_memory(tiny_onnx) and result.device == "remote"
    real = FAST.measure(tiny_onnx).latency.median_ms
    assert 0.3 * real < result.latency.median_ms < 3 * real
    info = device.describe()
    assert info["kind"] == "table" and info["path"] == str(table_file)
    assert info["measured_on"]["name"] == "cpu-1t"


def test_missing_keys_are_estimated_and_counted(table_file: Path, tiny_onnx: bytes) -> None:
    table = LatencyTable.load(table_file)
    assert table.missing(tiny_onnx) == []
    other = export_onnx(pruned(0.75), SHAPE)
    missing = table.missing(other)
    assert missing and all(k.startswith(("Conv", "Relu", "Add", "Global", "Flatten", "Gemm")) for k in missing)
    prediction = table.explain(other)
    assert prediction.estimated and table.last_estimated == len(prediction.estimated)
    assert math.isfinite(prediction.latency_ms) and prediction.latency_ms > 0


def test_fit_recovers_intercept_and_scale() -> None:
    table = LatencyTable()
    sums = np.array([1.0, 2.0, 3.0, 5.0])
    table.fit(sums, 0.1 + 0.6 * sums)
    assert table.intercept == pytest.approx(0.1) and table.scale == pytest.approx(0.6)
    table.fit([2.0], [1.0])
    assert (table.intercept, table.scale) == (0.0, 0.5)


def test_calibrate_tiny(tmp_path: Path) -> None:
    path = tmp_path / "tables" / "fast.json"
    messages: list[str] = []
    report = calibrate(
        FAST, in_channels=1, input_size=SIZE, architectures=5, held_out=2, table_path=path,
        progress=messages.append, model_kwargs={"width": 0.5}, node_runs=20,
    )
    assert math.isfinite(report.mape) and report.mape >= 0 and messages
    assert len(report.rows) == 2 and report.nodes_measured > 0 and report.seconds > 0
    assert report.table_path == path and path.is_file()
    assert json.loads(json.dumps(report.to_dict()))["rows"][0]["measured_ms"] > 0
    table = LatencyTable.load(path)
    assert table.mape == pytest.approx(report.mape) and table.meta["held_out"] == 2
    heavy, full = export_onnx(pruned(0.25), SHAPE), export_onnx(tiny(), SHAPE)
    assert table.predict(heavy) < table.predict(full)


def test_calibrate_needs_training_architectures(tmp_path: Path, table_file: Path) -> None:
    with pytest.raises(ConfigError, match="architectures"):
        calibrate(FAST, architectures=3, held_out=2, table_path=tmp_path / "t.json")
    with pytest.raises(ConfigError, match="itself a latency table"):
        calibrate(TableDevice("t", table_file), table_path=tmp_path / "t.json")


class MeasureOnly(DeviceDefaults):
    """A device that only measures whole models, e.g. a remote one: nodes are timed through measure()."""

    name = "measure-only"

    def __init__(self) -> None:
        self.calls = 0

    def measure(self, onnx_bytes: bytes) -> Measurement:
        self.calls += 1
        return FAST.measure(onnx_bytes)

    def describe(self) -> dict:
        return {"kind": "fake"}


def test_measure_nodes_through_measure(tiny_onnx: bytes) -> None:
    device, table = MeasureOnly(), LatencyTable()
    timed = measure_nodes(device, tiny_onnx, table)
    assert timed == len(set(node_keys(tiny_onnx))) == len(table)
    assert device.calls == timed + 1 and table.overhead_ms is not None and table.overhead_ms > 0
    assert measure_nodes(device, tiny_onnx, table) == 0 and device.calls == timed + 1


def test_calibrate_command(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(calibrate_command)
    out = tmp_path / "t.json"
    args = ["cpu-1t", "--input-size", "8", "--architectures", "4", "--held-out", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out MAPE:" in result.output and "over 1 architectures" in result.output
    assert out.is_file()
