"""The signature cache: reuse a device's latency for models of the same architecture.

:func:`architecture_signature` hashes a model's structure, not its weight values or tensor names;
:class:`CachedDevice` keys latencies by ``"<device name>|<identity>|<signature>"`` (memory is
always recomputed). Search-time candidates that differ only in weights are timed once.

A latency is reused only where it would be measured again the same way: the identity
(:func:`measurement_identity`) holds this host's name and CPU model and what the device says about
itself (its kind and settings: threads, graph optimization level, url, runs, warm-up, rounds, ONNX
Runtime version, a device server's machine), and its short hash is part of every key. An entry
records when (UTC) and on which host it was measured; entries older than the maximum age
(``MODELTAILOR_CACHE_MAX_AGE_DAYS``, default 7 days) or from another host are never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modeltailor.common.storage import atomic_write, locked
from modeltailor.devices.base import Device, K
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import load_model, onnx_memory
from modeltailor.errors import ConfigError, DeviceError, first_line


def _type_text(value: onnx.ValueInfoProto) -> str:
    """'elem_type[d0,d1,...]' of a value; symbolic dims by name, unknown as '?'."""
    ttype = value.type.tensor_type
    dims = [
        str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
        for d in ttype.shape.dim
    ]
    return f"{ttype.elem_type}[{','.join(dims)}]"


def _tensor_text(tensor: onnx.TensorProto) -> str:
    """Shape and dtype of a tensor; small int64 tensors (shapes, axes) also by value."""
    text = f"T{tensor.data_type}{list(tensor.dims)}"
    if tensor.data_type == onnx.TensorProto.INT64 and int(np.prod(tensor.dims)) <= 64:
        text += str(onnx.numpy_helper.to_array(tensor).tolist())
    return text


def _attribute_text(attr: onnx.AttributeProto) -> str:
    if attr.type == onnx.AttributeProto.TENSOR:
        return f"{attr.name}={_tensor_text(attr.t)}"
    if attr.type == onnx.AttributeProto.GRAPH:
        return f"{attr.name}={{{';'.join(_graph_lines(attr.g))}}}"
    if attr.type == onnx.AttributeProto.GRAPHS:
        return f"{attr.name}=[{'|'.join(';'.join(_graph_lines(g)) for g in attr.graphs)}]"
    return f"{attr.name}={onnx.helper.get_attribute_value(attr)!r}"


def _graph_lines(graph: onnx.GraphProto) -> list[str]:
    """Canonical text of a graph: names replaced by order of appearance, weights by shape."""
    weights = {t.name: _tensor_text(t) for t in graph.initializer}
    types = {v.name: _type_text(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    tokens: dict[str, str] = {}

    def token(name: str) -> str:
        if not name or name in weights:
            return weights.get(name, "-")
        tokens.setdefault(name, f"v{len(tokens)}")
        return f"{tokens[name]}:{types.get(name, '?')}"

    lines = [f"in {token(v.name)}" for v in graph.input if v.name not in weights]
    for node in graph.node:
        attrs = ",".join(_attribute_text(a) for a in sorted(node.attribute, key=lambda a: a.name))
        ins = ",".join(token(n) for n in node.input)
        outs = ",".join(token(n) for n in node.output)
        lines.append(f"{node.domain}::{node.op_type}({ins})->({outs}){{{attrs}}}")
    lines += [f"out {token(v.name)}" for v in graph.output]
    return lines


def architecture_signature(onnx_bytes: bytes) -> str:
    """Hash of a model's structure, independent of weight values and tensor names.

    Covers opsets, node op types and attributes, wiring, every value's inferred dtype and
    shape, and initializer shapes and dtypes (int64 initializers of <= 64 elements, i.e.
    shapes and axes, by value too; int8/int32 quantized weights and biases never). Returns the first 16 hex chars of a sha256.
    """
    model = load_model(onnx_bytes)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # best effort: the declared types still describe the graph
        pass
    opsets = sorted(f"opset {o.domain}:{o.version}" for o in model.opset_import)
    text = "\n".join([*opsets, *_graph_lines(model.graph)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


MAX_AGE_ENV = "MODELTAILOR_CACHE_MAX_AGE_DAYS"
"""Environment variable: the age (days) past which a cached latency is measured again."""
DEFAULT_MAX_AGE_DAYS = 7.0
"""A week: long enough for a campaign's searches to share timings, short enough that a host's
changed load, firmware or power settings are measured again soon."""
PRUNE_AFTER_DAYS = 30.0
"""Entries older than this (or than the cache's maximum age, if longer) are dropped when the file
is rewritten: no process with the default maximum age would serve them, and a shared cache would
otherwise grow with every architecture ever timed."""
VOLATILE_KEYS = frozenset({"busy", "measured", "status", "timeout_s", "max_model_bytes", "cache"})
"""What a device's ``describe()`` may hold that changes between calls or never changes a timing
(a device server's busy flag and counter, its limits; the cache's own path)."""


def cpu_model() -> str:
    """This host's CPU model (from /proc/cpuinfo), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_name() -> str:
    """This host's name: a cached latency is served on the host that measured it only."""
    return socket.gethostname()


def _stable(value: Any) -> Any:
    """`value` less the VOLATILE_KEYS of every mapping in it."""
    if isinstance(value, Mapping):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    return value


def measurement_identity(device: Device) -> dict[str, Any]:
    """Everything that changes a latency `device` measures: this host and its CPU, and the device's
    own description (kind, settings, timing runs, warm-up and rounds, ONNX Runtime version, ...)."""
    return {"host": host_name(), "cpu": cpu_model(), "device": _stable(device.describe())}


def identity_hash(identity: Mapping[str, Any]) -> str:
    """A short hash of a measurement identity (12 hex chars of a sha256 of its sorted JSON)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def max_age_days_from_environment() -> float:
    """MODELTAILOR_CACHE_MAX_AGE_DAYS as a number of days (>= 0), else DEFAULT_MAX_AGE_DAYS."""
    text = os.environ.get(MAX_AGE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_AGE_DAYS
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        raise ConfigError(
            f"{MAX_AGE_ENV}='{text}' is not a number of days: set it to e.g. 7 (0 serves no cached latency)"
        )
    return days


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CacheEntry:
    """One cached latency: what was measured, when (UTC, ISO 8601) and on which host."""

    latency: LatencyStats
    measured_at: str
    host: str

    def age_days(self, now: datetime) -> float | None:
        """Days since it was measured; None when its timestamp cannot be read."""
        try:
            when = datetime.fromisoformat(self.measured_at)
        except ValueError:
            return None
        if when.tzinfo is None:
            return None
        return (now - when).total_seconds() / 86400.0

    def to_dict(self) -> dict[str, Any]:
        return {"latency": self.latency.to_dict(), "measured_at": self.measured_at, "host": self.host}

    @classmethod
    def from_dict(cls, data: Any) -> CacheEntry | None:
        """The entry, or None for one in another form (an older cache's: never served)."""
        if not isinstance(data, dict) or not {"latency", "measured_at", "host"} <= data.keys():
            return None
        return cls(LatencyStats.from_dict(data["latency"]), str(data["measured_at"]), str(data["host"]))


class CachedDevice:
    """Wraps a device and reuses its latency for models with the same architecture.

    The cache key is ``"<device name>|<identity hash>|<architecture_signature>"``; memory is
    recomputed on every call. An entry is served only when it was measured on this host and is at
    most ``max_age_days`` old (default: ``MODELTAILOR_CACHE_MAX_AGE_DAYS``, else 7); otherwise the
    model is measured again and the entry replaced.

    With ``path``, the cache is a JSON file ``{key: CacheEntry.to_dict()}`` read at construction
    and, on every new entry, re-read, merged (the newer of two entries wins) and rewritten under
    an inter-process lock (unique temp file + rename), so processes that fill one cache at once
    never lose each other's entries; entries older than ``PRUNE_AFTER_DAYS`` (or ``max_age_days``
    if longer) or without a readable timestamp are dropped then (``pruned`` counts them). Without
    it, the cache lives in memory: repeats within this run are still reused.

    Counters, each named for what it counts: ``hits_earlier_runs`` (served an entry this object
    did not measure: an earlier run's, or another process's on this host), ``repeats_this_run``
    (served an entry this object measured), ``measured`` (measured on the device), ``expired``
    (of those, how many replaced an entry past the maximum age).
    """

    def __init__(self, device: Device, path: Path | str | None = None, max_age_days: float | None = None) -> None:
        self.device = device
        self.name = device.name
        self.path = Path(path) if path is not None else None
        self.max_age_days = max_age_days_from_environment() if max_age_days is None else float(max_age_days)
        self.hits_earlier_runs = 0
        self.repeats_this_run = 0
        self.measured = 0
        self.expired = 0
        self.pruned = 0
        self._mine: set[str] = set()
        self._cache: dict[str, CacheEntry] = self._read() if self.path else {}

    @property
    def hits(self) -> int:
        """Latencies served from the cache, whoever measured them (earlier runs + repeats)."""
        return self.hits_earlier_runs + self.repeats_this_run

    @property
    def misses(self) -> int:
        """Latencies measured on the device (the same as ``measured``)."""
        return self.measured

    @property
    def kind(self) -> str:
        return self.device.kind

    @cached_property
    def identity(self) -> dict[str, Any]:
        """This device's measurement identity on this host (asked once: a remote device is asked over HTTP)."""
        return measurement_identity(self.device)

    def describe(self) -> dict[str, Any]:
        return {**self.device.describe(), "cache": str(self.path) if self.path else None}

    def stats(self) -> dict[str, Any]:
        """The counters and settings, JSON-ready (summary.json's ``latency_cache``)."""
        return {
            "enabled": self.path is not None,
            "path": str(self.path) if self.path else None,
            "max_age_days": self.max_age_days,
            "identity": identity_hash(self.identity),
            "host": self.identity["host"],
            "hits_earlier_runs": self.hits_earlier_runs,
            "repeats_this_run": self.repeats_this_run,
            "measured": self.measured,
            "expired": self.expired,
        }

    def uncached(self) -> Device:
        return self.device.uncached()

    def with_timing(
        self, *, runs: int | None = None, warmup: int | None = None, rounds: int | None = None
    ) -> Device:
        """The device itself with other timings: a cached figure was taken with the old ones."""
        return self.device.uncached().with_timing(runs=runs, warmup=warmup, rounds=rounds)

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]:
        """Timed afresh on the device: alternating rounds exist to compare models timed together."""
        return self.device.uncached().measure_alternately(models, repeats)

    def measure_latency(self, onnx_bytes: bytes) -> LatencyStats:
        return self.measure(onnx_bytes).latency

    def key(self, onnx_bytes: bytes) -> str:
        return f"{self.name}|{identity_hash(self.identity)}|{architecture_signature(onnx_bytes)}"

    def measure(self, onnx_bytes: bytes) -> Measurement:
        key = self.key(onnx_bytes)
        entry = self._cache.get(key)
        if entry is not None and self._servable(entry):
            if key in self._mine:
                self.repeats_this_run += 1
            else:
                self.hits_earlier_runs += 1
            return Measurement(latency=entry.latency, memory=onnx_memory(onnx_bytes), device=self.name)
        if entry is not None:
            self.expired += 1
        self.measured += 1
        result = self.device.measure(onnx_bytes)
        self._mine.add(key)
        self._put(key, CacheEntry(result.latency, utc_now().isoformat(timespec="seconds"), self.identity["host"]))
        return result

    def _servable(self, entry: CacheEntry) -> bool:
        """Measured on this host, at most max_age_days ago (a clock set back counts as age 0)."""
        if entry.host != self.identity["host"]:
            return False
        age = entry.age_days(utc_now())
        return age is not None and max(age, 0.0) <= self.max_age_days

    def __len__(self) -> int:
        return len(self._cache)

    def _pruned(self, entries: dict[str, CacheEntry]) -> dict[str, CacheEntry]:
        """``entries`` without those too old for any process to serve (any host's: age is age)."""
        now, limit = utc_now(), max(PRUNE_AFTER_DAYS, self.max_age_days)
        kept = {}
        for key, entry in entries.items():
            age = entry.age_days(now)
            if age is not None and age <= limit:
                kept[key] = entry
        self.pruned += len(entries) - len(kept)
        return kept

    def _read(self) -> dict[str, CacheEntry]:
        assert self.path is not None
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            entries = {key: CacheEntry.from_dict(value) for key, value in raw.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DeviceError(
                f"latency cache {self.path} is unreadable ({first_line(exc)}): delete it or pass another path"
            ) from exc
        return {key: entry for key, entry in entries.items() if entry is not None}

    def _put(self, key: str, entry: CacheEntry) -> None:
        self._cache[key] = entry
        if self.path is None:
            return
        with locked(self.path):
            merged = self._read()
            for k, mine in self._cache.items():
                theirs = merged.get(k)
                if theirs is None or (k == key or mine.measured_at >= theirs.measured_at):
                    merged[k] = mine
            self._cache = self._pruned(merged)
            payload = {k: v.to_dict() for k, v in sorted(self._cache.items())}
            atomic_write(self.path, json.dumps(payload, indent=1))
