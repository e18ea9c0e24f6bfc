"""Export PyTorch models to ONNX, and check the export against torch (parity).

``export_onnx`` uses the TorchScript exporter (``dynamo=False``) on a deep copy of the
model in eval mode, so the caller's model is never touched. In eval mode that exporter
folds every BatchNorm that follows a Conv into the Conv's weights and bias (a Conv
without bias gains one), so the exported graph has no BatchNormalization nodes. It also
merges initializers with equal values (Identity nodes); ``undo_initializer_dedup`` splits
them again so the graph does not depend on weight values.

Tensor names: the graph input is ``input`` and the (first) output is ``logits``.
``input_shape`` is the shape of ONE sample, without the batch axis, e.g. ``(3, 32, 32)``;
the exported graph has batch 1 (static) unless ``dynamic_batch=True``. ``keep_batchnorm=True``
keeps every BatchNormalization node (no eval-mode fold, no constant folding): what
``fold-report`` compares against.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from modeltailor.common.cores import working
from modeltailor.devices.session import run_onnx
from modeltailor.errors import DeviceError, first_line

INPUT_NAME = "input"
OUTPUT_NAME = "logits"




def _check_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise DeviceError(
            f"input shape {tuple(input_shape)} is invalid: give one sample's shape "
            "without the batch axis, e.g. (3, 32, 32)"
        )
    return shape


def _eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode; the original keeps its mode and weights."""
    return copy.deepcopy(model).cpu().eval()


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: Path | None = None,
    opset: int = 17,
    dynamic_batch: bool = False,
    keep_batchnorm: bool = False,
) -> bytes:
    """Export ``model`` (one sample of ``input_shape``, batch 1) to ONNX bytes; write ``path``."""
    shape = _check_shape(input_shape)
    clone = _eval_copy(model)
    dummy = torch.zeros((1, *shape), dtype=torch.float32)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), working():  # CPU work: not while a model is timed
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # e.g. `len(x)` in a user's forward
            torch.onnx.export(
                clone,
                (dummy,),
                buffer,  # type: ignore[arg-type]  # torch types `f` as a path, though the exporter writes to file objects too
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                training=training,
                do_constant_folding=not keep_batchnorm,
            )
    except Exception as exc:
        raise DeviceError(
            f"could not export the model to ONNX with input shape {(1, *shape)}: {first_line(exc)}"
        ) from exc
    data = undo_initializer_dedup(buffer.getvalue())
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def undo_initializer_dedup(onnx_bytes: bytes) -> bytes:
    """Give each ``Identity(initializer)`` output its own copy of the initializer.

    The TorchScript exporter merges initializers with EQUAL VALUES (e.g. the all-zero biases
    of freshly folded BatchNorms) into one tensor read through Identity nodes. That makes the
    graph depend on weight values; undoing it keeps structure, memory and signatures stable.
    """
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    aliases = [
        n
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    ]
    if not aliases:
        return onnx_bytes
    for node in aliases:
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(inits[node.input[0]])
        copy_.name = node.output[0]
        graph.initializer.append(copy_)
        graph.node.remove(node)
    used = {name for n in graph.node for name in n.input} | outputs
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model.SerializeToString()


def torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Output of an eval-mode copy of ``model`` on ``x`` as float32 numpy."""
    with torch.no_grad():
        out = _eval_copy(model)(x.detach().cpu().float())
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.numpy().astype(np.float32)


def onnx_matches_torch(
    model: nn.Module,
    onnx_bytes: bytes,
    x: torch.Tensor,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> float:
    """Max abs difference between ONNX and torch outputs on ``x``; DeviceError if not allclose."""
    expected = torch_logits(model, x)
    actual = run_onnx(onnx_bytes, x.detach().cpu().numpy())
    if actual.shape != expected.shape:
        raise DeviceError(f"ONNX output shape {actual.shape} differs from torch's {expected.shape}")
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not np.allclose(actual, expected, atol=atol, rtol=rtol):
        raise DeviceError(
            f"ONNX output differs from torch by up to {diff:.3g} (atol={atol}, rtol={rtol}): "
            "check for ops the exporter does not support exactly"
        )
    return diff
