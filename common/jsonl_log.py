"""An append-only log of JSON records that many processes write at once (one host or shared storage).

Each record is one compact JSON line. The guarantees:

* concurrent writers never interleave: a batch is written under the inter-process lock of the
  file (``storage.locked``) with a single ``os.write`` on an ``O_APPEND`` descriptor;
* a finished ``append``/``extend`` is durable and whole: the file is fsynced (and its folder, when
  the append created the file) before the call returns;
* a writer killed mid-write (``kill -9``) leaves at most one torn line at the end. Readers skip it
  (counted in ``LogContents.skipped``), and the next writer first ends it with a newline, so its
  own records start on their own lines.

Reading takes no lock: records are appended whole, so a reader sees every finished append; a line
still being written when it reads counts as skipped that one time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeltailor.common.storage import locked
from modeltailor.errors import ModelTailorError


@dataclass(frozen=True)
class LogContents:
    """The records of a log, in file order, and how many non-blank lines were not a JSON object."""

    records: list[dict[str, Any]]
    skipped: int


@dataclass(frozen=True)
class JsonlLog:
    """The JSON-lines file at ``path``; it and its folders are created by the first append."""

    path: Path

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (durable and whole when this returns)."""
        self.extend([record])

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Append several records at once: no other writer's record lands among them. A record JSON
        cannot encode raises TypeError, and then nothing of the batch is written."""
        data = "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records)
        if not data:
            return
        path = Path(self.path)
        if path.is_dir():
            raise self._error("is a folder, not a file", "pass the path of a file (it is created if missing)")
        try:
            with locked(path):
                created = not path.exists()
                payload = (b"\n" if _ends_mid_line(path) else b"") + data.encode()
                fd = os.open(path, os.O_APPEND | os.O_CREAT | os.O_WRONLY, 0o644)
                try:
                    written = os.write(fd, payload)
                    while written < len(payload):  # a short write (disk full, huge batch): finish it
                        written += os.write(fd, payload[written:])
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if created:
                    _fsync_folder(path.parent)
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise self._error(f"cannot be written ({reason})", "pass a file in a folder you can write") from None

    def read(self) -> LogContents:
        """Every whole record; a missing file reads as empty."""
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            return LogContents(records=[], skipped=0)
        except IsADirectoryError:
            raise self._error("is a folder, not a file", "pass the path of a JSONL file") from None
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise self._error(f"cannot be read ({reason})", "pass a readable JSONL file") from None
        records: list[dict[str, Any]] = []
        skipped = 0
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a torn line (or garbage); UnicodeDecodeError is a ValueError
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
        return LogContents(records=records, skipped=skipped)

    def _error(self, problem: str, advice: str) -> ModelTailorError:
        return ModelTailorError(f"JSONL log '{self.path}' {problem}: {advice}")


def _ends_mid_line(path: Path) -> bool:
    """Whether the file exists, is not empty and its last byte is not a newline (a torn record)."""
    try:
        with open(path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _fsync_folder(folder: Path) -> None:
    """Make a new file's directory entry durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
