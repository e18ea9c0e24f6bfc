"""The error policy of both HTTP apps (the API, `modeltailor serve`, and the device server).

Every error is a JSON body ``{"error": "<one line>", ...}``. Bad input is a 4xx. An unexpected
error is a 500 that names a request id (in the body's ``request_id`` and the ``X-Request-ID``
header): its traceback goes to the server's log under that id, and nothing of it (not even the
exception's text) reaches the client.

This module imports FastAPI; only the two apps import it, so nothing else in common/ pulls it in.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modeltailor.common.validation import error_text, first_error, key_path

REQUEST_ID_HEADER = "X-Request-ID"
_GIVEN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class HttpError(Exception):
    """An error a route answers as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    """``{"error": message, **extra}`` (None values left out); a 401 asks for a Bearer token."""
    body = {"error": message, **{k: v for k, v in extra.items() if v is not None}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def request_id(request: Request) -> str:
    """The client's ``X-Request-ID`` when it is a plain token, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _GIVEN_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def internal_error(request: Request, exc: BaseException, log: logging.Logger) -> JSONResponse:
    """The 500 for an unexpected error ``exc``, logged to ``log`` with its traceback."""
    rid = request_id(request)
    log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, rid, exc_info=exc)
    response = error_response(
        500, f"internal error (request {rid}): the server's log has the traceback", request_id=rid
    )
    response.headers[REQUEST_ID_HEADER] = rid
    return response


def routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (no such route, a method not allowed) as JSON, and never a 5xx."""
    status = exc.status_code if 400 <= exc.status_code < 500 else 422
    if status == 404:
        message = f"no route {request.method} {request.url.path}: /docs lists the routes"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}: /docs lists the methods"
    else:
        message = str(exc.detail)
    response = error_response(status, message)
    response.headers.update(exc.headers or {})
    return response


def request_validation_error(exc: RequestValidationError) -> JSONResponse:
    """A 422 naming the parameter or key FastAPI refused (``query.runs: ...``)."""
    first = first_error(exc.errors())
    return error_response(422, f"{key_path(first.get('loc', ())) or 'request'}: {error_text(first)}")


def add_error_handlers(
    app: FastAPI,
    log: logging.Logger,
    validation: Callable[[RequestValidationError], JSONResponse] = request_validation_error,
) -> None:
    """The policy: HttpError and Starlette's errors as JSON 4xx, FastAPI's refusals through
    ``validation``, anything else a 500 naming a request id (its traceback logged to ``log``)."""

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return routing_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request, exc, log)
