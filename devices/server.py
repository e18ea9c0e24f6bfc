"""The device server: an HTTP service on the target device that measures ONNX models.

``GET /health`` (no auth) describes the server; ``POST /measure`` (``Authorization: Bearer``,
raw ONNX bytes, query ``runs`` and ``warmup``) times the model with :class:`LocalOrtDevice` and
answers ``Measurement.to_dict()`` plus ``latency`` and ``memory`` dicts. ``POST
/measure-alternately`` (the same, plus query ``sizes``, the byte length of each model in the
concatenated body, and ``repeats``) times several models in interleaved rounds, as a final
comparison needs, and answers ``{"measurements": [...]}`` in the order of ``sizes``. Measurements run one at a
time in a worker process that is killed and replaced when it exceeds ``timeout_s``. Every error
is a JSON ``{"error": "..."}``: a 4xx for a bad request or a model that cannot be measured, a 500
naming a request id (its traceback in the server's log) for a bug (common/http_errors.py).

Run it with ``modeltailor device-server`` or ``python -m modeltailor.devices.server``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import platform
import select
import struct
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from typing import IO, Any

import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from modeltailor.common.http_errors import HttpError, add_error_handlers
from modeltailor.devices.base import TOKEN_ENV, token_from_environment
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.devices.measurement import Measurement
from modeltailor.errors import ConfigError, ModelTailorError, first_line

log = logging.getLogger(__name__)

MIB = 1024 * 1024
WORKER_START_TIMEOUT_S = 120.0
WORKER_MODULE = "modeltailor.devices.server"


def _payload(measurement: Measurement) -> dict[str, Any]:
    """One measurement as the server answers it: the flat numbers plus ``latency`` and ``memory``."""
    return {**measurement.to_dict(), "latency": measurement.latency.to_dict(), "memory": measurement.memory.to_dict()}


def _measure_payload(threads: int, onnx_bytes: bytes, runs: int, warmup: int) -> dict[str, Any]:
    device = LocalOrtDevice(name="server", intra_op_threads=threads, runs=runs, warmup=warmup)
    start = time.perf_counter()
    measurement = device.measure(onnx_bytes)
    return {"device": measurement.device, **_payload(measurement), "measure_seconds": time.perf_counter() - start}


def _alternate_payload(
    threads: int, models: list[bytes], runs: int, warmup: int, repeats: int
) -> dict[str, Any]:
    device = LocalOrtDevice(name="server", intra_op_threads=threads, runs=runs, warmup=warmup)
    start = time.perf_counter()
    measured = device.measure_alternately(dict(enumerate(models)), repeats=repeats)
    seconds = time.perf_counter() - start
    return {
        "measurements": [_payload(m) for _, m in sorted(measured.items())],
        "timed": "alternating",
        "repeats": repeats,
        "measure_seconds": seconds,
    }


def _split(body: bytes, sizes: list[int]) -> list[bytes]:
    parts, at = [], 0
    for size in sizes:
        parts.append(body[at : at + size])
        at += size
    return parts


def _write_frame(stream: IO[bytes], header: dict[str, Any], body: bytes = b"") -> None:
    """One frame: 4-byte header length, JSON header, 8-byte body length, body."""
    head = json.dumps(header).encode()
    for part in (struct.pack(">I", len(head)) + head + struct.pack(">Q", len(body)), body):
        view = memoryview(part)
        while view:  # a raw pipe may take fewer bytes than offered
            view = view[stream.write(view) or 0 :]


def _read_exact(stream: IO[bytes], size: int, deadline: float | None = None) -> bytes:
    """``size`` bytes; EOFError if the other side closed, TimeoutError past ``deadline``."""
    chunks: list[bytes] = []
    while size > 0:
        if deadline is not None:
            ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes], deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    (head_size,) = struct.unpack(">I", _read_exact(stream, 4, deadline))
    header = json.loads(_read_exact(stream, head_size, deadline))
    (body_size,) = struct.unpack(">Q", _read_exact(stream, 8, deadline))
    return header, _read_exact(stream, body_size, deadline)


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A worker's stdin or stdout: always a pipe, since the worker is started with both piped."""
    assert stream is not None, "the measuring process was started without pipes"
    return stream


def _worker_answer(threads: int, header: dict[str, Any], body: bytes) -> dict[str, Any]:
    try:
        runs, warmup = int(header["runs"]), int(header["warmup"])
        if "sizes" in header:
            models = _split(body, [int(n) for n in header["sizes"]])
            return {"ok": _alternate_payload(threads, models, runs, warmup, int(header["repeats"]))}
        return {"ok": _measure_payload(threads, body, runs, warmup)}
    except ModelTailorError as exc:
        return {"error": first_line(exc)}
    except Exception as exc:  # anything ORT or numpy throws: still one line
        return {"error": f"measurement failed: {type(exc).__name__}: {first_line(exc)}"}


def worker_main(threads: int) -> None:
    """The measuring process: frames in on stdin, answers out on the original stdout."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the protocol
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    _write_frame(out, {"ready": os.getpid()})
    while True:
        try:
            header, body = _read_frame(stdin)
        except (EOFError, OSError):
            return
        _write_frame(out, _worker_answer(threads, header, body))


class MeasureWorker:
    """One measuring process, used one request at a time; replaced when it overruns or dies.

    The worker is ``python -m modeltailor.devices.server --worker``, talking framed
    JSON + bytes over its stdin/stdout, so its start never depends on the parent's ``__main__``.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def _spawn(self) -> None:
        command = [sys.executable, "-m", WORKER_MODULE, "--worker", "--threads", str(self.threads)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self._ready = False

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
        self._process, self._ready = None, False

    def _ensure_ready(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._kill()
            self._spawn()
        assert self._process is not None
        if not self._ready:
            try:
                _read_frame(_pipe(self._process.stdout), time.monotonic() + WORKER_START_TIMEOUT_S)
            except (EOFError, TimeoutError, OSError, ValueError):
                self._kill()
                raise HttpError(
                    422, "the measuring process did not start: check the server's log"
                ) from None
            self._ready = True
        return self._process

    def start(self) -> None:
        with self._lock:
            self._ensure_ready()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def measure(
        self, onnx_bytes: bytes, runs: int, warmup: int, timeout_s: float, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The measurement payload; HttpError 504 on timeout, 422 on a model ORT rejects.
        ``extra`` (``sizes`` and ``repeats``): several models in ``onnx_bytes``, timed alternately."""
        with self._lock:
            process = self._ensure_ready()
            try:
                header = {"runs": runs, "warmup": warmup, **(extra or {})}
                _write_frame(_pipe(process.stdin), header, onnx_bytes)
                answer, _ = _read_frame(_pipe(process.stdout), time.monotonic() + timeout_s)
            except TimeoutError:
                self._kill()
                self._spawn()  # the replacement starts while the answer goes out
                raise HttpError(
                    504,
                    f"the measurement took longer than the server's timeout of {timeout_s:g} s: "
                    "lower runs or start the server with a larger --timeout-s",
                ) from None
            except (EOFError, OSError, ValueError):
                code = process.poll()
                self._kill()
                raise HttpError(
                    422, f"the measuring process died (exit code {code}) on this model"
                ) from None
            if "error" in answer:
                raise HttpError(422, str(answer["error"]))
            return answer["ok"]


def machine_info() -> dict[str, Any]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _check_token(request: Request, token: str) -> None:
    given = _bearer(request)
    if given is None:
        raise HttpError(401, "missing token: send the header 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HttpError(401, "wrong token: use the token the server was started with")


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(422, f"query parameter {key}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise HttpError(422, f"query parameter {key}={value} is out of range [{low}, {high}]")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(400, f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise HttpError(413, _too_big(int(declared), limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, _too_big(size, limit, at_least=True))
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise HttpError(422, "empty body: send the ONNX model's bytes (application/octet-stream)")
    return body


def _too_big(size: int, limit: int, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return (
        f"the model is {more}{size:,} bytes, over the server's limit of {limit:,} bytes: "
        "start the server with a larger --max-model-mb"
    )


def create_app(
    token: str,
    threads: int = 1,
    max_model_bytes: int = 64 * MIB,
    timeout_s: float = 60.0,
    runs: int = 200,
    warmup: int = 20,
    max_runs: int = 10_000,
    max_warmup: int = 1_000,
) -> FastAPI:
    """The server's FastAPI app; the worker process starts with the app (or on first use)."""
    if not token:
        raise ConfigError(f"the device server needs a token: pass --token or set {TOKEN_ENV}")
    if threads < 1 or max_model_bytes < 1 or timeout_s <= 0:
        raise ConfigError("the device server needs threads >= 1, max model size > 0, timeout > 0")
    worker = MeasureWorker(threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(worker.start)
        yield
        await run_in_threadpool(worker.close)

    app = FastAPI(title="modeltailor device server", lifespan=lifespan)
    app.state.worker = worker
    app.state.measured = 0
    add_error_handlers(app, log)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "onnxruntime": ort.__version__,
            "threads": threads,
            "machine": machine_info(),
            "max_model_bytes": max_model_bytes,
            "timeout_s": timeout_s,
            "max_runs": max_runs,
            "busy": worker.busy,
            "measured": app.state.measured,
        }

    @app.post("/measure")
    async def measure(request: Request) -> JSONResponse:
        _check_token(request, token)
        n_runs = _int_param(request, "runs", runs, 1, max_runs)
        n_warmup = _int_param(request, "warmup", warmup, 0, max_warmup)
        body = await _read_body(request, max_model_bytes)
        payload = await run_in_threadpool(worker.measure, body, n_runs, n_warmup, timeout_s)
        app.state.measured += 1
        log.info(
            "measured %d bytes: %.4f ms median over %d runs",
            len(body), payload["latency_ms"], payload["latency"]["runs"],
        )
        return JSONResponse(payload)

    @app.post("/measure-alternately")
    async def measure_alternately(request: Request) -> JSONResponse:
        _check_token(request, token)
        n_runs = _int_param(request, "runs", runs, 1, max_runs)
        n_warmup = _int_param(request, "warmup", warmup, 0, max_warmup)
        repeats = _int_param(request, "repeats", 1, 1, 100)
        sizes = _sizes_param(request, max_model_bytes)
        body = await _read_body(request, max_model_bytes * len(sizes))
        if sum(sizes) != len(body):
            raise HttpError(422, f"query parameter sizes adds up to {sum(sizes):,} bytes but the body has "
                                 f"{len(body):,}: send the models' bytes one after another, in the order of sizes")
        # the timeout covers one model's measurement: this request times len(sizes) x repeats of them
        budget = timeout_s * len(sizes) * repeats
        extra = {"sizes": sizes, "repeats": repeats}
        payload = await run_in_threadpool(worker.measure, body, n_runs, n_warmup, budget, extra)
        app.state.measured += len(sizes)
        log.info("measured %d models alternately, %d repeats", len(sizes), repeats)
        return JSONResponse(payload)

    return app


def _sizes_param(request: Request, max_model_bytes: int) -> list[int]:
    """``sizes``: the byte length of each model in the body, comma-separated (2 to 16 models)."""
    raw = request.query_params.get("sizes")
    if not raw:
        raise HttpError(422, "missing query parameter sizes: the byte length of each model, comma-separated")
    try:
        sizes = [int(part) for part in raw.split(",")]
    except ValueError:
        raise HttpError(422, f"query parameter sizes={raw!r} is not a comma-separated list of byte counts") from None
    if not 1 <= len(sizes) <= 16 or min(sizes) < 1:
        raise HttpError(422, f"query parameter sizes={raw!r}: 1 to 16 models of at least one byte each")
    if max(sizes) > max_model_bytes:
        raise HttpError(413, _too_big(max(sizes), max_model_bytes))
    return sizes


def _ready_line(host: str, port: int, threads: int) -> str:
    return f"device server on http://{host}:{port}, {threads} thread{'' if threads == 1 else 's'}"


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    threads: int = 1,
    max_model_mb: float = 64,
    timeout_s: float = 60.0,
) -> None:
    """Run the server with uvicorn until interrupted; prints one line when it is ready."""
    import uvicorn

    token = token or token_from_environment()
    if not token:
        raise ConfigError(f"the device server needs a token: pass --token or set {TOKEN_ENV}")
    app = create_app(
        token, threads=threads, max_model_bytes=int(max_model_mb * MIB), timeout_s=timeout_s
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                bound = self.servers[0].sockets[0].getsockname()[1]
                print(_ready_line(host, bound, threads), flush=True)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    _Server(config).run()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="modeltailor device server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-model-mb", type=float, default=64.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.worker:
        worker_main(max(1, args.threads))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(args.host, args.port, args.token, args.threads, args.max_model_mb, args.timeout_s)
    except ModelTailorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
