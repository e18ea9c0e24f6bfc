"""Devices measure an ONNX model's latency and memory.

A :class:`Device` takes serialized ONNX bytes and returns a :class:`Measurement`
(latency statistics in milliseconds plus :class:`~modeltailor.env.memory.MemoryStats`).

:class:`LocalOrtDevice` times ONNX Runtime on this machine's CPU. Protocol: one session
per call (CPUExecutionProvider, ``intra_op_threads`` threads, one inter-op thread,
sequential execution, no spin-waiting), a fixed random input of the graph's declared input
shape (symbolic dims set to 1), ``warmup`` untimed runs, then ``runs`` timed runs split
into ``rounds`` rounds (young garbage collected between rounds, collector off within), each ``session.run`` timed alone
with ``time.perf_counter_ns``. If ``min_time_s`` > 0, rounds continue until that much
timed time has passed (at most ``10 * runs`` runs).

The reported latency (``median_ms``) is the median of the quietest round: the lowest of the
per-round medians. On a shared machine other tenants' load comes in bursts of a few hundred
milliseconds and only ever adds time; a burst that covers most of a measurement moved the pooled
median of the same model by up to 60% on the 2-core dev machine, while the quietest round's
median stayed within a few percent. p90, mean, std, min and IQR pool every timed run, and
``pooled_median_ms`` keeps the pooled median, so the noise stays visible in ``spread``.

:class:`CachedDevice` reuses latency for models with the same
:func:`architecture_signature` (same structure, any weight values) on the same device name;
memory is always recomputed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import onnx
import onnxruntime as ort

from modeltailor.env.memory import MemoryStats, load_model, onnx_memory
from modeltailor.errors import DeviceError

GRAPH_OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class LatencyStats:
    """Per-run latency statistics in milliseconds over ``runs`` timed runs."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    iqr_ms: float
    runs: int
    pooled_median_ms: float | None = None  # median of every timed run; None where not measured

    @property
    def spread(self) -> float:
        """(p90 - median) / median: how heavy the slow tail is (0 = perfectly steady)."""
        return (self.p90_ms - self.median_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "spread": self.spread}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def from_rounds(cls, rounds: Sequence[np.ndarray]) -> LatencyStats:
        """Pooled statistics, with ``median_ms`` the lowest per-round median (see the module doc)."""
        pooled = cls.from_samples(np.concatenate(rounds))
        quietest = min(float(np.median(r)) for r in rounds)
        return replace(pooled, median_ms=quietest, pooled_median_ms=pooled.median_ms)

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray) -> LatencyStats:
        q25, median, q75, p90 = np.percentile(samples_ms, [25, 50, 75, 90])
        return cls(
            median_ms=float(median),
            p90_ms=float(p90),
            mean_ms=float(np.mean(samples_ms)),
            std_ms=float(np.std(samples_ms)),
            min_ms=float(np.min(samples_ms)),
            iqr_ms=float(q75 - q25),
            runs=int(samples_ms.size),
        )


@dataclass(frozen=True)
class Measurement:
    """Latency and memory of one model on one device."""

    latency: LatencyStats
    memory: MemoryStats
    device: str

    def to_dict(self) -> dict[str, float]:
        """Flat numeric keys, ready for logging as metrics."""
        return {
            "latency_ms": self.latency.median_ms,
            "latency_p90_ms": self.latency.p90_ms,
            "latency_spread": self.latency.spread,
            "memory_bytes": self.memory.total_bytes,
            "weight_bytes": self.memory.weight_bytes,
            "activation_bytes": self.memory.peak_activation_bytes,
            "onnx_bytes": self.memory.onnx_file_bytes,
        }


@runtime_checkable
class Device(Protocol):
    """Anything that measures serialized ONNX models."""

    name: str

    def measure(self, onnx_bytes: bytes) -> Measurement: ...

    def describe(self) -> dict: ...


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _random_feed(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed random input for every graph input; symbolic dims become 1."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        if arg.type == "tensor(float16)":
            feed[arg.name] = rng.standard_normal(shape).astype(np.float16)
        elif arg.type in ("tensor(int64)", "tensor(int32)"):
            feed[arg.name] = np.zeros(shape, dtype=np.int64 if "64" in arg.type else np.int32)
        else:
            feed[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


@dataclass(frozen=True)
class LocalOrtDevice:
    """ONNX Runtime on this machine's CPU; see the module docstring for the timing protocol."""

    name: str = "cpu-1t"
    intra_op_threads: int = 1
    graph_optimization_level: str = "all"
    warmup: int = 20
    runs: int = 200
    rounds: int = 5
    min_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in GRAPH_OPT_LEVELS:
            choices = ", ".join(GRAPH_OPT_LEVELS)
            raise DeviceError(
                f"graph_optimization_level '{self.graph_optimization_level}' of device "
                f"'{self.name}' is unknown: choose one of {choices}"
            )
        for key in ("intra_op_threads", "runs", "rounds"):
            if int(getattr(self, key)) < 1:
                raise DeviceError(
                    f"{key}={getattr(self, key)} of device '{self.name}' must be >= 1"
                )
        if self.warmup < 0 or self.min_time_s < 0:
            raise DeviceError(f"warmup and min_time_s of device '{self.name}' must be >= 0")

    def describe(self) -> dict:
        return {"kind": "local-ort", **asdict(self), "onnxruntime": ort.__version__}

    def session(self, onnx_bytes: bytes) -> ort.InferenceSession:
        """An InferenceSession configured for timing; DeviceError if ORT cannot load the model."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = GRAPH_OPT_LEVELS[self.graph_optimization_level]
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DeviceError(
                f"device '{self.name}' could not load the model: {_first_line(exc)}"
            ) from exc

    def time_runs(self, session: ort.InferenceSession) -> np.ndarray:
        """Per-run latencies in ms after warm-up, pooled over the rounds."""
        return np.concatenate(self.time_rounds(session))

    def time_rounds(self, session: ort.InferenceSession) -> list[np.ndarray]:
        """Per-run latencies in ms after warm-up, one array per round."""
        feed = _random_feed(session)
        try:
            for _ in range(self.warmup):
                session.run(None, feed)
            return self._timed_rounds(session, feed)
        except Exception as exc:
            raise DeviceError(
                f"device '{self.name}' failed to run the model: {_first_line(exc)}"
            ) from exc

    def _want_more(self, samples: list[int]) -> bool:
        if len(samples) < self.runs:
            return True
        return sum(samples) < self.min_time_s * 1e9 and len(samples) < 10 * self.runs

    def _timed_rounds(
        self, session: ort.InferenceSession, feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        per_round = -(-self.runs // self.rounds)
        samples: list[int] = []
        rounds: list[np.ndarray] = []
        gc_was_enabled = gc.isenabled()
        try:
            while self._want_more(samples):
                gc.collect(0)
                gc.disable()
                start_of_round = len(samples)
                for _ in range(per_round):
                    start = time.perf_counter_ns()
                    session.run(None, feed)
                    samples.append(time.perf_counter_ns() - start)
                    if not self._want_more(samples):
                        break
                gc.enable()
                rounds.append(np.asarray(samples[start_of_round:], dtype=np.float64) / 1e6)
        finally:
            if gc_was_enabled:
                gc.enable()
            else:
                gc.disable()
        return rounds

    def measure(self, onnx_bytes: bytes) -> Measurement:
        session = self.session(onnx_bytes)
        latency = LatencyStats.from_rounds(self.time_rounds(session))
        return Measurement(latency=latency, memory=onnx_memory(onnx_bytes), device=self.name)


K = TypeVar("K", bound=Hashable)


def time_alternately(runs: Mapping[K, tuple[LocalOrtDevice, bytes]], repeats: int = 1) -> dict[K, LatencyStats]:
    """Latency of several (device, model) pairs, timed in alternating rounds.

    Each pair gets ``repeats * device.runs`` timed runs in ``repeats * device.rounds`` rounds; every
    round times each pair once, so load that comes and goes hits them alike and their ratio holds.
    """
    one_round = {
        key: (replace(device, runs=-(-device.runs // device.rounds), rounds=1), device.session(data))
        for key, (device, data) in runs.items()
    }
    rounds: dict[K, list[np.ndarray]] = {key: [] for key in runs}
    for _ in range(max((d.rounds for d, _ in runs.values()), default=0) * repeats):
        for key, (device, session) in one_round.items():
            rounds[key] += device.time_rounds(session)
    return {key: LatencyStats.from_rounds(v) for key, v in rounds.items()}


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
    read at construction and rewritten atomically (temp file + rename) on every new entry,
    merged with what other processes wrote there meanwhile.
    """

    def __init__(self, device: Device, path: Path | str | None = None) -> None:
        self.device = device
        self.name = device.name
        self.path = Path(path) if path is not None else None
        self.hits = 0
        self.misses = 0
        self._cache: dict[str, LatencyStats] = self._read() if self.path else {}

    def describe(self) -> dict:
        return {**self.device.describe(), "cache": str(self.path) if self.path else None}

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
                f"latency cache {self.path} is unreadable ({_first_line(exc)}): delete it or pass another path"
            ) from exc

    def _put(self, key: str, latency: LatencyStats) -> None:
        self._cache[key] = latency
        if self.path is None:
            return
        merged = {**self._read(), **self._cache}
        self._cache = merged
        payload = {k: v.to_dict() for k, v in sorted(merged.items())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(payload, handle, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


DEVICE_PROFILES: dict[str, dict[str, Any]] = {
    "cpu-1t": {"intra_op_threads": 1},
    "cpu-2t": {"intra_op_threads": 2},
}


def get_device(name: str, **overrides: Any) -> Device:
    """A built-in device by profile name; ``overrides`` replace LocalOrtDevice fields."""
    if name not in DEVICE_PROFILES:
        raise DeviceError(f"unknown device '{name}': choose one of {', '.join(DEVICE_PROFILES)}")
    allowed = {f.name for f in fields(LocalOrtDevice)} - {"name"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise DeviceError(
            f"unknown option '{unknown[0]}' for device '{name}': choose from {', '.join(sorted(allowed))}"
        )
    return LocalOrtDevice(name=name, **{**DEVICE_PROFILES[name], **overrides})
