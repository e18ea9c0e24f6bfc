"""Real int8 quantization of exported ONNX graphs with ONNX Runtime (not simulated in torch).

``quantize_onnx`` turns the float graph ``export_onnx`` writes into one that ONNX Runtime runs
with int8 kernels:

``static-qdq``
    ``onnxruntime.quantization.quantize_static`` in QDQ format: int8 weights (per output channel
    by default) and uint8 activations whose ranges come from calibration samples (MinMax). ONNX
    Runtime fuses ``DequantizeLinear -> Conv (-> Relu) -> QuantizeLinear`` into ``QLinearConv``,
    the residual ``Add`` into ``QLinearAdd``, the classifier into ``QGemm``, so the whole network
    really runs in 8 bits. uint8 activations with int8 weights (U8S8) is the pair ORT's x86
    kernels are built around (VPMADDUBSW / VNNI multiply unsigned by signed bytes); with VNNI, as
    on this machine, no ``reduce_range`` is needed. ``activation_type="int8"`` (S8S8) exists but,
    measured on resnet20 here, ORT converts only 9 of its 21 convs to ``QLinearConv`` and leaves
    the adds in float: it runs slower than the float model.
``dynamic``
    ``quantize_dynamic``: weights stored as uint8, activations quantized on the fly at run time
    (``ConvInteger`` - ORT's CPU kernel exists for uint8 weights only - and ``MatMulInteger``;
    the quantizer rewrites ``Gemm`` as ``MatMul``). Weights shrink ~4x, but the per-run
    quantization makes CNNs slower than float: it pays off for MatMul-heavy models.
``fp16``
    Float initializers stored as float16, each read through a ``Cast`` back to float32
    (``onnxconverter-common`` is not installed, and ORT's x86 CPU kernels are float32 anyway): the
    file and the weight bytes halve; ONNX Runtime folds the casts when it loads the model, so the
    run-time arithmetic, latency and resident weights stay float32. A storage format only.

Graphs are pre-processed with ``quant_pre_process`` (symbolic + ONNX shape inference and ORT's
basic optimizations, all offline) as ORT recommends. Conv/Gemm node names survive it, so the torch
layer -> ONNX node mapping of ``conv_node_names`` holds before and after.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from modeltailor.devices.memory import load_model
from modeltailor.devices.session import run_onnx
from modeltailor.errors import CompressionError

MODES: tuple[str, ...] = ("static-qdq", "dynamic", "fp16")
LAYER_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
REMOVABLE_ACTIVATIONS: tuple[str, ...] = ("Relu", "Clip")
QDQ_OPS: tuple[str, ...] = ("QuantizeLinear", "DequantizeLinear")
ACTIVATION_TYPES: dict[str, QuantType] = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class SampleReader(CalibrationDataReader):
    """Feeds calibration samples one at a time (the exported graphs have a static batch of 1)."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self.input_name = input_name
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.samples):
            return None
        row = self.samples[self.position : self.position + 1]
        self.position += 1
        return {self.input_name: row}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.samples)


def graph_input(model: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    """Name and shape (symbolic dims as 1) of the model's first real (non-initializer) input."""
    inits = {t.name for t in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in inits)
    dims = value.type.tensor_type.shape.dim
    return value.name, tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)


def _calibration_array(calibration: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    data = calibration.detach().cpu().numpy() if isinstance(calibration, torch.Tensor) else calibration
    data = np.asarray(data, dtype=np.float32)
    if len(data) == 0 or tuple(data.shape[1:]) != tuple(shape[1:]):
        raise CompressionError(
            f"calibration data of shape {tuple(data.shape)} does not fit the model input "
            f"{tuple(shape)}: pass N >= 1 training samples of shape {tuple(shape[1:])}"
        )
    return data


def preprocess(onnx_bytes: bytes) -> bytes:
    """ORT's ``quant_pre_process`` (shape inference + basic graph optimizations), offline."""
    with tempfile.TemporaryDirectory(prefix="modeltailor-prep-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "prepared.onnx"
        src.write_bytes(onnx_bytes)
        quant_pre_process(str(src), str(dst))
        return dst.read_bytes()


def quantize_onnx(
    onnx_bytes: bytes,
    calibration: np.ndarray | torch.Tensor | None,
    *,
    exclude: Sequence[str] = (),
    mode: str = "static-qdq",
    per_channel: bool = True,
    activation_type: str = "uint8",
    prepare: bool = True,
) -> bytes:
    """A quantized copy of an ONNX model (see the module docstring for the modes).

    ``calibration``: N x C x H x W float32 samples of the deployment's TRAINING split (static mode
    only); ``exclude``: ONNX node names left in float.
    """
    if mode not in MODES:
        raise CompressionError(f"unknown quantization mode '{mode}': choose one of {', '.join(MODES)}")
    if activation_type not in ACTIVATION_TYPES:
        raise CompressionError(f"activation_type '{activation_type}' is unknown: use uint8 or int8")
    if mode == "fp16":
        return fp16_weights(onnx_bytes, exclude)
    source = preprocess(onnx_bytes) if prepare else onnx_bytes
    with tempfile.TemporaryDirectory(prefix="modeltailor-quant-") as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "quantized.onnx"
        src.write_bytes(source)
        if mode == "dynamic":
            _dynamic(src, dst, exclude, per_channel)
        else:
            _static(src, dst, calibration, exclude, per_channel, ACTIVATION_TYPES[activation_type])
        return dst.read_bytes()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger (e.g. "Axis 1 is out-of-range for weight
    ... with rank 1" for a BatchNorm it leaves in float): noise to a user, so errors only, meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _static(
    src: Path,
    dst: Path,
    calibration: np.ndarray | torch.Tensor | None,
    exclude: Sequence[str],
    per_channel: bool,
    activation_type: QuantType,
) -> None:
    if calibration is None:
        raise CompressionError("static quantization needs calibration samples from the training split")
    name, shape = graph_input(onnx.load(str(src)))
    reader = SampleReader(name, _calibration_array(calibration, shape))
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=False,
        activation_type=activation_type,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
    )


def _dynamic(src: Path, dst: Path, exclude: Sequence[str], per_channel: bool) -> None:
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["Conv", "MatMul"],
        per_channel=per_channel,
        weight_type=QuantType.QUInt8,  # ORT's CPU ConvInteger has only a uint8 x uint8 kernel
        nodes_to_exclude=list(exclude),
    )


def fp16_weights(onnx_bytes: bytes, exclude: Sequence[str] = ()) -> bytes:
    """Float32 initializers stored as float16, each cast back to float32 by a Cast node.

    Initializers read by a node in ``exclude`` stay float32.
    """
    model = load_model(onnx_bytes)
    graph = model.graph
    inputs = {v.name for v in graph.input}
    skip = inputs | {name for n in graph.node if n.name in exclude for name in n.input}
    casts = []
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or tensor.name in skip:
            continue
        name = tensor.name
        half = numpy_helper.to_array(tensor).astype(np.float16)
        tensor.CopyFrom(numpy_helper.from_array(half, f"{name}_fp16"))
        casts.append(
            helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT, name=f"{name}_cast")
        )
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


def module_path(node_name: str) -> str:
    """Torch module name of a node named by the TorchScript exporter, '' if it has no scope.

    '/features/features.1/conv1/conv1.0/Conv' -> 'features.1.conv1.0': each scope is the
    attribute name, prefixed with its parent's scope for children of containers (Sequential,
    ModuleList), so a scope that extends the previous one by '.x' adds only 'x'.
    """
    scopes = [s for s in node_name.split("/")[1:-1] if s]
    parts: list[str] = []
    previous = ""
    for scope in scopes:
        parts.append(scope[len(previous) + 1 :] if previous and scope.startswith(previous + ".") else scope)
        previous = scope
    return ".".join(parts)


def conv_node_names(onnx_bytes: bytes) -> dict[str, str]:
    """Torch module name -> ONNX node name of every Conv / Gemm / MatMul node with a scope."""
    mapping: dict[str, str] = {}
    for node in load_model(onnx_bytes).graph.node:
        path = module_path(node.name) if node.op_type in LAYER_OPS else ""
        if path:
            mapping.setdefault(path, node.name)
    return mapping


def layer_nodes(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """The named nodes plus the Relu / Clip nodes that read their outputs (fused when quantized)."""
    outputs = {o for n in graph.node if n.name in names for o in n.output}
    acts = {
        n.name for n in graph.node if n.op_type in REMOVABLE_ACTIVATIONS and n.input[0] in outputs
    }
    return set(names) | acts


def quantize_layers(
    onnx_bytes: bytes,
    calibration: np.ndarray | torch.Tensor,
    layers: Iterable[str],
    **options,
) -> bytes:
    """Static int8 for the Conv/Gemm nodes of the given torch layers only; the rest stays float.

    Every other node is excluded, except the Relu right after a chosen layer (fused with it).
    Isolated int8 layers cost layout changes: ORT runs QLinearConv in NHWC and float convs in
    NCHWc, so each island adds Transpose / Reorder nodes and breaks Conv+Add+Relu fusion around
    it; quantizing one layer of resnet20 measured slower than the float model.
    ``options`` go to :func:`quantize_onnx` (``per_channel``, ``activation_type``).
    """
    prepared = preprocess(onnx_bytes)
    mapping = conv_node_names(prepared)
    wanted = list(layers)
    unknown = [layer for layer in wanted if layer not in mapping]
    if unknown:
        raise CompressionError(
            f"layer '{unknown[0]}' has no Conv/Gemm node in this ONNX graph: name torch modules "
            f"such as {', '.join(list(mapping)[:3])}"
        )
    graph = load_model(prepared).graph
    keep = layer_nodes(graph, {mapping[layer] for layer in wanted})
    exclude = [n.name for n in graph.node if n.name not in keep]
    return quantize_onnx(prepared, calibration, exclude=exclude, prepare=False, **options)


def onnx_predictions(onnx_bytes: bytes, x: torch.Tensor | np.ndarray, threads: int = 1) -> np.ndarray:
    """Argmax class of the ONNX model (run in ORT, sample by sample for static batch 1)."""
    data = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return run_onnx(onnx_bytes, data, threads).argmax(axis=1)


def onnx_accuracy(onnx_bytes: bytes, x: torch.Tensor, y: torch.Tensor, threads: int = 1) -> float:
    """Top-1 accuracy of the (quantized) ONNX model on (x, y), measured in ONNX Runtime."""
    predicted = onnx_predictions(onnx_bytes, x, threads)
    return float(np.mean(predicted == y.detach().cpu().numpy()))


def count_qdq(onnx_bytes: bytes) -> int:
    """Number of QuantizeLinear / DequantizeLinear nodes in the graph."""
    return sum(1 for n in load_model(onnx_bytes).graph.node if n.op_type in QDQ_OPS)


def op_counts(onnx_bytes: bytes | onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (domain-qualified for non-ONNX domains)."""
    model = onnx_bytes if isinstance(onnx_bytes, onnx.ModelProto) else load_model(onnx_bytes)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
