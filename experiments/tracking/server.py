"""A real `mlflow server` for the length of a campaign, when its store is a SQLite file.

Concurrent trials writing one SQLite file hit ``database is locked``; a campaign whose store is
SQLite therefore starts ``mlflow server`` on that file (one process, loopback or the node address
the cluster sees) and every trial logs over HTTP. The server serves artifacts too, and the
experiment keeps the artifact folder beside the database that single searches use, so a campaign's
runs and a single search's runs sit side by side. The server dies with the campaign, also when
the campaign process is killed (Linux: parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modeltailor.errors import ModelTailorError
from modeltailor.experiments.tracking.tracker import ARTIFACTS_DIR, sqlite_path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 90.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def serving(tracking_uri: str, host: str = "127.0.0.1", log_file: Path | None = None) -> Iterator[str]:
    """The URI trials should log to: `tracking_uri` itself unless it is a SQLite file, in which
    case an `mlflow server` on it runs for the block and its http URI is yielded."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield tracking_uri
        return
    port = free_port(host)
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
        "--artifacts-destination", (db.parent / ARTIFACTS_DIR).as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",
        "--allowed-hosts", f"{host}:{port},{host},localhost:{port},127.0.0.1:{port}",  # our address, even a public one
    ]
    output: Any = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    uri = f"http://{host}:{port}"
    try:
        _wait_ready(uri, process, log_file)
        log.info("mlflow server on %s serves %s", uri, tracking_uri)
        yield uri
    finally:
        _stop(process)
        if output is not subprocess.DEVNULL:
            output.close()


def _wait_ready(uri: str, process: subprocess.Popen[bytes], log_file: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            where = f" (its log: {log_file})" if log_file else ""
            raise ModelTailorError(
                f"mlflow server for the campaign exited with status {process.returncode}{where}: "
                "check the tracking store, or point tracking.uri at a running server"
            )
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise ModelTailorError(f"mlflow server for the campaign did not answer on {uri} within {START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
