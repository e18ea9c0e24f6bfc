"""RemoteDevice: measures ONNX models on a ``modeltailor device-server`` over HTTP.

``measure`` POSTs the model bytes to ``<url>/measure?runs=&warmup=`` with the bearer token and
rebuilds the :class:`Measurement` the server returns; ``measure_alternately`` POSTs several models
to ``<url>/measure-alternately``, which times them in interleaved rounds (a server from before
that endpoint answers 404: the models are then measured one after the other, with ``repeats``
times the runs, and their ``timed`` says ``sequential``). Every failure is a one-line DeviceError
naming the device and saying what to do.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import requests

from modeltailor.devices.base import DeviceDefaults, K, token_from_environment
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats
from modeltailor.errors import DeviceError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


def token_from_env(name: str, token_env: str) -> str:
    """The device server token from environment variable ``token_env``; DeviceError if it is unset."""
    token = token_from_environment(token_env)
    if not token:
        raise DeviceError(
            f"device '{name}' needs the device server's token: set the environment variable "
            f"{token_env} to the token the server was started with"
        )
    return token


def _reason(exc: BaseException) -> str:
    """A short reason ('[Errno 111] Connection refused') out of a requests exception."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
    if errno:
        return errno.group(0).strip()
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "host name not found"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _connect_failed(exc: requests.exceptions.ConnectionError) -> bool:
    """True when no connection was made (refused, DNS, connect timeout), not a dropped one."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    text = str(exc)
    return "NewConnectionError" in text or "Failed to establish" in text or "NameResolution" in text


def _error_text(response: requests.Response) -> str:
    """The server's ``{"error": ...}`` message, or the first line of a non-server answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = body["error"]
    else:
        text = (response.text or "").strip() or response.reason or ""
    first = text.splitlines()[0] if text.strip() else f"HTTP {response.status_code}"
    return first[:300]


def measurement_from_payload(payload: dict[str, Any], device: str, timed: str = "alone") -> Measurement:
    """Rebuild a Measurement from the server's JSON answer (``latency`` and ``memory`` dicts)."""
    return Measurement(
        latency=LatencyStats.from_dict(payload["latency"]),
        memory=MemoryStats(**{k: int(v) for k, v in payload["memory"].items()}),
        device=device,
        timed=timed,
    )


class RemoteDevice(DeviceDefaults):
    """A Device whose measurements run on a device server; see the module docstring."""

    def __init__(
        self,
        name: str,
        url: str,
        token: str | None,
        timeout_s: float = 120.0,
        runs: int = 200,
        warmup: int = 20,
    ) -> None:
        if runs < 1 or warmup < 0 or timeout_s <= 0:
            raise DeviceError(f"device '{name}': runs >= 1, warmup >= 0 and timeout_s > 0 are required")
        self.name = name
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = float(timeout_s)
        self.runs = int(runs)
        self.warmup = int(warmup)
        self._session: requests.Session | None = None

    def __repr__(self) -> str:
        return f"RemoteDevice(name={self.name!r}, url={self.url!r}, runs={self.runs}, warmup={self.warmup})"

    @property
    def kind(self) -> str:
        return "remote"

    def with_timing(
        self, *, runs: int | None = None, warmup: int | None = None, rounds: int | None = None
    ) -> RemoteDevice:
        """A copy asking the server for other runs / warm-up (the server picks its rounds)."""
        return RemoteDevice(
            self.name, self.url, self.token, self.timeout_s,
            runs if runs is not None else self.runs, warmup if warmup is not None else self.warmup,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def _where(self) -> str:
        return f"device server '{self.name}' at {self.url}"

    def _request(self, method: str, path: str, scale: int = 1, **kwargs: Any) -> requests.Response:
        """``scale``: how many single measurements the request stands for (its read timeout)."""
        timeout = (min(CONNECT_TIMEOUT_S, self.timeout_s), self.timeout_s * scale)
        try:
            return self.session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.exceptions.ReadTimeout:
            raise DeviceError(
                f"{self._where()} did not answer within {self.timeout_s:g} s: raise timeout_s in "
                "the device profile, lower runs, or check the server"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            if _connect_failed(exc):
                raise DeviceError(
                    f"{self._where()} is unreachable ({_reason(exc)}): start `modeltailor "
                    "device-server` on the device or fix its url in the device profiles"
                ) from None
            raise DeviceError(
                f"{self._where()} dropped the connection ({_reason(exc)}): check the server's log"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise DeviceError(
                f"{self._where()}: request failed ({_reason(exc)}): fix its url in the device profiles"
            ) from None

    def _check(self, response: requests.Response) -> dict[str, Any]:
        if response.status_code == 401:
            raise DeviceError(
                f"{self._where()} rejected the token: set the token the server was started with "
                "(token_env, by default MODELTAILOR_DEVICE_TOKEN)"
            )
        if response.status_code != 200:
            raise DeviceError(
                f"{self._where()} answered {response.status_code}: {_error_text(response)}"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DeviceError(
                f"{self._where()} did not answer JSON: is the url that of a modeltailor device server?"
            )
        return body

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` answer."""
        return self._check(self._request("GET", "/health"))

    def describe(self) -> dict:
        return {
            "kind": "remote",
            "name": self.name,
            "url": self.url,
            "runs": self.runs,
            "warmup": self.warmup,
            "server": self.health(),
        }

    def _headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/octet-stream",
            **({"Authorization": f"Bearer {self.token}"} if self.token else {}),
        }

    def _rebuild(self, payload: Any, timed: str = "alone") -> Measurement:
        try:
            return measurement_from_payload(payload, self.name, timed)
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceError(
                f"{self._where()} answered an unexpected measurement ({exc!r}): "
                "update modeltailor on the device"
            ) from None

    def measure(self, onnx_bytes: bytes) -> Measurement:
        response = self._request(
            "POST", "/measure", params={"runs": self.runs, "warmup": self.warmup}, data=onnx_bytes,
            headers=self._headers(),
        )
        measurement = self._rebuild(self._check(response))
        log.debug("%s: %.4f ms median over %d runs", self.name, measurement.latency.median_ms, measurement.latency.runs)
        return measurement

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]:
        """Every model timed on the server in interleaved rounds, ``repeats`` times the runs each."""
        keys, blobs = list(models), list(models.values())
        if not blobs:
            return {}
        response = self._request(
            "POST", "/measure-alternately", scale=len(blobs) * max(1, repeats),
            params={"runs": self.runs, "warmup": self.warmup, "repeats": repeats,
                    "sizes": ",".join(str(len(b)) for b in blobs)},
            data=b"".join(blobs), headers=self._headers(),
        )
        if response.status_code in (404, 405):
            log.warning("%s has no /measure-alternately (an older server): measuring the %d models one "
                        "after the other; update modeltailor on the device to compare them alternately",
                        self._where(), len(blobs))
            longer = self.with_timing(runs=self.runs * max(1, repeats))
            return {key: replace(longer.measure(blob), timed="sequential") for key, blob in models.items()}
        answer = self._check(response).get("measurements")
        if not isinstance(answer, list) or len(answer) != len(blobs):
            raise DeviceError(f"{self._where()} answered {len(answer) if isinstance(answer, list) else 'no'} "
                              f"measurements for {len(blobs)} models: update modeltailor on the device")
        return {key: self._rebuild(payload, "alternating") for key, payload in zip(keys, answer, strict=True)}
