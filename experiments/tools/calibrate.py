"""Calibrate a latency table for a device and report its error on held-out architectures.

``calibrate`` builds a zoo model and random channel-pruned variants of it (the unpruned model
first), measures every variant whole on the device, times the nodes of the *training* variants
into a :class:`~modeltailor.devices.latency_table.LatencyTable`, fits the table's intercept and
scale on them, then predicts the *held-out* variants from that table alone (their missing keys
estimated, never measured: no leak) and reports the mean absolute percentage error
``MAPE = mean(|predicted - measured| / measured) * 100``. The table is saved with its MAPE.

The command around it (``modeltailor devices calibrate``) is in ``service/devices_cli.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import ChannelPruningCompressor, count_params
from modeltailor.compressors.units import analyze_model
from modeltailor.devices.base import Device
from modeltailor.devices.latency_table import NODE_RUNS, LatencyTable, measure_nodes
from modeltailor.errors import ConfigError
from modeltailor.models.zoo import build_model

MIN_KEEP, MAX_KEEP = 0.2, 1.0
ROUND_TO = 4
TABLES_DIR = Path("~/.cache/modeltailor/tables")


def default_table_path(device: str) -> Path:
    return (TABLES_DIR / f"{device}.json").expanduser()


@dataclass(frozen=True)
class ArchRow:
    """One calibration architecture: its size, measured and predicted latency."""

    index: int
    params: int
    measured_ms: float
    predicted_ms: float
    error_pct: float
    estimated_nodes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationReport:
    """Outcome of ``calibrate``: held-out error (``rows``, ``mape``) and what it cost."""

    mape: float
    rows: tuple[ArchRow, ...]
    table_path: Path
    nodes_measured: int
    seconds: float
    train_mape: float = float("nan")
    train_rows: tuple[ArchRow, ...] = ()
    estimated_keys: int = 0
    intercept: float = 0.0
    scale: float = 1.0
    device: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["table_path"] = str(self.table_path)
        data["rows"] = [r.to_dict() for r in self.rows]
        data["train_rows"] = [r.to_dict() for r in self.train_rows]
        return data


@dataclass(frozen=True)
class _Arch:
    index: int
    params: int
    onnx_bytes: bytes
    measured_ms: float


def _check_counts(device: Device, architectures: int, held_out: int) -> None:
    if device.kind == "table":
        raise ConfigError(
            f"device '{device.name}' is itself a latency table: calibrate the device it was measured on"
        )
    if held_out < 1 or architectures - held_out < 2:
        raise ConfigError(
            f"calibration needs held_out >= 1 and at least 2 training architectures, got "
            f"architectures={architectures}, held_out={held_out}: raise --architectures"
        )


def random_variants(
    net: nn.Module, example: torch.Tensor, count: int, seed: int
) -> list[nn.Module]:
    """The unpruned model, then ``count - 1`` copies pruned with random keep ratios per unit."""
    units = [unit.name for unit in analyze_model(net, example).units]
    rng = np.random.default_rng(seed)
    compressor = ChannelPruningCompressor(round_to=ROUND_TO)
    variants = [net]
    for _ in range(count - 1):
        keeps = rng.uniform(MIN_KEEP, MAX_KEEP, size=len(units))
        policy = Policy(tuple(UnitAction(u, keep=float(k)) for u, k in zip(units, keeps, strict=True)))
        variants.append(compressor.apply(net, policy, example))
    return variants


def _measure_archs(
    device: Device, variants: list[nn.Module], shape: tuple[int, int, int], say: Callable[[str], None]
) -> list[_Arch]:
    archs: list[_Arch] = []
    for index, variant in enumerate(variants):
        onnx_bytes = export_onnx(variant, shape)
        ms = device.measure(onnx_bytes).latency.median_ms
        archs.append(_Arch(index, count_params(variant), onnx_bytes, ms))
        say(f"architecture {index + 1}/{len(variants)}: {archs[-1].params:,} params, {ms:.4f} ms")
    return archs


def _rows(table: LatencyTable, archs: list[_Arch]) -> tuple[tuple[ArchRow, ...], set[str]]:
    """Predicted rows for the architectures, and the distinct keys that were estimated."""
    rows: list[ArchRow] = []
    estimated: set[str] = set()
    for arch in archs:
        prediction = table.explain(arch.onnx_bytes)
        estimated.update(prediction.estimated)
        error = abs(prediction.latency_ms - arch.measured_ms) / arch.measured_ms * 100
        rows.append(
            ArchRow(arch.index, arch.params, arch.measured_ms, prediction.latency_ms, error,
                    len(prediction.estimated))
        )
    return tuple(rows), estimated


def _mape(rows: tuple[ArchRow, ...]) -> float:
    return float(np.mean([r.error_pct for r in rows])) if rows else float("nan")


def _build_table(
    device: Device, train: list[_Arch], node_runs: int, say: Callable[[str], None]
) -> tuple[LatencyTable, int]:
    table = LatencyTable(device=device.describe())
    measured = 0
    for arch in train:
        measured += measure_nodes(device, arch.onnx_bytes, table, runs=node_runs)
        say(f"nodes of architecture {arch.index + 1}: table has {len(table)} entries")
    sums = [table.explain(a.onnx_bytes).node_sum_ms for a in train]
    table.fit(sums, [a.measured_ms for a in train])
    return table, measured


def calibrate(
    device: Device,
    *,
    model: str = "resnet20",
    in_channels: int = 1,
    input_size: int = 32,
    num_classes: int = 10,
    architectures: int = 16,
    held_out: int = 4,
    seed: int = 0,
    table_path: Path,
    progress: Callable[[str], None] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    node_runs: int = NODE_RUNS,
) -> CalibrationReport:
    """Build and save a latency table for ``device``; report its held-out MAPE (module doc)."""
    _check_counts(device, architectures, held_out)
    say = progress or (lambda _text: None)
    start = time.perf_counter()
    net = build_model(model, in_channels=in_channels, input_size=input_size,
                      num_classes=num_classes, **dict(model_kwargs or {}))
    example = torch.zeros(1, in_channels, input_size, input_size)
    variants = random_variants(net, example, architectures, seed)
    archs = _measure_archs(device, variants, (in_channels, input_size, input_size), say)
    train, test = archs[: architectures - held_out], archs[architectures - held_out :]
    table, measured = _build_table(device, train, node_runs, say)
    train_rows, _ = _rows(table, train)
    rows, estimated = _rows(table, test)
    table.mape = _mape(rows)
    table.meta = {
        "model": model, "in_channels": in_channels, "input_size": input_size,
        "num_classes": num_classes, "model_kwargs": dict(model_kwargs or {}),
        "architectures": architectures, "held_out": held_out, "seed": seed,
        "node_runs": node_runs, "train_mape": _mape(train_rows),
    }
    path = table.save(table_path)
    return CalibrationReport(
        mape=table.mape, rows=rows, table_path=path, nodes_measured=measured,
        seconds=time.perf_counter() - start, train_mape=_mape(train_rows), train_rows=train_rows,
        estimated_keys=len(estimated), intercept=table.intercept, scale=table.scale,
        device=table.device,
    )
