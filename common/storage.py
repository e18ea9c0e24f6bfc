"""Files that several processes fill at once: atomic writes and inter-process locks.

``atomic_write`` writes to a unique temporary file in the target's folder and renames it over the
target, so a reader never sees half a file and two writers never interleave. ``locked(path)``
holds an exclusive lock on ``<path>.lock`` (``filelock``, an OS-level lock released when the
process dies), for read-merge-write cycles and for work that only one process should do (training
a teacher that another process is about to cache).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a unique temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def locked(path: Path, timeout_s: float = -1) -> Iterator[None]:
    """Hold the inter-process lock of ``path`` (the file ``<path>.lock``) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout_s):
        yield


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file's contents; None when it is missing, unreadable, partial or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cache_dir() -> Path:
    """modeltailor's cache: MODELTAILOR_CACHE, else ~/.cache/modeltailor (teachers, locks, registry downloads)."""
    return Path(os.environ.get("MODELTAILOR_CACHE") or Path.home() / ".cache" / "modeltailor")
