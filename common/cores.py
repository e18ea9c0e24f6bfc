"""The host's CPU cores, shared by every modeltailor process on it: a timing holds them alone.

Latency is measured on the same cores other searches train on. Two measurements at once, or one
measurement while another process distils, corrupt each other's numbers. So every process on a
host follows one protocol, through two lock files in the cache folder:

* ``timing()`` (a latency measurement) is exclusive: it waits until no work step is running and
  no other measurement, and while it holds the cores nobody starts a work step;
* ``working()`` (one training or evaluation step: a distillation mini-batch, an accuracy batch)
  is shared: steps of different processes run together, but not while a model is timed.

A waiting measurement closes a turnstile (the ``gate`` file) so new work steps queue behind it:
it waits for at most the steps already running (milliseconds), never starves. Measurements of
different device profiles on one host (cpu-1t, cpu-2t) share the lock: they use the same cores.

The locks are ``flock`` locks (released by the kernel when a process dies, even by ``kill -9``),
keyed by host through ``MODELTAILOR_CACHE`` (default ``~/.cache/modeltailor``).
``MODELTAILOR_CORES_LOCK=off`` turns the protocol off (for a dedicated benchmarking machine).
Nested use in one thread is free (a timing inside a timing, a step inside a step); a timing
requested inside a work step of the same thread runs without the lock rather than deadlock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modeltailor.common.storage import cache_dir
from modeltailor.errors import ConfigError

LOCK_ENV = "MODELTAILOR_CORES_LOCK"
"""A folder for the lock files, or ``off``; default: ``<cache>/locks``."""

_held = threading.local()


def lock_dir() -> Path | None:
    """Where this host's core lock files live; None when the protocol is turned off."""
    setting = os.environ.get(LOCK_ENV, "").strip()
    if setting.lower() in {"off", "0", "false", "no"}:
        return None
    if setting:
        return Path(setting)
    return cache_dir() / "locks"


@contextmanager
def _lock_files(directory: Path) -> Iterator[tuple[int, int]]:
    """The open ``gate`` and ``work`` lock files (both closed again, whatever happens)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        gate = os.open(directory / "cores.gate", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _unusable(directory, exc) from None
    try:
        try:
            work = os.open(directory / "cores.work", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise _unusable(directory, exc) from None
        try:
            yield gate, work
        finally:
            os.close(work)
    finally:
        os.close(gate)


def _unusable(directory: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"core lock folder '{directory}' cannot be used ({exc.strerror or type(exc).__name__}): "
        f"set {LOCK_ENV} to a writable folder, or to 'off' on a machine that only measures"
    )


@contextmanager
def _flock(fd: int, mode: int) -> Iterator[None]:
    fcntl.flock(fd, mode)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def _claim() -> Iterator[Path | None]:
    """The lock folder when this thread must take the lock itself; None when the protocol is off
    or the thread already holds the cores (a nested timing or step)."""
    directory = lock_dir()
    if directory is None or getattr(_held, "cores", False):
        yield None
        return
    _held.cores = True
    try:
        yield directory
    finally:
        _held.cores = False


@contextmanager
def timing() -> Iterator[None]:
    """Hold the host's cores alone while a model is timed (see the module docstring)."""
    with _claim() as directory:
        if directory is None:
            yield
            return
        with _lock_files(directory) as (gate, work), _flock(gate, fcntl.LOCK_EX), _flock(work, fcntl.LOCK_EX):
            yield


@contextmanager
def working() -> Iterator[None]:
    """One step of CPU work that may share the cores with other work, but not with a timing."""
    with _claim() as directory:
        if directory is None:
            yield
            return
        with _lock_files(directory) as (gate, work):
            with _flock(gate, fcntl.LOCK_EX):  # the turnstile: wait behind a waiting measurement
                pass
            with _flock(work, fcntl.LOCK_SH):
                yield
