"""The Device protocol: what every caller may ask of a device, whatever its kind.

A device measures serialized ONNX models. Kinds: ``local-ort`` (ONNX Runtime on this machine,
:class:`~modeltailor.devices.local.LocalOrtDevice`), ``remote`` (a device server over HTTP,
:class:`~modeltailor.devices.remote.RemoteDevice`), ``table`` (a latency-table prediction,
:class:`~modeltailor.devices.latency_table.TableDevice`), and the signature cache around any of
them (:class:`~modeltailor.devices.cache.CachedDevice`).

Callers never test a device's class: what differs between kinds is behind these methods.

- ``measure``: latency and memory of one model.
- ``measure_latency``: latency only (no memory analysis), e.g. for single-node timings.
- ``measure_alternately``: several models timed round by round, so load that comes and goes hits
  them alike and their ratios hold (a device that cannot alternate measures one after another).
- ``with_timing``: the same device with other timing settings (runs, warm-up, rounds).
- ``uncached``: the device itself, past any cache (a probe or a final measurement must reach it).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import replace
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from modeltailor.devices.measurement import LatencyStats, Measurement

K = TypeVar("K", bound=Hashable)

TOKEN_ENV = "MODELTAILOR_DEVICE_TOKEN"
"""Environment variable holding a device server's bearer token (server and clients)."""
LEGACY_TOKEN_ENV = "MODELTAILOR_AGENT_TOKEN"
"""Its name before the device agent became the device server; still read as a fallback."""


def token_from_environment(token_env: str = TOKEN_ENV) -> str:
    """The token in ``token_env`` ('' if unset); the legacy variable stands in for the default."""
    token = os.environ.get(token_env, "")
    if not token and token_env == TOKEN_ENV:
        token = os.environ.get(LEGACY_TOKEN_ENV, "")
    return token


@runtime_checkable
class Device(Protocol):
    """Anything that measures serialized ONNX models; see the module docstring."""

    @property
    def name(self) -> str:
        """The device's name (a plain attribute on most devices; read-only is all callers need)."""
        ...

    @property
    def kind(self) -> str: ...

    def measure(self, onnx_bytes: bytes) -> Measurement: ...

    def measure_latency(self, onnx_bytes: bytes) -> LatencyStats: ...

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]: ...

    def with_timing(
        self, *, runs: int | None = None, warmup: int | None = None, rounds: int | None = None
    ) -> Device: ...

    def uncached(self) -> Device: ...

    def describe(self) -> dict[str, Any]: ...


class DeviceDefaults(ABC):
    """Default behaviour for devices that time nothing themselves (remote, table).

    Subclasses provide ``measure`` and ``describe``; the defaults here measure one model after
    another (each ``Measurement.timed`` says ``sequential``), take the latency from ``measure``
    and ignore timing settings, ``repeats`` included.
    """

    name: str

    @abstractmethod
    def measure(self, onnx_bytes: bytes) -> Measurement:
        """Latency and memory of one model on this device."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the device says about itself (JSON-ready)."""

    def measure_latency(self, onnx_bytes: bytes) -> LatencyStats:
        return self.measure(onnx_bytes).latency

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]:
        return {key: replace(self.measure(data), timed="sequential") for key, data in models.items()}

    def with_timing(
        self, *, runs: int | None = None, warmup: int | None = None, rounds: int | None = None
    ) -> Self:
        return self

    def uncached(self) -> Self:
        return self
