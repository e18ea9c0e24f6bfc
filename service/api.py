"""The HTTP API (`modeltailor serve`): launch campaigns and searches, follow and cancel them, and ask
the registry what to ship to a device. Versioned under ``/v1``; OpenAPI at ``/docs`` and
``/openapi.json``.

    GET  /v1/health                                           no token; torch_loaded says the process stays light
    GET  /v1/devices                                          devices in the registry, their champions
    GET  /v1/devices/{name}/best?classes=0,3,7&max_latency_ms=&max_memory_bytes=&min_accuracy=
    GET  /v1/devices/{name}/versions/{version}/files/{model.onnx|policy.json|summary.json}
    POST /v1/searches    (token)  a deployment mapping    -> 202 {id, status_url}, runs in the background
    POST /v1/campaigns   (token)  a campaign mapping      -> 202 {id, status_url}
    GET  /v1/jobs, GET /v1/jobs/{id}                          state and per-deployment progress
    POST /v1/jobs/{id}/cancel, POST /v1/jobs/{id}/resume (token)

A launch runs `modeltailor campaign` in a process of its own (experiments/fleet/jobs.py): the same
machinery as the CLI, and the API process never imports torch or Ray.

Auth: every mutating request (any method but GET, HEAD, OPTIONS) needs ``Authorization: Bearer
<token>``, compared in constant time before its body is read; reads are open unless the server is
started with ``--token-for-reads``. The token is never logged or passed to jobs.

Errors: every error is a JSON ``{"error": "<one line naming the input and what to do>"}``, plus
``field`` (the bad key or parameter) or ``closest`` (a query nothing satisfies); bad input is a 4xx
(a tracking store that does not answer is a 503). An unexpected error is a 500 naming a request id
(``request_id`` and the ``X-Request-ID`` header) under which the server logs the traceback
(common/http_errors.py).
Bodies are JSON, at most ``max_body_bytes`` (Content-Length checked before reading, chunked
bodies counted while read).
"""

from __future__ import annotations

import hmac
import logging
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from modeltailor import __version__
from modeltailor.common.http_errors import HttpError, add_error_handlers, error_response
from modeltailor.common.validation import error_text, first_error, key_path
from modeltailor.errors import (
    ConfigError,
    ModelTailorError,
    NoMatchError,
    NotFoundError,
    first_line,
)
from modeltailor.experiments.fleet.jobs import (
    BodyError,
    JobConflict,
    JobStatus,
    JobStore,
    TooManyJobs,
)
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.campaign import CampaignSpec
from modeltailor.experiments.spec.deployment import DeploymentConfig
from modeltailor.experiments.tracking import registry

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN_PATHS = ("/v1/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
MEDIA = {files.MODEL_ONNX: "application/octet-stream", files.POLICY: "application/json", files.SUMMARY: "application/json"}
PATTERN_HINTS = {
    "job_id": "not a job id: a job id is the 12 hex digits a launch returned",
    "name": "not a device name: use letters, digits, '.', '_' or '-' (e.g. cpu-1t)",
}
QUERY_FILTERS = ("classes", "max_latency_ms", "max_memory_bytes", "min_accuracy")

DeviceName = Annotated[
    str, PathParam(pattern=r"^[A-Za-z0-9][\w.\-]{0,99}$", description="a device profile name, e.g. cpu-1t")
]
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{12}$", description="the id a launch returned")]


class ErrorBody(BaseModel):
    error: str = Field(description="one line: the bad input and what to do")
    field: str | None = Field(None, description="the key or parameter at fault")
    closest: list[dict[str, Any]] | None = Field(None, description="best query: the nearest versions")
    request_id: str | None = Field(None, description="an unexpected error (500): the id its traceback is logged under")


class Accepted(BaseModel):
    id: str
    kind: str
    state: str
    status_url: str = Field(description="GET it for the state and per-deployment progress")


class Health(BaseModel):
    status: str
    version: str
    torch_loaded: bool = Field(description="whether this process imported torch (it should not)")
    jobs_running: int
    max_jobs: int | None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "malformed request"), (404, "not found"), (422, "invalid input"))
}
MUTATION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 401: {"model": ErrorBody, "description": "missing or wrong token"},
    413: {"model": ErrorBody, "description": "body too large"}, 415: {"model": ErrorBody, "description": "not JSON"},
}


# -- the app ------------------------------------------------------------------------------------


def create_app(
    jobs_root: Path,
    tracking_uri: str,
    address: str | None = None,
    token: str = "",
    max_body_bytes: int = 1_000_000,
    max_jobs: int | None = 4,
    token_for_reads: bool = False,
) -> FastAPI:
    """The API's FastAPI app; jobs live in `jobs_root`, the registry in `tracking_uri`."""
    if not token:
        raise ConfigError("the API needs a token: set MODELTAILOR_API_TOKEN or pass --token-file")
    if max_body_bytes < 1:
        raise ConfigError(f"max body size must be at least 1 byte, got {max_body_bytes}")
    store = JobStore(jobs_root, tracking_uri, address, max_jobs)
    app = FastAPI(
        title="modeltailor API", version=__version__, docs_url="/docs", openapi_url="/openapi.json",
        description="Launch compression searches and campaigns; ask which model to ship to a device.",
    )
    app.state.jobs, app.state.token = store, token
    _add_error_handlers(app)
    app.add_middleware(_Gate, token=token, max_body_bytes=max_body_bytes, token_for_reads=token_for_reads)
    app.include_router(_registry_routes(tracking_uri))
    app.include_router(_job_routes(store))
    return app


BEARER = HTTPBearer(auto_error=False, description="the token the server was started with")


def authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> None:
    """The gate checked the token already; this declares the scheme in the OpenAPI spec and checks again."""
    if credentials is None or not _same(credentials.credentials, request.app.state.token):
        raise HttpError(401, "missing or wrong token: send 'Authorization: Bearer <token>'")


def _registry_routes(tracking_uri: str) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=ERRORS)

    @router.get("/devices", response_model=list[registry.DeviceEntry], tags=["registry"])
    def devices() -> list[registry.DeviceEntry]:
        """Every device with registered versions, and its deployments' champions."""
        return registry.registered_devices(tracking_uri)

    @router.get("/devices/{name}/best", response_model=registry.BestAnswer, tags=["registry"])
    def best(
        name: DeviceName,
        classes: Annotated[str | None, Query(max_length=4000, description="class ids, e.g. 0,3,7 (default: all)")] = None,
        max_latency_ms: Annotated[float | None, Query(gt=0, description="latency limit (ms)")] = None,
        max_memory_bytes: Annotated[float | None, Query(gt=0, description="memory limit (bytes)")] = None,
        min_accuracy: Annotated[float | None, Query(ge=0, le=1, description="accuracy floor (fraction)")] = None,
    ) -> registry.BestAnswer:
        """The version to ship to the device for the classes within the limits (as `modeltailor best`)."""
        return registry.query_best(
            tracking_uri, name, classes=parse_classes(classes), max_latency_ms=max_latency_ms,
            max_memory_bytes=max_memory_bytes, min_accuracy=min_accuracy,
        )

    @router.get(
        "/devices/{name}/versions/{version}/files/{filename}", tags=["registry"], response_class=FileResponse,
        responses={200: {"content": {"application/octet-stream": {}, "application/json": {}}}},
    )
    def download(
        name: DeviceName,
        version: Annotated[int, PathParam(ge=1, le=2**31 - 1, description="the registered version")],
        filename: Annotated[files.RegisteredFile, PathParam()],
    ) -> FileResponse:
        """A registered version's model.onnx, policy.json or summary.json."""
        path = registry.download_file(tracking_uri, name, version, filename)
        return FileResponse(path, media_type=MEDIA[filename], filename=f"{name}-v{version}-{filename}")

    return router


def _job_routes(store: JobStore) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["jobs"])
    mutating: dict[str, Any] = {"dependencies": [Depends(authorized)], "responses": MUTATION_ERRORS}

    @router.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        return Health(status="ok", version=__version__, torch_loaded="torch" in sys.modules,
                      jobs_running=len(store.active()), max_jobs=store.max_jobs)

    @router.post("/searches", status_code=202, response_model=Accepted, **mutating)
    def launch_search(body: DeploymentConfig) -> Accepted:
        """Search one deployment (a deployment mapping, as a deployment YAML holds) in the background."""
        return _accepted(store.launch("search", body.model_dump(mode="json", exclude_unset=True)))

    @router.post("/campaigns", status_code=202, response_model=Accepted, **mutating)
    def launch_campaign(body: CampaignSpec) -> Accepted:
        """Run a campaign (an inline `base` and its deployments) in the background."""
        return _accepted(store.launch("campaign", body.model_dump(mode="json", exclude_unset=True)))

    @router.get("/jobs", response_model=list[JobStatus], responses=ERRORS)
    def jobs() -> list[JobStatus]:
        """Every job, newest first."""
        return store.jobs()

    @router.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def job(job_id: JobId) -> JobStatus:
        """A job's state and every deployment's progress (the log's last lines if it failed)."""
        return store.status(job_id)

    @router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobStatus, **mutating)
    def cancel(job_id: JobId) -> JobStatus:
        """Stop a queued or running job (finished deployments are kept)."""
        return store.cancel(job_id)

    @router.post("/jobs/{job_id}/resume", status_code=202, response_model=Accepted, **mutating)
    def resume(job_id: JobId) -> Accepted:
        """Run an interrupted, cancelled or failed job again, keeping its finished deployments."""
        return _accepted(store.resume(job_id))

    return router


def _accepted(status: JobStatus) -> Accepted:
    return Accepted(id=status.id, kind=status.kind, state=status.state, status_url=f"/v1/jobs/{status.id}")


def parse_classes(text: str | None) -> list[int] | None:
    """'0,3,7' -> [0, 3, 7]; a BodyError naming `classes` otherwise."""
    if text is None:
        return None
    tokens = [t.strip() for t in text.split(",")]
    if not all(re.fullmatch(r"\d{1,6}", t) for t in tokens):
        raise BodyError("classes", f"'{text[:40]}' is not a list of class ids: send e.g. classes=0,3,7")
    return [int(t) for t in tokens]


# -- errors ---------------------------------------------------------------------------------------


STATUS_OF: tuple[tuple[type[ModelTailorError], int], ...] = (
    (NoMatchError, 404), (NotFoundError, 404), (JobConflict, 409), (TooManyJobs, 429),
)


def _project_error(exc: ModelTailorError) -> JSONResponse:
    if isinstance(exc.__cause__, OSError):  # the tracking store did not answer: not the request's fault
        response = error_response(503, first_line(exc))
        response.headers["Retry-After"] = "10"
        return response
    status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 422)
    field = exc.field if isinstance(exc, BodyError) else _named_filter(str(exc))
    closest = exc.closest if isinstance(exc, NoMatchError) else None
    return error_response(status, first_line(exc), field=field, closest=closest)


def _named_filter(message: str) -> str | None:
    word = message.split(" ", 1)[0]
    return word if word in QUERY_FILTERS else None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    error = first_error(exc.errors())
    loc = tuple(error.get("loc", ()))
    where, field = (str(loc[0]), key_path(loc[1:])) if loc else ("request", "")
    if error.get("type") == "json_invalid":
        return error_response(400, "body: not valid JSON: send a JSON object (application/json)", field="body")
    if where == "body" and not field:
        message = "send a JSON object (application/json)" if error.get("type") == "missing" else error.get("msg", "")
        return error_response(422, f"body: {message}", field="body")
    field = field or where
    if error.get("type") == "extra_forbidden":
        return error_response(422, f"{field}: unknown key: remove it or check the spelling (see /docs)", field=field)
    if error.get("type") == "missing":
        return error_response(422, f"{field}: required", field=field)
    if error.get("type") == "string_pattern_mismatch" and field in PATTERN_HINTS:
        return error_response(422, f"{field}: {PATTERN_HINTS[field]}", field=field)
    return error_response(422, f"{field}: {error_text(error)}", field=field)


def _add_error_handlers(app: FastAPI) -> None:
    add_error_handlers(app, log, validation=_validation_response)

    @app.exception_handler(ModelTailorError)
    async def _project(request: Request, exc: ModelTailorError) -> JSONResponse:
        return _project_error(exc)


# -- the gate: token and body size before any route sees the request ---------------------------


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


class _Gate:
    """ASGI middleware: the token for mutations (and reads, if asked), then the body's size and
    type, read here once (at most max_body_bytes) and replayed to the app."""

    def __init__(self, app: Any, token: str, max_body_bytes: int, token_for_reads: bool) -> None:
        self.app, self.token, self.limit, self.token_for_reads = app, token, max_body_bytes, token_for_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._auth(scope, headers)
        if refusal is None and scope["method"] not in SAFE_METHODS:
            body, refusal = await self._body(headers, receive)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _auth(self, scope: Scope, headers: dict[str, str]) -> JSONResponse | None:
        needed = scope["method"] not in SAFE_METHODS or (self.token_for_reads and scope["path"] not in OPEN_PATHS)
        if not needed:
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return error_response(401, "missing token: send the header 'Authorization: Bearer <token>'")
        if not _same(given.strip(), self.token):
            return error_response(401, "wrong token: use the token the server was started with")
        return None

    async def _body(self, headers: dict[str, str], receive: Receive) -> tuple[bytes, JSONResponse | None]:
        declared = headers.get("content-length")
        if declared is not None and not declared.strip().isdigit():
            return b"", error_response(400, f"Content-Length {declared[:20]!r} is not a byte count")
        if declared is not None and int(declared) > self.limit:
            return b"", self._too_big(int(declared))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", error_response(400, "the client went away before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return b"", self._too_big(size, at_least=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if body and media != "application/json" and not media.endswith("+json"):
            return b"", error_response(415, f"content type '{media[:40]}': send the body as application/json")
        return body, None

    def _too_big(self, size: int, at_least: bool = False) -> JSONResponse:
        more = "at least " if at_least else ""
        return error_response(
            413, f"the body is {more}{size:,} bytes, over the server's limit of {self.limit:,}: "
            "send a smaller one or start the server with a larger --max-body-bytes",
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
