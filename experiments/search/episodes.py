"""`OUT/episodes.jsonl`: every finished episode, one JSON line each, as it happens.

Each record is appended (and logged to MLflow, and shown by the reporter) the moment its episode
finishes, so an interrupted search loses nothing it measured. A kill during a write can leave a
torn last line: readers skip it, and a resumed search drops it from the file before appending.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

from modeltailor.common.storage import atomic_write
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.history import best_record
from modeltailor.env.records import EpisodeRecord
from modeltailor.errors import ModelTailorError
from modeltailor.experiments.tracking.tracker import Tracker

log = logging.getLogger(__name__)



class EpisodeReporter(Protocol):
    def episode(self, record: EpisodeRecord, best: EpisodeRecord | None) -> None: ...


def load_episodes(path: Path) -> list[EpisodeRecord]:
    """Records from an episodes.jsonl; a torn last line (a killed write) is skipped."""
    return read_episodes(path)[0]


def read_episodes(path: Path) -> tuple[list[EpisodeRecord], list[str]]:
    """The records of an episodes.jsonl and the lines they came from (unreadable lines left out)."""
    if not path.is_file():
        return [], []
    records, lines = [], []
    for line in path.read_text().splitlines():
        try:
            records.append(EpisodeRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ModelTailorError):
            log.warning("skipping an unreadable line of %s", path)
            continue
        lines.append(line)
    return records, lines


def repair_episodes(path: Path) -> list[EpisodeRecord]:
    """The readable records; unreadable lines (a write torn by a kill) are dropped from the file
    before anything is appended to it, so the next episode does not land on a half line."""
    records, lines = read_episodes(path)
    text, kept = (path.read_text() if path.is_file() else ""), "".join(line + "\n" for line in lines)
    if text != kept:  # a torn line, or a last line without its newline
        atomic_write(path, kept)
    dropped = len(text.splitlines()) - len(lines)
    if dropped:
        log.warning("resume: dropped %d unreadable line(s) of %s, kept %d episodes", dropped, path, len(records))
    return records


def attach_episode_sinks(
    env: CompressionEnv, path: Path, tracker: Tracker | None, reporter: EpisodeReporter
) -> None:

    def sink(record: EpisodeRecord) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(record.to_dict()) + "\n")
        if tracker is not None:
            tracker.log_episode(record.episode, episode_metrics(record))
        reporter.episode(record, best_record(env.history))

    env.callbacks.append(sink)


def episode_metrics(record: EpisodeRecord) -> dict[str, float]:
    return {
        "episode/accuracy": record.accuracy,
        "episode/latency_ms": record.latency_ms,
        "episode/memory_bytes": float(record.memory_bytes),
        "episode/params": float(record.params),
        "episode/reward": record.reward,
        "episode/feasible": float(record.feasible),
        "episode/failed": float(record.failure is not None),
    }
