"""Episode records and the Pareto set over (accuracy up, latency down, memory down)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated policy: its actions and what was measured for it."""

    episode: int
    policy: dict[str, Any]
    accuracy: float
    latency_ms: float
    latency_p90_ms: float
    memory_bytes: int
    params: int
    macs: int
    reward: float
    feasible: bool
    cached: bool
    seconds: float
    kept_channels: dict[str, int] = field(default_factory=dict)
    architecture: str = ""

    @property
    def identity(self) -> tuple:
        """Same identity = same compressed model shape (and int8 units)."""
        return (self.architecture,) if self.architecture else tuple(sorted(self.kept_channels.items()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dominates(a: EpisodeRecord, b: EpisodeRecord) -> bool:
    no_worse = (
        a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms and a.memory_bytes <= b.memory_bytes
    )
    better = a.accuracy > b.accuracy or a.latency_ms < b.latency_ms or a.memory_bytes < b.memory_bytes
    return no_worse and better


def pareto_front(records: Sequence[EpisodeRecord]) -> list[EpisodeRecord]:
    """Non-dominated records, one per architecture (first seen), sorted by latency."""
    unique: dict[tuple, EpisodeRecord] = {}
    for record in records:
        unique.setdefault(record.identity, record)
    candidates = list(unique.values())
    front = [r for r in candidates if not any(dominates(o, r) for o in candidates if o is not r)]
    return sorted(front, key=lambda r: r.latency_ms)


def best_record(records: Sequence[EpisodeRecord]) -> EpisodeRecord | None:
    """Highest reward among feasible records (all records if none is feasible)."""
    feasible = [r for r in records if r.feasible] or list(records)
    return max(feasible, key=lambda r: (r.reward, r.accuracy, -r.latency_ms), default=None)
