"""Latency tables: predict a model's latency on a device from per-node timings.

A device that is not attached cannot time every candidate. Instead, each ONNX node of a few
calibration models is timed on it once, alone, and stored in a :class:`LatencyTable` under a
canonical *node key*; later the latency of any model is predicted from the table.

Node keys (:func:`graph_nodes`, batch 1, after ``onnx.shape_inference``): ``|``-joined parts:

- the op type (``Conv``), prefixed by its domain if that is not the default one;
- its attributes, sorted by name: ``kernel_shape``/``strides``/``pads``/``dilations``/``group``
  as ``k3x3``/``s1x1``/``p1x1x1x1``/``d1x1``/``g1`` (Conv and ConvTranspose defaults filled in,
  so a missing attribute and its default give the same key), any other as ``name=value``;
- every input in order: an activation as ``in1x16x32x32``, a weight (a float initializer or
  Constant, or any constant of more than 64 elements) by shape only as ``w16x16x3x3``, a small
  non-float constant (shapes, axes) as ``c2=[1, -1]`` (shape and value), an omitted optional
  input as ``-``;
- every output as ``out1x16x32x32``.

Every tensor part ends in ``:<dtype>`` unless its dtype is float32, e.g.
``Conv|d1x1|g1|k3x3|p1x1x1x1|s1x1|in1x16x32x32|w16x16x3x3|w16|out1x16x32x32``. Keys do not
depend on weight values or tensor names. Constant nodes and nodes computed from constants
alone are skipped: ONNX Runtime folds them before it runs the model.

Prediction: ``latency ~= intercept + scale * sum(node latencies - overhead)``, ``overhead``
being the time of a trivial one-node model (``LatencyTable.overhead_ms``). Isolated node
timings each count one ``session.run`` call (removed by that subtraction), and miss the
fusions (Conv+Relu, Conv+Add+Relu), layout reorders and cache reuse of the whole model;
``intercept`` and ``scale`` are fitted by (relative) least squares on measured calibration
models to absorb that.

A key missing from the table is estimated from its neighbours: the entries with the same
*layout* (op type, attributes, activation shapes with the channel axis left free), else the
same *family* (op type and attributes, a depthwise group as ``gdw``), else the same op type.
By cost (MACs for Conv/ConvTranspose/Gemm/MatMul, else elements read and written): a line
``a + b * cost`` fitted through the neighbours, or the nearest one scaled by the cost ratio
when they have a single cost (:func:`estimate_latency`). Such nodes are counted
(``Prediction.estimated``, ``LatencyTable.last_estimated``). An op type with no entry at all
is a DeviceError.

Limitations: values computed at run time from constants (e.g. ``Shape -> Gather -> Reshape``
chains that the exporter did not fold) become graph inputs of the single-node model, fed
zeros; nodes with subgraphs (If/Loop/Scan) are timed without their outer scope.

:class:`TableDevice` is a :class:`~modeltailor.devices.base.Device` that predicts instead of
measuring; its :class:`~modeltailor.devices.measurement.LatencyStats` have ``runs == 0``, which marks
a prediction (every statistic is the predicted latency, std and iqr are 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modeltailor.common.storage import atomic_write
from modeltailor.devices.base import Device, DeviceDefaults, K
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import constant_names, load_model, onnx_memory
from modeltailor.errors import DeviceError, first_line

TABLE_FORMAT = 1
NODE_RUNS = 50
NODE_WARMUP = 10
SMALL_CONSTANT = 64
SHORT_ATTRS = {"kernel_shape": "k", "strides": "s", "pads": "p", "dilations": "d", "group": "g"}
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DTYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "f32",
    TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.DOUBLE: "f64",
    TensorProto.INT8: "i8",
    TensorProto.UINT8: "u8",
    TensorProto.INT32: "i32",
    TensorProto.INT64: "i64",
    TensorProto.BOOL: "bool",
}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


# ------------------------------------------------------------------------------ node keys


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a node at batch 1; ``value`` is set for constants."""

    name: str
    elem_type: int
    shape: tuple[int, ...]
    value: TensorProto | None = None

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_weight(self) -> bool:
        """A float constant (any size) or a constant of more than 64 elements: keyed by shape."""
        if self.value is None:
            return False
        return self.elem_type in FLOAT_TYPES or self.elements > SMALL_CONSTANT

    def part(self, role: str) -> str:
        """Key text of this tensor: ``in1x16x32x32``, ``w16x16x3x3``, ``c2=[1, -1]``."""
        dims = "x".join(map(str, self.shape)) or "scalar"
        if self.value is not None and role == "in":
            role = "w" if self.is_weight else "c"
            if role == "c":
                dims += "=" + repr(numpy_helper.to_array(self.value).tolist())
        dtype = "" if self.elem_type == TensorProto.FLOAT else ":" + _dtype_name(self.elem_type)
        return f"{role}{dims}{dtype}"


@dataclass(frozen=True)
class GraphNode:
    """A node of a shape-inferred graph with everything needed to time it alone."""

    node: onnx.NodeProto
    inputs: tuple[TensorInfo | None, ...]
    outputs: tuple[TensorInfo, ...]
    opsets: tuple[tuple[str, int], ...]
    ir_version: int
    key: str
    family: str
    layout: str
    cost: float


def _dtype_name(elem_type: int) -> str:
    return DTYPE_NAMES.get(elem_type, f"t{elem_type}")


def _inferred_model(onnx_bytes: bytes) -> onnx.ModelProto:
    """The model with symbolic input dims set to 1 and every value's shape inferred."""
    model = load_model(onnx_bytes)
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        first = first_line(exc)
        raise DeviceError(f"could not infer the shapes of the ONNX model: {first}") from exc


def _constant_tensors(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """Initializers and Constant-node outputs of the graph, by value name."""
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        attr = next((a for a in node.attribute if a.name != "sparse_value"), None)
        if attr is None:
            continue
        array = np.asarray(helper.get_attribute_value(attr))
        if attr.type == onnx.AttributeProto.TENSOR:
            array = numpy_helper.to_array(attr.t)
        elif attr.name in ("value_float", "value_floats"):
            array = array.astype(np.float32)
        tensors[node.output[0]] = numpy_helper.from_array(array, node.output[0])
    return tensors


def _value_types(graph: onnx.GraphProto) -> dict[str, tuple[int, tuple[int, ...] | None]]:
    """elem_type and static shape (None if any dim is unknown) of every typed value."""
    types: dict[str, tuple[int, tuple[int, ...] | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.HasField("tensor_type"):
            continue
        ttype = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        known = ttype.HasField("shape") and all(d is not None for d in dims)
        types[value.name] = (ttype.elem_type, tuple(dims) if known else None)  # type: ignore[arg-type]
    return types


def _tensor_info(name: str, types: Mapping, constants: Mapping[str, TensorProto]) -> TensorInfo:
    if name in constants:
        tensor = constants[name]
        return TensorInfo(name, tensor.data_type, tuple(tensor.dims), tensor)
    elem_type, shape = types.get(name, (0, None))
    if shape is None:
        raise DeviceError(
            f"the shape of value '{name}' could not be inferred: export the model with static shapes"
        )
    return TensorInfo(name, elem_type, shape)


def _attribute_parts(node: onnx.NodeProto, inputs: tuple[TensorInfo | None, ...]) -> list[str]:
    """Attribute key parts, sorted by attribute name, conv defaults filled in."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvTranspose") and len(inputs) > 1 and inputs[1] is not None:
        spatial = len(inputs[1].shape) - 2
        values.setdefault("kernel_shape", list(inputs[1].shape[2:]))
        values.setdefault("strides", [1] * spatial)
        values.setdefault("dilations", [1] * spatial)
        values.setdefault("group", 1)
        if values.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            values.pop("auto_pad", None)
            values.setdefault("pads", [0] * (2 * spatial))
    return [_attribute_text(name, values[name]) for name in sorted(values)]


def _attribute_text(name: str, value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, onnx.TensorProto):
        value = numpy_helper.to_array(value).tolist()
    if name in SHORT_ATTRS:
        items = value if isinstance(value, (list, tuple)) else [value]
        return SHORT_ATTRS[name] + "x".join(str(v) for v in items)
    return f"{name}={value!r}"


def _family(node: onnx.NodeProto, attrs: list[str], inputs: tuple[TensorInfo | None, ...]) -> str:
    """Op type and attributes; a depthwise group (group == input channels > 1) as ``gdw``."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    channels = inputs[0].shape[1] if inputs and inputs[0] and len(inputs[0].shape) > 1 else 0
    if group > 1 and group == channels:
        attrs = ["gdw" if part == f"g{group}" else part for part in attrs]
    return "|".join([_op_name(node), *attrs])


def _layout(family: str, inputs: Iterable[TensorInfo | None], outputs: Iterable[TensorInfo]) -> str:
    """The family plus activation shapes with the channel axis (axis 1) as ``C``."""
    parts = [family]
    for role, infos in (("in", inputs), ("out", outputs)):
        for info in infos:
            if info is None or info.value is not None:
                continue
            dims = [str(d) for d in info.shape]
            if len(dims) >= 2:
                dims[1] = "C"
            parts.append(role + "x".join(dims))
    return "|".join(parts)


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def node_cost(
    node: onnx.NodeProto, inputs: Iterable[TensorInfo | None], outputs: Iterable[TensorInfo]
) -> float:
    """MACs of Conv/ConvTranspose/Gemm/MatMul; elements read and written for other ops."""
    ins = [i for i in inputs if i is not None]
    outs = list(outputs)
    if node.op_type in MAC_OPS and len(ins) >= 2 and outs:
        weight = ins[1].shape
        if node.op_type == "Conv":
            return float(outs[0].elements * math.prod(weight[1:]))
        if node.op_type == "ConvTranspose":
            return float(ins[0].elements * math.prod(weight[1:]))
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        shape = ins[0].shape or (1,)
        reduced = shape[0] if node.op_type == "Gemm" and trans_a else shape[-1]
        return float(outs[0].elements * reduced)
    return float(sum(i.elements for i in ins if i.value is None) + sum(o.elements for o in outs))


def graph_nodes(onnx_bytes: bytes) -> list[GraphNode]:
    """Every timed node of the model (batch 1), with its key; see the module docstring."""
    model = _inferred_model(onnx_bytes)
    graph = model.graph
    constants = _constant_tensors(graph)
    folded = constant_names(graph)
    types = _value_types(graph)
    opsets = tuple(sorted((o.domain, o.version) for o in model.opset_import))
    result: list[GraphNode] = []
    for node in graph.node:
        if node.op_type == "Constant" or all(o in folded for o in node.output if o):
            continue
        inputs = tuple(_tensor_info(n, types, constants) if n else None for n in node.input)
        outputs = tuple(_tensor_info(n, types, constants) for n in node.output if n)
        attrs = _attribute_parts(node, inputs)
        tensors = [i.part("in") if i else "-" for i in inputs] + [o.part("out") for o in outputs]
        family = _family(node, attrs, inputs)
        result.append(
            GraphNode(
                node=node, inputs=inputs, outputs=outputs, opsets=opsets,
                ir_version=model.ir_version, key="|".join([_op_name(node), *attrs, *tensors]),
                family=family, layout=_layout(family, inputs, outputs),
                cost=node_cost(node, inputs, outputs),
            )
        )
    return result


def node_keys(onnx_bytes: bytes) -> list[str]:
    """The key of every timed node, in graph order (repeats included)."""
    return [n.key for n in graph_nodes(onnx_bytes)]


# ----------------------------------------------------------------------- single-node models


def _initializer(info: TensorInfo, name: str, rng: np.random.Generator) -> TensorProto:
    """The constant for a single-node model: weights random of the same shape, others copied."""
    assert info.value is not None
    if info.elem_type not in FLOAT_TYPES or info.elements <= SMALL_CONSTANT:
        tensor = TensorProto()
        tensor.CopyFrom(info.value)
        tensor.name = name
        return tensor
    dtype = helper.tensor_dtype_to_np_dtype(info.elem_type)
    array = (rng.standard_normal(info.shape) * 0.1).astype(dtype)
    return numpy_helper.from_array(array, name)


def single_node_model(graph_node: GraphNode, seed: int = 0) -> bytes:
    """A standalone ONNX model of just this node: activations as graph inputs, weights random.

    Inputs and outputs keep the node's inferred dtypes and shapes (batch 1); float constants
    of more than 64 elements become random, smaller ones (biases, scales) and non-float ones
    (shapes, axes, indices) keep their values, so the output shapes match the original node.
    """
    rng = np.random.default_rng(seed)
    node = onnx.NodeProto()
    node.CopyFrom(graph_node.node)
    node.name = "node"
    inputs: list[onnx.ValueInfoProto] = []
    initializers: list[TensorProto] = []
    for index, info in enumerate(graph_node.inputs):
        if info is None:
            continue
        name = f"x{index}"
        node.input[index] = name
        if info.value is not None:
            initializers.append(_initializer(info, name, rng))
        else:
            inputs.append(helper.make_tensor_value_info(name, info.elem_type, info.shape))
    outputs = []
    for index, info in enumerate(graph_node.outputs):
        position = list(graph_node.node.output).index(info.name)
        node.output[position] = f"y{index}"
        outputs.append(helper.make_tensor_value_info(f"y{index}", info.elem_type, info.shape))
    graph = helper.make_graph([node], "single_node", inputs, outputs, initializers)
    opsets = [helper.make_opsetid(domain, version) for domain, version in graph_node.opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="modeltailor")
    model.ir_version = graph_node.ir_version
    return model.SerializeToString()


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class TableEntry:
    """Median latency of one node key, with what estimating a missing neighbour needs."""

    ms: float
    family: str
    cost: float
    layout: str = ""


@dataclass(frozen=True)
class Prediction:
    """A predicted latency and how it was put together."""

    latency_ms: float
    node_sum_ms: float
    nodes: int
    estimated: tuple[str, ...]


@dataclass
class LatencyTable:
    """Per-node median latencies (ms) of one device, plus the whole-model correction.

    ``entries`` hold the raw medians of the isolated nodes. ``overhead_ms`` is the median of a
    trivial one-node model (one ``session.run`` call doing nothing: None until measured, then
    subtracted from every node, never below 0, before summing), so the node sum does not grow
    with the node count alone and the table carries over better to other architectures.
    """

    entries: dict[str, TableEntry] = field(default_factory=dict)
    intercept: float = 0.0
    scale: float = 1.0
    device: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    mape: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    overhead_ms: float | None = None
    last_estimated: int = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    @property
    def latencies(self) -> dict[str, float]:
        """key -> median ms."""
        return {key: entry.ms for key, entry in self.entries.items()}

    def add(self, graph_node: GraphNode, ms: float) -> None:
        self.entries[graph_node.key] = TableEntry(
            float(ms), graph_node.family, graph_node.cost, graph_node.layout
        )

    def missing(self, onnx_bytes: bytes) -> list[str]:
        """Distinct keys of the model that the table has no entry for, in graph order."""
        keys = [n.key for n in graph_nodes(onnx_bytes) if n.key not in self.entries]
        return list(dict.fromkeys(keys))

    def node_latency(self, graph_node: GraphNode) -> float:
        """The table's latency of the node, or an estimate from its family (module docstring)."""
        entry = self.entries.get(graph_node.key)
        return entry.ms if entry is not None else self._estimate(graph_node)

    def explain(self, onnx_bytes: bytes) -> Prediction:
        nodes = graph_nodes(onnx_bytes)
        total = sum(max(self.node_latency(n) - (self.overhead_ms or 0.0), 0.0) for n in nodes)
        estimated = tuple(n.key for n in nodes if n.key not in self.entries)
        self.last_estimated = len(estimated)
        return Prediction(self.correct(total), total, len(nodes), estimated)

    def predict(self, onnx_bytes: bytes) -> float:
        """Predicted whole-model latency in ms; ``last_estimated`` counts estimated nodes."""
        return self.explain(onnx_bytes).latency_ms

    def correct(self, node_sum_ms: float) -> float:
        """intercept + scale * node_sum, never below 1% of the node sum."""
        return max(self.intercept + self.scale * node_sum_ms, 0.01 * node_sum_ms)

    def fit(self, node_sums_ms: Iterable[float], measured_ms: Iterable[float]) -> None:
        """Fit intercept and scale, minimizing the squared relative error over the models."""
        sums = np.asarray(list(node_sums_ms), dtype=np.float64)
        ys = np.asarray(list(measured_ms), dtype=np.float64)
        if sums.size != ys.size:
            raise DeviceError("fitting a latency table needs one latency per node sum")
        usable = (sums > 0) & (ys > 0)  # a model whose nodes all timed below the overhead tells nothing
        sums, ys = sums[usable], ys[usable]
        if sums.size == 0:
            raise DeviceError("fitting a latency table needs positive node sums and latencies")
        self.intercept, self.scale = 0.0, float(np.median(ys / sums))
        if sums.size < 2 or np.ptp(sums) < 1e-9 * np.max(sums):
            return
        design = np.stack([np.ones_like(sums), sums], axis=1) / ys[:, None]
        (intercept, scale), *_ = np.linalg.lstsq(design, np.ones_like(ys), rcond=None)
        if scale > 0:
            self.intercept, self.scale = float(intercept), float(scale)

    def _estimate(self, graph_node: GraphNode) -> float:
        return estimate_latency(self.neighbours(graph_node), graph_node.cost)

    def neighbours(self, graph_node: GraphNode) -> list[TableEntry]:
        """Entries to estimate a missing key from: same layout, else family, else op type."""
        op = graph_node.key.split("|", 1)[0]
        tests: tuple[Callable[[str, TableEntry], bool], ...] = (
            lambda _key, e: e.layout == graph_node.layout,
            lambda _key, e: e.family == graph_node.family,
            lambda key, _e: key.split("|", 1)[0] == op,
        )
        for test in tests:
            found = [e for key, e in self.entries.items() if test(key, e)]
            if found:
                return found
        raise DeviceError(
            f"latency table has no entry for op type '{op}': calibrate with a model that uses it"
        )

    # ------------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "created": self.created,
            "device": self.device,
            "intercept": self.intercept,
            "scale": self.scale,
            "mape": self.mape,
            "overhead_ms": self.overhead_ms,
            "meta": self.meta,
            "entries": {
                key: {"ms": e.ms, "family": e.family, "layout": e.layout, "cost": e.cost}
                for key, e in sorted(self.entries.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {TABLE_FORMAT}")
        entries = {
            str(key): TableEntry(
                float(e["ms"]), str(e["family"]), float(e["cost"]), str(e.get("layout", ""))
            )
            for key, e in data["entries"].items()
        }
        mape, overhead = data.get("mape"), data.get("overhead_ms")
        return cls(
            entries=entries, intercept=float(data["intercept"]), scale=float(data["scale"]),
            device=dict(data.get("device") or {}), created=str(data.get("created", "")),
            mape=None if mape is None else float(mape), meta=dict(data.get("meta") or {}),
            overhead_ms=None if overhead is None else float(overhead),
        )

    def save(self, path: Path | str) -> Path:
        """Write the table as JSON (atomically: temp file + rename)."""
        return atomic_write(Path(path).expanduser(), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> LatencyTable:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DeviceError(
                f"latency table '{path}' not found: create it with `devices calibrate`"
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            text = first_line(exc)
            raise DeviceError(
                f"latency table '{path}' is unreadable ({text}): calibrate the device again"
            ) from exc


def _nearest_scaled(entries: list[TableEntry], cost: float) -> float:
    """The entry nearest in log cost, scaled by the cost ratio."""
    nearest = min(entries, key=lambda e: abs(math.log1p(e.cost) - math.log1p(cost)))
    return nearest.ms * cost / nearest.cost if nearest.cost > 0 else nearest.ms


def estimate_latency(entries: list[TableEntry], cost: float) -> float:
    """Latency at ``cost`` from entries of one layout/family: ``a + b * cost`` fitted by least
    squares when they have two or more costs (and the slope is positive), else the nearest
    entry scaled by the cost ratio."""
    costs = np.array([e.cost for e in entries])
    times = np.array([e.ms for e in entries])
    if costs.size >= 2 and np.ptp(costs) > 0:
        slope, intercept = np.polyfit(costs, times, 1)
        value = float(intercept + slope * cost)
        if slope > 0 and value > 0:
            return value
    return _nearest_scaled(entries, cost)


# ------------------------------------------------------------------------- measuring


def node_timer(device: Device, runs: int = NODE_RUNS) -> Callable[[bytes], float]:
    """A function timing a (single-node) model on the device: median ms over ``runs`` runs.

    The device is set to ``runs`` runs after a short warm-up (``Device.with_timing``) and asked
    for its latency alone (``Device.measure_latency``: the same statistic as ``measure()``,
    without the memory analysis).
    """
    fast = device.uncached().with_timing(runs=runs, warmup=NODE_WARMUP, rounds=min(5, runs))
    return lambda onnx_bytes: fast.measure_latency(onnx_bytes).median_ms


def trivial_model() -> bytes:
    """A one-node model that does (almost) nothing: Identity of one float."""
    value = helper.make_tensor_value_info
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "trivial", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def measure_nodes(
    device: Device,
    onnx_bytes: bytes,
    table: LatencyTable,
    *,
    runs: int = NODE_RUNS,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Time every node of the model whose key the table lacks; returns how many were timed.

    Also times :func:`trivial_model` into ``table.overhead_ms`` if the table has none yet.
    """
    todo = {n.key: n for n in graph_nodes(onnx_bytes) if n.key not in table}
    timer = node_timer(device, runs)
    if table.overhead_ms is None:
        table.overhead_ms = timer(trivial_model())
    for index, (key, graph_node) in enumerate(todo.items(), start=1):
        table.add(graph_node, timer(single_node_model(graph_node)))
        if progress is not None:
            progress(f"node {index}/{len(todo)}: {key} {table.entries[key].ms:.4f} ms")
    return len(todo)


# ------------------------------------------------------------------------ TableDevice


class TableDevice(DeviceDefaults):
    """A device that predicts latency from a :class:`LatencyTable` instead of measuring.

    ``measure`` returns LatencyStats whose median/p90/mean/min are the prediction, std and
    iqr 0 and ``runs == 0`` (runs == 0 marks a prediction); memory is ``onnx_memory``.
    """

    def __init__(self, name: str, table_path: Path | str) -> None:
        self.name = name
        self.table_path = Path(table_path).expanduser()
        self.table = LatencyTable.load(self.table_path)

    @property
    def kind(self) -> str:
        return "table"

    @property
    def last_estimated(self) -> int:
        """Nodes of the last measured model whose latency was estimated (key not in the table)."""
        return self.table.last_estimated

    def measure(self, onnx_bytes: bytes) -> Measurement:
        memory = onnx_memory(onnx_bytes)
        ms = self.table.predict(onnx_bytes)
        latency = LatencyStats(
            median_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, min_ms=ms, iqr_ms=0.0, runs=0
        )
        return Measurement(latency=latency, memory=memory, device=self.name, timed="predicted")

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]:
        """Predictions: nothing is timed, so there is nothing to alternate (``timed`` says so)."""
        return {key: self.measure(data) for key, data in models.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": str(self.table_path),
            "measured_on": self.table.device,
            "created": self.table.created,
            "entries": len(self.table),
            "intercept": self.table.intercept,
            "scale": self.table.scale,
            "held_out_mape": self.table.mape,
        }
