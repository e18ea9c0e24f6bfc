"""What a device answers: latency statistics and memory of one ONNX model.

:class:`LatencyStats` is the timing statistic (see ``devices/local.py`` for the protocol that
produces it); :class:`Measurement` pairs it with :class:`~modeltailor.devices.memory.MemoryStats`.
Both are plain data, shared by every device kind and by the device server's JSON answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from modeltailor.devices.memory import MemoryStats


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


TIMED = ("alone", "alternating", "sequential", "predicted")
"""How a measurement was timed relative to the others it is compared with: ``alone`` (a single
model), ``alternating`` (in rounds interleaved with them, so load hits them alike),
``sequential`` (one after the other: load in between skews their ratio), ``predicted`` (not timed:
a latency table's prediction)."""


@dataclass(frozen=True)
class Measurement:
    """Latency and memory of one model on one device; ``timed``: one of :data:`TIMED`."""

    latency: LatencyStats
    memory: MemoryStats
    device: str
    timed: str = "alone"

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
