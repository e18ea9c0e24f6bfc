"""Episode records and the Pareto set over (accuracy up, latency down, memory down)."""

from __future__ import annotations

from collections.abc import Sequence

from modeltailor.results import EpisodeRecord, SearchResult


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


def search_result(
    searcher: str, records: Sequence[EpisodeRecord], interrupted: bool = False
) -> SearchResult:
    """The result of a search over ``records``: its Pareto set and best record filled in."""
    return SearchResult(searcher, list(records), pareto_front(records), best_record(records), interrupted)
