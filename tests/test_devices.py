"""ONNX export, memory accounting and latency devices (modeltailor.env)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from modeltailor.compressors.export import export_onnx, onnx_matches_torch
from modeltailor.devices.base import Device
from modeltailor.devices.cache import CachedDevice, architecture_signature
from modeltailor.devices.local import LocalOrtDevice, time_alternately
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats, onnx_memory, tensor_bytes
from modeltailor.devices.profiles import get_device
from modeltailor.devices.session import GRAPH_OPT_LEVELS, run_onnx
from modeltailor.errors import DeviceError

SHAPE = (3, 16, 16)


def conv_net(width: int = 8, depth: int = 2, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """conv-bn-relu stack + global pool + linear, with non-trivial BN statistics."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for _ in range(depth):
        layers += [
            nn.Conv2d(cin, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.5)
    return model


def op_types(onnx_bytes: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node]


@pytest.fixture(scope="module")
def small_onnx() -> bytes:
    return export_onnx(conv_net(), SHAPE)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_round_trip_matches_torch(dynamic: bool) -> None:
    model = conv_net()
    data = export_onnx(model, SHAPE, dynamic_batch=dynamic)
    x = torch.randn(5, *SHAPE)
    assert onnx_matches_torch(model, data, x) < 1e-4
    expected = model.eval()(x).detach().numpy()
    np.testing.assert_allclose(run_onnx(data, x.numpy()), expected, atol=1e-4, rtol=1e-3)


def test_mismatching_model_is_reported(small_onnx: bytes) -> None:
    with pytest.raises(DeviceError, match="ONNX output differs from torch"):
        onnx_matches_torch(conv_net(seed=1), small_onnx, torch.randn(2, *SHAPE))


def test_export_does_not_mutate_model(tmp_path: Path) -> None:
    model = conv_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "sub" / "m.onnx"
    data = export_onnx(model, SHAPE, path=path)
    assert path.read_bytes() == data
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_folds_batchnorm_and_keeps_fresh_biases_separate() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.BatchNorm2d(4),
    )
    data = export_onnx(model, SHAPE)  # fresh BN: both folded biases are all zeros
    graph = onnx.load_from_string(data).graph
    assert op_types(data) == ["Conv", "Conv"]  # BN folded, no Identity aliases
    assert all(len(n.input) == 3 for n in graph.node)  # bias=False conv gained a bias
    assert len(graph.initializer) == 4


def test_export_bad_shape_is_device_error() -> None:
    with pytest.raises(DeviceError, match="input shape"):
        export_onnx(conv_net(), (0, 16, 16))
    with pytest.raises(DeviceError, match="could not export"):
        export_onnx(conv_net(), (5, 16, 16))  # wrong channel count


# --------------------------------------------------------------------------- memory


def test_weight_bytes_equal_folded_parameters(small_onnx: bytes) -> None:
    model = conv_net()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linear = model[-1]
    folded = sum(c.weight.numel() + c.out_channels for c in convs)  # BN -> one bias/channel
    expected = 4 * (folded + sum(p.numel() for p in linear.parameters()))
    stats = onnx_memory(small_onnx)
    assert stats.weight_bytes == expected
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert stats.weight_bytes < state_bytes  # BN's 4 vectors became 1 folded bias
    assert stats.total_bytes == stats.weight_bytes + stats.peak_activation_bytes
    assert stats.onnx_file_bytes == len(small_onnx)


def test_peak_activation_of_conv_chain_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1), nn.Conv2d(2, 8, 1)
    )
    stats = onnx_memory(export_onnx(model, (3, 8, 8)))
    x, a, b, c = (4 * ch * 8 * 8 for ch in (3, 8, 2, 8))  # 768, 2048, 512, 2048 bytes
    # conv1: x + a live; x is freed; conv2: a + b; a freed; conv3: b + c.
    assert stats.peak_activation_bytes == max(x + a, a + b, b + c) == 2816
    assert stats.peak_activation_bytes < x + a + b  # x really was freed


def residual_graph(elem: int = TensorProto.FLOAT) -> bytes:
    """a = relu(x); b = relu(a); c = relu(b); y = a + c (a stays live) ; plus a Constant."""
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node(
            "Constant", [], ["k"], value=helper.make_tensor("kv", elem, [10], [0.0] * 10)
        ),
        helper.make_node("Add", ["a", "c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "res", [vi("x", elem, [1, 100])], [vi("y", elem, [1, 100])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(("elem", "size"), [(TensorProto.FLOAT, 4), (TensorProto.FLOAT16, 2)])
def test_liveness_keeps_residual_input_alive(elem: int, size: int) -> None:
    stats = onnx_memory(residual_graph(elem))
    assert stats.peak_activation_bytes == 3 * 100 * size  # a, b, c live at the third Relu
    assert stats.weight_bytes == 10 * size  # Constant output counts as a weight


def test_element_sizes() -> None:
    assert tensor_bytes((2, 3), TensorProto.INT8) == 6
    assert tensor_bytes((2, 3), TensorProto.FLOAT16) == 12
    assert tensor_bytes((2, 3), TensorProto.INT64) == 48
    assert tensor_bytes((3,), TensorProto.INT4) == 2


def test_dynamic_batch_memory_is_batch_one(small_onnx: bytes) -> None:
    dynamic = onnx_memory(export_onnx(conv_net(), SHAPE, dynamic_batch=True))
    static = onnx_memory(small_onnx)
    assert dynamic.weight_bytes == static.weight_bytes
    assert dynamic.peak_activation_bytes == static.peak_activation_bytes


def quantize_qdq(float_bytes: bytes, tmp_path: Path) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter(
                {"input": rng.standard_normal((1, *SHAPE)).astype(np.float32)} for _ in range(4)
            )

        def get_next(self) -> dict | None:
            return next(self.items, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(float_bytes)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    return dst.read_bytes()


def test_int8_qdq_weights_are_about_four_times_smaller(small_onnx: bytes, tmp_path: Path) -> None:
    qdq = quantize_qdq(small_onnx, tmp_path)
    assert "DequantizeLinear" in op_types(qdq)
    graph = onnx.load_from_string(qdq).graph
    int8_conv = [
        t for t in graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4
    ]
    float_conv = [
        t for t in onnx.load_from_string(small_onnx).graph.initializer if len(t.dims) == 4
    ]
    int8_bytes = sum(tensor_bytes(tuple(t.dims), t.data_type) for t in int8_conv)
    float_bytes = sum(tensor_bytes(tuple(t.dims), t.data_type) for t in float_conv)
    assert len(int8_conv) == len(float_conv) == 2 and 4 * int8_bytes == float_bytes
    q_stats, f_stats = onnx_memory(qdq), onnx_memory(small_onnx)
    assert f_stats.weight_bytes / q_stats.weight_bytes > 2.5  # int32 biases, scales dilute 4x
    # dequantized weights are weight-derived, not activations
    assert q_stats.peak_activation_bytes <= f_stats.peak_activation_bytes
    assert np.abs(run_onnx(qdq, np.zeros((2, *SHAPE), np.float32))).max() < 1e3


# --------------------------------------------------------------------------- latency


def test_latency_stats_are_sane(small_onnx: bytes) -> None:
    device = get_device("cpu-1t", warmup=3, runs=30)
    result = device.measure(small_onnx)
    lat = result.latency
    assert lat.runs == 30
    assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms
    # 30 real timings are never all equal; the pooled statistics agree with each other
    assert lat.std_ms > 0 and 0 < lat.iqr_ms <= lat.p90_ms - lat.min_ms
    assert lat.min_ms < lat.mean_ms and lat.pooled_median_ms is not None
    assert lat.min_ms <= lat.pooled_median_ms <= lat.p90_ms
    assert lat.spread == pytest.approx((lat.p90_ms - lat.median_ms) / lat.median_ms)
    assert result.device == "cpu-1t" and result.memory == onnx_memory(small_onnx)
    flat = result.to_dict()
    assert set(flat) == {
        "latency_ms",
        "latency_p90_ms",
        "latency_spread",
        "memory_bytes",
        "weight_bytes",
        "activation_bytes",
        "onnx_bytes",
    }
    assert flat["latency_ms"] == lat.median_ms and flat["memory_bytes"] == result.memory.total_bytes
    assert LatencyStats.from_dict(lat.to_dict()) == lat


def test_latency_stats_from_known_rounds() -> None:
    """median = the quietest round's median; the rest pools every run."""
    quiet, busy = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([4.0, 6.0, 8.0, 10.0, 12.0])
    lat = LatencyStats.from_rounds([busy, quiet])
    both = np.concatenate([busy, quiet])
    assert lat.runs == 10 and lat.median_ms == 3.0 and lat.pooled_median_ms == 4.5
    assert (lat.min_ms, lat.mean_ms) == (1.0, 5.5) and lat.std_ms == pytest.approx(float(np.std(both)))
    assert lat.p90_ms == pytest.approx(10.2) and lat.iqr_ms == pytest.approx(7.5 - 3.25)
    assert lat.spread == pytest.approx((10.2 - 3.0) / 3.0)


def test_min_time_extends_runs(small_onnx: bytes) -> None:
    device = LocalOrtDevice(warmup=0, runs=5, rounds=2, min_time_s=0.02)
    lat = device.measure(small_onnx).latency
    assert 5 <= lat.runs <= 50
    assert lat.runs > 5 or lat.mean_ms * 5 >= 20


def plain_stack(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
    )


def test_wide_model_is_measured_slower() -> None:
    device = get_device("cpu-1t", warmup=5, runs=50)
    small = device.measure(export_onnx(plain_stack(16), (3, 32, 32))).latency.median_ms
    big = device.measure(export_onnx(plain_stack(128), (3, 32, 32))).latency.median_ms
    assert big / small > 1.5


def test_optimization_levels_and_threads(small_onnx: bytes) -> None:
    for level in ("disable", "basic", "extended", "all"):
        device = LocalOrtDevice(graph_optimization_level=level, warmup=0, runs=2, rounds=1)
        options = device.session(small_onnx).get_session_options()
        assert options.graph_optimization_level == GRAPH_OPT_LEVELS[level], level
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        result = device.measure(small_onnx)
        assert result.latency.runs == 2 and result.latency.median_ms > 0 and result.device == "cpu-1t"
    two = get_device("cpu-2t", warmup=0, runs=2)
    assert two.session(small_onnx).get_session_options().intra_op_num_threads == 2
    assert two.measure(small_onnx).device == "cpu-2t" and two.describe()["intra_op_threads"] == 2


# --------------------------------------------------------------------------- signature and cache


def test_signature_ignores_weight_values_but_not_widths() -> None:
    a = export_onnx(conv_net(seed=0), SHAPE)
    b = export_onnx(conv_net(seed=1), SHAPE)
    fresh = export_onnx(conv_net(seed=2).apply(_reset_bn), SHAPE)
    wide = export_onnx(conv_net(width=16), SHAPE)
    assert a != b
    sig = architecture_signature(a)
    assert re.fullmatch(r"[0-9a-f]{16}", sig), sig
    assert sig == architecture_signature(b) == architecture_signature(fresh)
    assert sig != architecture_signature(wide)
    assert sig != architecture_signature(export_onnx(conv_net(depth=3), SHAPE))


def _reset_bn(module: nn.Module) -> None:
    if isinstance(module, nn.BatchNorm2d):
        module.reset_parameters()  # zero folded biases: the exporter would merge them


@dataclass
class FakeDevice:
    name: str = "fake"
    calls: int = 0
    latency: LatencyStats = field(
        default_factory=lambda: LatencyStats(1.0, 1.2, 1.05, 0.1, 0.9, 0.1, 10)
    )

    def measure(self, onnx_bytes: bytes) -> Measurement:
        self.calls += 1
        return Measurement(self.latency, onnx_memory(onnx_bytes), self.name)

    def describe(self) -> dict:
        return {"kind": "fake"}


def test_cached_device_counts_hits_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "latency.json"
    inner = FakeDevice()
    cached = CachedDevice(inner, path)
    a, b = export_onnx(conv_net(seed=0), SHAPE), export_onnx(conv_net(seed=1), SHAPE)
    wide = export_onnx(conv_net(width=16), SHAPE)
    first = cached.measure(a)
    second = cached.measure(b)  # same architecture, other weights
    cached.measure(wide)
    assert (cached.hits, cached.misses, inner.calls) == (1, 2, 2)
    assert second.latency == first.latency and second.memory == onnx_memory(b)
    assert len(json.loads(path.read_text())) == 2
    files = sorted(p.name for p in path.parent.iterdir() if p.is_file())
    assert files == ["latency.json", "latency.json.lock"]  # no temp files left

    reloaded = CachedDevice(FakeDevice(), path)
    again = reloaded.measure(b)
    assert (reloaded.hits, reloaded.misses, reloaded.device.calls) == (1, 0, 0)
    assert again.latency == first.latency
    other = CachedDevice(FakeDevice(name="other"), path)
    other.measure(a)
    assert other.misses == 1  # keyed by device name too


def test_cached_device_in_memory_only_and_is_a_device(small_onnx: bytes) -> None:
    cached = CachedDevice(get_device("cpu-1t", warmup=0, runs=3))
    assert isinstance(cached, Device) and isinstance(LocalOrtDevice(), Device)
    cached.measure(small_onnx)
    cached.measure(small_onnx)
    assert (cached.hits, cached.misses) == (1, 1) and cached.describe()["cache"] is None


def test_corrupt_cache_file_is_device_error(tmp_path: Path) -> None:
    path = tmp_path / "latency.json"
    path.write_text("{not json")
    with pytest.raises(DeviceError, match="latency cache"):
        CachedDevice(FakeDevice(), path)


# --------------------------------------------------------------------------- errors


def test_unknown_device_and_options() -> None:
    with pytest.raises(DeviceError, match=r"^unknown device 'x': choose one of cpu-1t, cpu-2t, .*devices list"):
        get_device("x")
    with pytest.raises(DeviceError, match="graph_optimization_level 'max'"):
        LocalOrtDevice(graph_optimization_level="max")
    with pytest.raises(DeviceError, match="runs=0"):
        LocalOrtDevice(runs=0)


def test_garbage_bytes_are_device_errors() -> None:
    junk = b"this is not an onnx model at all \x00\xff" * 3
    with pytest.raises(DeviceError, match=r"^device 'cpu-1t' could not load the model: "):
        get_device("cpu-1t").measure(junk)
    with pytest.raises(DeviceError, match="could not parse the ONNX model"):
        onnx_memory(junk)
    with pytest.raises(DeviceError):
        architecture_signature(junk)


def test_memory_stats_is_frozen() -> None:
    stats = MemoryStats(1, 2, 3, 4)
    with pytest.raises(AttributeError):
        stats.weight_bytes = 5  # type: ignore[misc]


def test_latency_is_the_quietest_rounds_median_and_the_noise_stays_visible():
    quiet = np.full(40, 1.0)
    burst = np.full(40, 1.6)  # another tenant's load: it only ever adds time
    stats = LatencyStats.from_rounds([burst, quiet, burst, burst])
    assert stats.median_ms == 1.0
    assert stats.pooled_median_ms == 1.6 and stats.p90_ms == 1.6
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms and stats.spread > 0.5
    assert LatencyStats.from_dict(stats.to_dict()) == stats
    old_entry = {k: v for k, v in stats.to_dict().items() if k != "pooled_median_ms"}
    assert LatencyStats.from_dict(old_entry).pooled_median_ms is None  # caches written before stay readable


def test_time_alternately_times_every_model_in_each_round():
    device = LocalOrtDevice(warmup=1, runs=12, rounds=3)
    small, big = export_onnx(plain_stack(8), (3, 32, 32)), export_onnx(plain_stack(64), (3, 32, 32))
    stats = time_alternately({"small": (device, small), "big": (device, big)}, repeats=2)
    assert {k: s.runs for k, s in stats.items()} == {"small": 24, "big": 24}
    assert stats["small"].median_ms < stats["big"].median_ms
    measured = device.measure_alternately({"small": small, "big": big})
    assert {k: (m.timed, m.latency.runs) for k, m in measured.items()} == {
        "small": ("alternating", 12), "big": ("alternating", 12)
    }
    assert device.measure(small).timed == "alone"
