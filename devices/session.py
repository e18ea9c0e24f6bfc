"""The one place ONNX Runtime sessions are made, and running a model on a batch.

``ort_session`` builds every session of the project: CPUExecutionProvider, ``threads`` intra-op
threads, one inter-op thread, sequential execution, spinning off (so measurements sharing cores
do not steal each other's time), the given graph optimization level. ``run_onnx`` runs a model
on a batch (accuracy of an int8 model, ONNX-vs-torch parity); ``optimized_graph`` returns the
graph ONNX Runtime actually runs after its optimizations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from modeltailor.errors import DeviceError, first_line

GRAPH_OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
RUN_CHUNK = 256


def session_options(threads: int = 1, optimization: str = "all") -> ort.SessionOptions:
    """Options for a timing-safe CPU session (see the module docstring)."""
    if optimization not in GRAPH_OPT_LEVELS:
        raise DeviceError(
            f"graph optimization level '{optimization}' is unknown: choose one of {', '.join(GRAPH_OPT_LEVELS)}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = GRAPH_OPT_LEVELS[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def ort_session(
    onnx_bytes: bytes,
    threads: int = 1,
    optimization: str = "all",
    who: str = "onnxruntime",
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """A CPU InferenceSession; DeviceError naming ``who`` if ONNX Runtime cannot load the model."""
    options = options or session_options(threads, optimization)
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DeviceError(f"{who} could not load the model: {first_line(exc)}") from exc


def random_feed(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
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


def optimized_graph(onnx_bytes: bytes, level: str, threads: int = 1) -> onnx.ModelProto:
    """The graph ONNX Runtime actually runs after its optimizations at ``level``."""
    with tempfile.TemporaryDirectory(prefix="modeltailor-opt-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = session_options(threads, level)
        options.optimized_model_filepath = str(path)
        ort_session(onnx_bytes, options=options)
        return onnx.load(str(path))


def _static_batch(session: ort.InferenceSession) -> int | None:
    """The declared batch size of the first input, or None when the axis is dynamic."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def run_onnx(onnx_bytes: bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """First output of the model for the batch ``x`` (N, ...): chunked, or per sample if static."""
    session = ort_session(onnx_bytes, threads)
    name = session.get_inputs()[0].name
    data = np.ascontiguousarray(x, dtype=np.float32)
    if len(data) == 0:
        raise DeviceError("run_onnx got an empty batch: pass at least one sample")
    static = _static_batch(session)
    step = static or RUN_CHUNK
    if static and len(data) % static:
        raise DeviceError(
            f"batch of {len(data)} samples does not split into the model's static batch "
            f"{static}: export with dynamic_batch=True"
        )
    outputs = [session.run(None, {name: data[i : i + step]})[0] for i in range(0, len(data), step)]
    return np.concatenate(outputs, axis=0)
