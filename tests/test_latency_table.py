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
    GraphNode,
    LatencyTable,
    TableDevice,
    graph_nodes,
    measure_nodes,
    node_keys,
    single_node_model,
)
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.devices.measurement import LatencyStats, Measurement
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
    measured = [FAST.measure(b).latency.median_ms for b in models]
    table.fit(sums, measured)
    FITTED_MS.update(zip(models, measured, strict=True))
    FITTED_SUMS.update(zip(models, sums, strict=True))
    return table.save(tmp_path_factory.mktemp("tables") / "fast.json")


FITTED_MS: dict[bytes, float] = {}
"""What the table_file fixture measured for each model it fitted the table on."""
FITTED_SUMS: dict[bytes, float] = {}
"""The table's node sum (ms) of each of those models."""


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
    # the table was fitted on this model and one other with two parameters (intercept, scale): the
    # prediction is the fixture's own measurement of it (exactly, unless the least-squares scale came
    # out negative and a median ratio stands in). A fresh live measurement is not the reference: it
    # differed 2x from the fixture's on a quiet machine (0.130 vs 0.065 ms); live accuracy is bounded on
    # a deterministic device in test_calibrated_table_error_is_bounded_on_a_known_device.
    fitted = FITTED_MS[tiny_onnx]
    table = LatencyTable.load(table_file)
    if table.intercept != 0.0:  # two points, two parameters: through both
        assert result.latency.median_ms == pytest.approx(fitted, rel=1e-6), (result.latency.median_ms, fitted)
    else:  # the fallback: the median of measured / node sum over both models scales the node sum
        ratio = float(np.median([FITTED_MS[m] / FITTED_SUMS[m] for m in FITTED_MS]))
        assert table.scale == pytest.approx(ratio, rel=1e-9)
        assert result.latency.median_ms == pytest.approx(ratio * FITTED_SUMS[tiny_onnx], rel=1e-6)
    assert result.timed == "predicted"
    both = device.measure_alternately({"a": tiny_onnx, "b": tiny_onnx}, repeats=3)
    assert {m.timed for m in both.values()} == {"predicted"}  # nothing timed, and the result says so
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
    # the error itself is timed on this (shared, loaded) machine: 3-63% over four runs here, so it
    # is bounded on a deterministic device below (test_calibrated_table_error_is_bounded_on_a_known_device)
    assert math.isfinite(report.mape) and messages
    assert report.mape == pytest.approx(np.mean([abs(r.predicted_ms / r.measured_ms - 1) * 100 for r in report.rows]))
    assert len(report.rows) == 2 and report.nodes_measured > 0 and report.seconds > 0
    assert report.table_path == path and path.is_file()
    assert json.loads(json.dumps(report.to_dict()))["rows"][0]["measured_ms"] > 0
    table = LatencyTable.load(path)
    assert table.mape == pytest.approx(report.mape) and table.meta["held_out"] == 2
    # that a fitted table ranks a pruned model below the full one is checked on the deterministic
    # device (test_table_device_predicts_a_known_device): here, under load, node timings can invert it


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


class CostModelDevice(DeviceDefaults):
    """A deterministic device: a model's latency is a known function of its nodes, so the table's
    error is a property of the table alone, not of this machine's load.

    One `session.run` costs CALL_MS; a Conv costs its MACs at an efficiency that grows with its
    output channels (wide convs run closer to peak), so a conv key missing from the table, estimated
    on a line in MACs through its neighbours, is off by a little; any other node costs per element
    read and written, only ELEMENTWISE_FUSED of that inside a whole model (fused into the conv
    before it) but all of it when timed alone, which the table's fitted scale has to absorb.
    """

    name = "cost-model"
    kind = "fake"
    CALL_MS = 0.02
    ELEMENTWISE_FUSED = 0.4

    def node_ms(self, node: GraphNode, alone: bool) -> float:
        if node.node.op_type == "Conv":
            channels = node.outputs[0].shape[1]
            return 0.004 + node.cost * 2e-7 * (1 + 8 / channels)
        share = 1.0 if alone or node.node.op_type not in ("Relu", "Add") else self.ELEMENTWISE_FUSED
        return 0.001 + node.cost * 1e-7 * share

    def measure(self, onnx_bytes: bytes) -> Measurement:
        nodes = graph_nodes(onnx_bytes)
        ms = self.CALL_MS + sum(self.node_ms(n, alone=len(nodes) == 1) for n in nodes)
        latency = LatencyStats(ms, ms, ms, 0.0, ms, 0.0, 1)
        return Measurement(latency=latency, memory=onnx_memory(onnx_bytes), device=self.name)

    def describe(self) -> dict:
        return {"kind": "fake", "name": self.name}


TABLE_MAPE_BOUND = 1.0
"""Held-out MAPE (%) bound of a table calibrated on CostModelDevice: 0.34% when it was set (rows 0.25,
0.32, 0.44%; train 0.03%), the same on every run and machine (no timing involved). Broken on
purpose, the table landed far above it: a missing key read from its nearest neighbour unscaled
2.6% (a row 6.8%), from the mean of its neighbours 12.4%, only a scale fitted 2.6% (train 1.6%),
nothing fitted 14.0%. (Not subtracting the call overhead goes unseen here: pruning keeps the node
count, so the intercept absorbs it.) The docs quote 3.8-8.7% for the real cpu-1t."""


def test_calibrated_table_error_is_bounded_on_a_known_device(tmp_path: Path) -> None:
    device = CostModelDevice()
    report = calibrate(
        device, in_channels=1, input_size=SIZE, architectures=8, held_out=3, table_path=tmp_path / "t.json",
        model_kwargs={"width": 0.5}, node_runs=3,
    )
    assert report.estimated_keys > 0  # the held-out variants have convs the table never timed
    assert len(report.rows) == 3 and report.mape == pytest.approx(np.mean([r.error_pct for r in report.rows]))
    assert report.mape < TABLE_MAPE_BOUND, [r.error_pct for r in report.rows]
    assert max(r.error_pct for r in report.rows) < 2 * TABLE_MAPE_BOUND
    assert report.train_mape < TABLE_MAPE_BOUND / 2


def test_table_device_predicts_a_known_device(tmp_path: Path) -> None:
    """Fitted on a deterministic device, the table predicts the models it was fitted on within 0.1%
    and one it never saw (35 of its nodes estimated) within 3% (0.01% and 1.2% when this was written)."""
    device = CostModelDevice()
    table = LatencyTable(device=device.describe())
    models = [export_onnx(tiny(), SHAPE), export_onnx(pruned(0.5), SHAPE), export_onnx(pruned(0.25), SHAPE)]
    for onnx_bytes in models:
        measure_nodes(device, onnx_bytes, table, runs=3)
    truth = [device.measure(b).latency.median_ms for b in models]
    table.fit([table.explain(b).node_sum_ms for b in models], truth)
    predicted = TableDevice("remote", table.save(tmp_path / "t.json"))
    for onnx_bytes, ms in zip(models, truth, strict=True):
        assert predicted.measure(onnx_bytes).latency.median_ms == pytest.approx(ms, rel=0.001)
    unseen = export_onnx(pruned(0.75), SHAPE)
    assert predicted.measure(unseen).latency.median_ms == pytest.approx(device.measure(unseen).latency.median_ms, rel=0.03)
    assert predicted.last_estimated > 0
