"""``modeltailor fold-report``: what layer folding changes on a teacher, measured on this machine.

Times the unfolded and the exported (BatchNorm folded) ONNX graphs at every ONNX Runtime
optimization level, all in alternating rounds on local ONNX Runtime with the device profile's
threads; counts the nodes ONNX Runtime actually runs after its optimizations. The torch-side
folding lives in ``compressors/folding.py``; this module only measures.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.folding import count_batchnorm, fold_batchnorm
from modeltailor.compressors.quantization import op_counts
from modeltailor.devices.local import LocalOrtDevice, time_alternately
from modeltailor.devices.memory import onnx_memory
from modeltailor.devices.profiles import get_spec
from modeltailor.devices.session import optimized_graph
from modeltailor.errors import ConfigError

REPORT_LEVELS: tuple[str, ...] = ("disable", "basic", "extended", "all")


def local_device(name: str, profiles: Any = None, runs: int = 200) -> LocalOrtDevice:
    """The local ONNX Runtime device of profile ``name``; ConfigError for another kind."""
    spec = get_spec(name, profiles)
    if spec.kind != "local-ort":
        raise ConfigError(
            f"device '{name}' is a {spec.kind} profile: fold-report times graphs on this machine: "
            "choose a local-ort device"
        )
    return LocalOrtDevice(
        name=name, intra_op_threads=spec.intra_op_threads,
        graph_optimization_level=spec.graph_optimization_level, runs=runs,
    )


def _torch_summary(model: nn.Module, folded: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        diff = (model.eval()(example) - folded(example)).abs().max().item()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "buffers": sum(b.numel() for b in model.buffers()),
        "batchnorm": count_batchnorm(model),
        "folded_params": sum(p.numel() for p in folded.parameters()),
        "folded_buffers": sum(b.numel() for b in folded.buffers()),
        "folded_batchnorm": count_batchnorm(folded),
        "folded_max_abs_diff": diff,
    }


def _graph_entry(data: bytes, levels: Sequence[str], threads: int) -> dict[str, Any]:
    ops = op_counts(data)
    entry: dict[str, Any] = {"nodes": sum(ops.values()), "ops": ops, "memory": onnx_memory(data).to_dict()}
    entry["ort"] = {}
    for level in levels:
        ort_ops = op_counts(optimized_graph(data, level, threads))
        entry["ort"][level] = {"nodes": sum(ort_ops.values()), "ops": ort_ops}
    return entry


def fold_report(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: LocalOrtDevice,
    levels: Sequence[str] = REPORT_LEVELS,
) -> dict[str, Any]:
    """What folding changes, measured: torch parameters, ONNX nodes, ORT nodes, latency, memory.

    Graphs: ``unfolded`` (BatchNormalization nodes kept), ``exported`` (``export_onnx``: BN
    folded by the exporter) and ``folded_export`` (``fold_batchnorm`` then ``export_onnx``).
    For the first two, ``ort[level]`` has the node counts ONNX Runtime runs after its graph
    optimizations at each level and their latency on ``device`` (its threads, runs, rounds),
    all timed in alternating rounds; ``memory`` is ``onnx_memory`` of the stored graph.
    """
    shape = tuple(int(d) for d in input_shape)
    folded = fold_batchnorm(model)
    graphs = {"unfolded": export_onnx(model, shape, keep_batchnorm=True), "exported": export_onnx(model, shape)}
    report: dict[str, Any] = {
        "device": device.name,
        "threads": device.intra_op_threads,
        "torch": _torch_summary(copy.deepcopy(model), folded, torch.randn(2, *shape)),
    }
    for name, data in graphs.items():
        report[name] = _graph_entry(data, levels, device.intra_op_threads)
    plan = {
        (name, level): (replace(device, graph_optimization_level=level), data)
        for name, data in graphs.items()
        for level in levels
    }
    for (name, level), stats in time_alternately(plan).items():
        report[name]["ort"][level].update(latency_ms=stats.median_ms, p90_ms=stats.p90_ms)
    folded_ops = op_counts(export_onnx(folded, shape))
    report["folded_export"] = {"nodes": sum(folded_ops.values()), "ops": folded_ops}
    return report
