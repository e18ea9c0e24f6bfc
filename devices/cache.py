"""The signature cache: reuse a device's latency for models of the same architecture.

:func:`architecture_signature` hashes a model's structure, not its weight values or tensor names;
:class:`CachedDevice` keys latencies by ``"<device name>|<signature>"`` (memory is always
recomputed). Search-time candidates that differ only in weights are timed once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modeltailor.common.storage import atomic_write, locked
from modeltailor.devices.base import Device, K
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import load_model, onnx_memory
from modeltailor.errors import DeviceError, first_line


def _type_text(value: onnx.ValueInfoProto) -> str:
    """'elem_type[d0,d1,...]' of a value; symbolic dims by name, unknown as '?'."""
    ttype = value.type.tensor_type
    dims = [
        str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
        for d in ttype.shape.dim
    ]
    return f"{ttype.elem_type}[{','.join(dims)}]"


def _tensor_text(tensor: onnx.TensorProto) -> str:
    """Shape and dtype of a tensor; small int64 tensors (shapes, axes) also by value."""
    text = f"T{tensor.data_type}{list(tensor.dims)}"
    if tensor.data_type == onnx.TensorProto.INT64 and int(np.prod(tensor.dims)) <= 64:
        text += str(onnx.numpy_helper.to_array(tensor).tolist())
    return text


def _attribute_text(attr: onnx.AttributeProto) -> str:
    if attr.type == onnx.AttributeProto.TENSOR:
        return f"{attr.name}={_tensor_text(attr.t)}"
    if attr.type == onnx.AttributeProto.GRAPH:
        return f"{attr.name}={{{';'.join(_graph_lines(attr.g))}}}"
    if attr.type == onnx.AttributeProto.GRAPHS:
        return f"{attr.name}=[{'|'.join(';'.join(_graph_lines(g)) for g in attr.graphs)}]"
    return f"{attr.name}={onnx.helper.get_attribute_value(attr)!r}"


def _graph_lines(graph: onnx.GraphProto) -> list[str]:
    """Canonical text of a graph: names replaced by order of appearance, weights by shape."""
    weights = {t.name: _tensor_text(t) for t in graph.initializer}
    types = {v.name: _type_text(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    tokens: dict[str, str] = {}

    def token(name: str) -> str:
        if not name or name in weights:
            return weights.get(name, "-")
        tokens.setdefault(name, f"v{len(tokens)}")
        return f"{tokens[name]}:{types.get(name, '?')}"

    lines = [f"in {token(v.name)}" for v in graph.input if v.name not in weights]
    for node in graph.node:
        attrs = ",".join(_attribute_text(a) for a in sorted(node.attribute, key=lambda a: a.name))
        ins = ",".join(token(n) for n in node.input)
        outs = ",".join(token(n) for n in node.output)
        lines.append(f"{node.domain}::{node.op_type}({ins})->({outs}){{{attrs}}}")
    lines += [f"out {token(v.name)}" for v in graph.output]
    return lines


def architecture_signature(onnx_bytes: bytes) -> str:
    """Hash of a model's structure, independent of weight values and tensor names.

    Covers opsets, node op types and attributes, wiring, every value's inferred dtype and
    shape, and initializer shapes and dtypes (int64 initializers of <= 64 elements, i.e.
    shapes and axes, by value too; int8/int32 quantized weights and biases never). Returns the first 16 hex chars of a sha256.
    """
    model = load_model(onnx_bytes)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # best effort: the declared types still describe the graph
        pass
    opsets = sorted(f"opset {o.domain}:{o.version}" for o in model.opset_import)
    text = "\n".join([*opsets, *_graph_lines(model.graph)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CachedDevice:
    """Wraps a device and reuses its latency for models with the same architecture.

    The cache key is ``"<device name>|<architecture_signature>"``; memory is recomputed on
    every call. With ``path``, the cache is a JSON file ``{key: LatencyStats.to_dict()}``
    read at construction and, on every new entry, re-read, merged and rewritten under an
    inter-process lock (unique temp file + rename), so processes that fill one cache at once
    never lose each other's entries.
    """

    def __init__(self, device: Device, path: Path | str | None = None) -> None:
        self.device = device
        self.name = device.name
        self.path = Path(path) if path is not None else None
        self.hits = 0
        self.misses = 0
        self._cache: dict[str, LatencyStats] = self._read() if self.path else {}

    @property
    def kind(self) -> str:
        return self.device.kind

    def describe(self) -> dict[str, Any]:
        return {**self.device.describe(), "cache": str(self.path) if self.path else None}

    def uncached(self) -> Device:
        return self.device.uncached()

    def with_timing(
        self, *, runs: int | None = None, warmup: int | None = None, rounds: int | None = None
    ) -> Device:
        """The device itself with other timings: a cached figure was taken with the old ones."""
        return self.device.uncached().with_timing(runs=runs, warmup=warmup, rounds=rounds)

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]:
        """Timed afresh on the device: alternating rounds exist to compare models timed together."""
        return self.device.uncached().measure_alternately(models, repeats)

    def measure_latency(self, onnx_bytes: bytes) -> LatencyStats:
        return self.measure(onnx_bytes).latency

    def key(self, onnx_bytes: bytes) -> str:
        return f"{self.name}|{architecture_signature(onnx_bytes)}"

    def measure(self, onnx_bytes: bytes) -> Measurement:
        key = self.key(onnx_bytes)
        if key in self._cache:
            self.hits += 1
            memory = onnx_memory(onnx_bytes)
            return Measurement(latency=self._cache[key], memory=memory, device=self.name)
        self.misses += 1
        result = self.device.measure(onnx_bytes)
        self._put(key, result.latency)
        return result

    def __len__(self) -> int:
        return len(self._cache)

    def _read(self) -> dict[str, LatencyStats]:
        assert self.path is not None
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {key: LatencyStats.from_dict(value) for key, value in raw.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DeviceError(
                f"latency cache {self.path} is unreadable ({first_line(exc)}): delete it or pass another path"
            ) from exc

    def _put(self, key: str, latency: LatencyStats) -> None:
        self._cache[key] = latency
        if self.path is None:
            return
        with locked(self.path):
            merged = {**self._read(), **self._cache}
            self._cache = merged
            payload = {k: v.to_dict() for k, v in sorted(merged.items())}
            atomic_write(self.path, json.dumps(payload, indent=1))
