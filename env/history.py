"""Episode records and the Pareto set over (accuracy up, latency down, memory down)."""

from __future__ import annotations

from collections.abc import Sequence

from modeltailor.env.records import EpisodeRecord, SearchResult


def dominates(a: EpisodeRecord, b: EpisodeRecord) -> bool:
    no_worse = (
        a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms and a.memory_bytes <= b.memory_bytes
    )
    better = a.accuracy > b.accuracy or a.latency_ms < b.latency_ms or a.memory_bytes < b.memory_bytes
    return no_worse and better


def evaluated(records: Sequence[EpisodeRecord]) -> list[EpisodeRecord]:
    """The records whose policy was built and measured (not failed episodes)."""
    return [r for r in records if r.failure is None]


def pareto_front(records: Sequence[EpisodeRecord]) -> list[EpisodeRecord]:
    """Non-dominated records, one per architecture (first seen), sorted by latency; failed ones left out."""
    unique: dict[tuple, EpisodeRecord] = {}
    for record in evaluated(records):
        unique.setdefault(record.identity, record)
    candidates = list(unique.values())
    front = [r for r in candidates if not any(dominates(o, r) for o in candidates if o is not r)]
    return sorted(front, key=lambda r: r.latency_ms)


def best_record(records: Sequence[EpisodeRecord]) -> EpisodeRecord | None:
    """Highest reward among feasible records (all evaluated records if none is feasible)."""
    records = evaluated(records)
    feasible = [r for r in records if r.feasible] or records
    return max(feasible, key=lambda r: (r.reward, r.accuracy, -r.latency_ms), default=None)


def search_result(
    searcher: str, records: Sequence[EpisodeRecord], interrupted: bool = False
) -> SearchResult:
    """The result of a search over ``records``: its Pareto set and best record filled in."""
    return SearchResult(searcher, list(records), pareto_front(records), best_record(records), interrupted)
