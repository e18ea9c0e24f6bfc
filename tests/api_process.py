"""`modeltailor serve` as a real uvicorn process on a free loopback port, for tests and the fuzz bench.

    with api_server(tmp_path, token="t") as api:
        requests.get(f"{api.url}/v1/health")

On exit the server stops and every job process it launched is killed with its whole session
(Ray's workers included): nothing outlives the block.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

MODELTAILOR = [sys.executable, "-m", "modeltailor.service.cli"]


@dataclass
class ApiProcess:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    jobs: Path
    log_file: Path
    tracking_uri: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@dataclass
class MlflowProcess:
    uri: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def wait_ready(self, timeout_s: float = 120) -> str:
        """The server's URI once it answers /health (it takes ~30 s to start on a small machine)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: "
                                   f"{self.log_file.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self.uri
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server at {self.uri} did not answer within {timeout_s} s")


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[MlflowProcess]:
    """A real `mlflow server` over a SQLite file in `folder`, artifacts proxied; not waited for
    (call wait_ready), so its slow start overlaps other set-up."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log_file = free_port(), folder / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", (folder / "mlartifacts").as_uri(), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield MlflowProcess(f"http://127.0.0.1:{port}", process, log_file)
    finally:
        stop(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def api_server(
    folder: Path,
    token: str = "test-token",
    *args: str,
    env: dict[str, str] | None = None,
    tracking_uri: str | None = None,
    timeout_s: float = 60,
) -> Iterator[ApiProcess]:
    """Start `modeltailor serve` (jobs and, unless `tracking_uri` names one, a SQLite registry under
    `folder`) and wait for /v1/health."""
    folder.mkdir(parents=True, exist_ok=True)
    port, jobs, log_file = free_port(), folder / "jobs", folder / "serve.log"
    tracking_uri = tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    command = [*MODELTAILOR, "serve", "--port", str(port), "--jobs", str(jobs), "--tracking-uri", tracking_uri, *args]
    environment = {**os.environ, "MODELTAILOR_API_TOKEN": token, **(env or {})}
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    api = ApiProcess(f"http://127.0.0.1:{port}", token, process, jobs, log_file, tracking_uri)
    try:
        _wait_healthy(api, timeout_s)
        yield api
    finally:
        stop(process)
        kill_jobs(jobs)


def _wait_healthy(api: ApiProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            raise RuntimeError(f"modeltailor serve exited with {api.process.returncode}: {api.log()[-2000:]}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{api.url}/v1/health", timeout=2).ok:
                return
        time.sleep(0.2)
    raise RuntimeError(f"modeltailor serve did not answer within {timeout_s} s: {api.log()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def kill_jobs(jobs: Path) -> None:
    """SIGKILL every process in the session of every job under `jobs` (its pid leads the session)."""
    if not jobs.is_dir():
        return
    for record in jobs.glob("*/job.json"):
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(record.read_text()).get("pid")
            if pid:
                for member in session_members(int(pid)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(member, signal.SIGKILL)


def session_members(sid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[-1].split()[3]) == sid:
                members.append(int(stat.parent.name))
    return members
