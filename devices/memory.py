"""Memory footprint of an ONNX model: the project's definition of "memory".

``onnx_memory(onnx_bytes)`` returns a :class:`MemoryStats` with four numbers, all in bytes:

``weight_bytes``
    Constant data of the graph: the sum over ``graph.initializer`` of
    ``prod(dims) * element size``, plus the tensors held by ``Constant`` nodes (their
    ``value``/``value_*`` attribute). Constant-node outputs count as **weights**, never as
    activations: like initializers they are stored in the model file and stay resident for
    the whole run. The element size comes from the tensor's ``elem_type``: float32 = 4,
    float16/bfloat16 = 2, int8/uint8 = 1 (so a QDQ-quantized graph's int8 weights count
    1 byte each), 4-bit types half a byte (rounded up per tensor).

    Weight-derived values, the outputs of a node whose every input is a weight or
    weight-derived (``DequantizeLinear`` of an int8 weight, ``Identity`` of an initializer,
    a ``Reshape`` of a constant), are counted neither again as weights nor as activations:
    a runtime folds them or fuses them into the consumer (ONNX Runtime turns QDQ
    ``DequantizeLinear -> Conv`` into ``QLinearConv`` on the int8 tensor), so the weight
    is only held once, at its stored size.

``peak_activation_bytes``
    Peak of live intermediate tensors at batch 1, by liveness analysis:

    1. Symbolic dimensions of the graph inputs (a dynamic batch axis) are fixed to 1 and
       ``onnx.shape_inference.infer_shapes`` (strict off, data propagation on) gives every
       value a type and shape.
    2. A value's size is ``prod(shape) * element size``. A dimension that shape inference
       leaves unknown counts as 1; a value with no inferred type counts 0 bytes.
    3. The nodes are walked in their stored order (ONNX graphs are topologically sorted).
       Graph inputs (those that are not initializers) are live at the start. A node's
       outputs become live when the node runs. A value is freed right after its last
       consumer; a value nobody consumes is freed right after it is made (an unused graph
       input right after the start); graph outputs are never freed. Weights and
       weight-derived values never enter the live set. No in-place reuse is modelled.
    4. At node ``i`` the live set is the values alive before it (its inputs included) plus
       its outputs. The peak is the maximum of that over all nodes and of the initial live
       set (the graph inputs alone).

    Names a node reads from inside a subgraph (If/Loop/Scan bodies) count as inputs of
    that node; the subgraph's own intermediates are not counted.

``total_bytes``
    ``weight_bytes + peak_activation_bytes``.

``onnx_file_bytes``
    ``len(onnx_bytes)``: the serialized model size (protobuf overhead included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import onnx
from onnx import TensorProto, helper

from modeltailor.errors import DeviceError, first_line

_SUB_BYTE_BITS: dict[int, int] = {
    getattr(TensorProto, name): bits
    for name, bits in (
        ("UINT4", 4),
        ("INT4", 4),
        ("FLOAT4E2M1", 4),
        ("UINT2", 2),
        ("INT2", 2),
        ("FLOAT6E2M3", 6),
        ("FLOAT6E3M2", 6),
    )
    if hasattr(TensorProto, name)
}


@dataclass(frozen=True)
class MemoryStats:
    """Memory of one ONNX model at batch 1, in bytes (see the module docstring)."""

    weight_bytes: int
    peak_activation_bytes: int
    total_bytes: int
    onnx_file_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def element_bits(elem_type: int) -> int:
    """Bits per element of an ONNX ``TensorProto`` data type; 0 if unknown/undefined."""
    if elem_type in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[elem_type]
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return 0


def tensor_bytes(shape: tuple[int, ...] | list[int], elem_type: int) -> int:
    """Bytes of a dense tensor of ``shape`` and ``elem_type`` (sub-byte types rounded up)."""
    return math.ceil(math.prod(shape) * element_bits(elem_type) / 8)


def load_model(onnx_bytes: bytes) -> onnx.ModelProto:
    """Parse serialized ONNX bytes, raising DeviceError on anything that is not a model."""
    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # protobuf raises DecodeError / RuntimeWarning subclasses
        first = first_line(exc)
        raise DeviceError(
            f"could not parse the ONNX model ({len(onnx_bytes)} bytes): {first}"
        ) from exc
    if len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise DeviceError(
            f"could not parse the ONNX model ({len(onnx_bytes)} bytes): it has no nodes or outputs"
        )
    return model


def _constant_bytes(node: onnx.NodeProto) -> int:
    """Bytes of the tensor a Constant node holds (sparse: values plus indices)."""
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_bytes(tuple(attr.t.dims), attr.t.data_type)
        if attr.name == "sparse_value":
            parts = (attr.sparse_value.values, attr.sparse_value.indices)
            return sum(tensor_bytes(tuple(t.dims), t.data_type) for t in parts)
        if attr.name in ("value_float", "value_int"):
            return 4 if attr.name == "value_float" else 8
        if attr.name in ("value_floats", "value_ints"):
            count = len(attr.floats) if attr.name == "value_floats" else len(attr.ints)
            return count * (4 if attr.name == "value_floats" else 8)
    return 0


def weight_bytes(model: onnx.ModelProto) -> int:
    """Initializer bytes plus Constant-node bytes of the main graph."""
    total = sum(tensor_bytes(tuple(t.dims), t.data_type) for t in model.graph.initializer)
    total += sum(_constant_bytes(n) for n in model.graph.node if n.op_type == "Constant")
    return total


def _fix_symbolic_input_dims(model: onnx.ModelProto) -> None:
    """Set every symbolic/unknown dimension of the graph inputs to 1 (batch 1)."""
    for value in model.graph.input:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1


def value_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of every typed value of the graph at batch 1, after shape inference."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    _fix_symbolic_input_dims(fixed)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort; fall back to the declared types
        inferred = fixed
    graph = inferred.graph
    sizes: dict[str, int] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.HasField("tensor_type"):
            continue
        ttype = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
        sizes[value.name] = tensor_bytes(dims, ttype.elem_type)
    return sizes


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read: over-approximated as all inputs."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for sub_node in sub.node:
                names.update(sub_node.input)
                names.update(_subgraph_inputs(sub_node))
    return names


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    return {name for name in [*node.input, *_subgraph_inputs(node)] if name}


def constant_names(graph: onnx.GraphProto) -> set[str]:
    """Weights (initializers, Constant outputs) and values computed from weights alone."""
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        derived = bool(inputs) and all(n in names for n in inputs) and not _subgraph_inputs(node)
        if node.op_type == "Constant" or derived:
            names.update(o for o in node.output if o)
    return names


def peak_activation_bytes(model: onnx.ModelProto) -> int:
    """Peak live activation bytes at batch 1 (liveness analysis, module docstring)."""
    graph = model.graph
    sizes = value_sizes(model)
    constants = constant_names(graph)
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in _node_inputs(node):
            last_use[name] = index
    keep = {o.name for o in graph.output}
    live = {i.name: sizes.get(i.name, 0) for i in graph.input if i.name not in constants}
    peak = sum(live.values())
    live = {name: size for name, size in live.items() if name in last_use or name in keep}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in constants:
                live[name] = sizes.get(name, 0)
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if name not in keep and last_use.get(name, -1) <= index:
                del live[name]
    return peak


def onnx_memory(onnx_bytes: bytes) -> MemoryStats:
    """Weights, peak activations and file size of a serialized ONNX model (module docstring)."""
    model = load_model(onnx_bytes)
    weights = weight_bytes(model)
    peak = peak_activation_bytes(model)
    return MemoryStats(
        weight_bytes=weights,
        peak_activation_bytes=peak,
        total_bytes=weights + peak,
        onnx_file_bytes=len(onnx_bytes),
    )
