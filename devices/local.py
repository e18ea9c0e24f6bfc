"""Devices measure an ONNX model's latency and memory.

A :class:`Device` takes serialized ONNX bytes and returns a :class:`Measurement`
(latency statistics in milliseconds plus :class:`~modeltailor.devices.memory.MemoryStats`).

:class:`LocalOrtDevice` times ONNX Runtime on this machine's CPU. Protocol: one session
per call (CPUExecutionProvider, ``intra_op_threads`` threads, one inter-op thread,
sequential execution, no spin-waiting), a fixed random input of the graph's declared input
shape (symbolic dims set to 1), ``warmup`` untimed runs, then ``runs`` timed runs split
into ``rounds`` rounds (young garbage collected between rounds, collector off within), each ``session.run`` timed alone
with ``time.perf_counter_ns``. If ``min_time_s`` > 0, rounds continue until that much
timed time has passed (at most ``10 * runs`` runs).

The reported latency (``median_ms``) is the median of the quietest round: the lowest of the
per-round medians. On a shared machine other tenants' load comes in bursts of a few hundred
milliseconds and only ever adds time; a burst that covers most of a measurement moved the pooled
median of the same model by up to 60% on the 2-core dev machine, while the quietest round's
median stayed within a few percent. p90, mean, std, min and IQR pool every timed run, and
``pooled_median_ms`` keeps the pooled median, so the noise stays visible in ``spread``.

The signature cache around a device is ``devices/cache.py``; the session options are
``devices/session.py``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from modeltailor.common.cores import timing
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import onnx_memory
from modeltailor.devices.session import GRAPH_OPT_LEVELS, ort_session, random_feed
from modeltailor.errors import DeviceError, first_line

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class LocalOrtDevice:
    """ONNX Runtime on this machine's CPU; see the module docstring for the timing protocol."""

    name: str = "cpu-1t"
    intra_op_threads: int = 1
    graph_optimization_level: str = "all"
    warmup: int = 20
    runs: int = 200
    rounds: int = 5
    min_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in GRAPH_OPT_LEVELS:
            choices = ", ".join(GRAPH_OPT_LEVELS)
            raise DeviceError(
                f"graph_optimization_level '{self.graph_optimization_level}' of device "
                f"'{self.name}' is unknown: choose one of {choices}"
            )
        for key in ("intra_op_threads", "runs", "rounds"):
            if int(getattr(self, key)) < 1:
                raise DeviceError(
                    f"{key}={getattr(self, key)} of device '{self.name}' must be >= 1"
                )
        if self.warmup < 0 or self.min_time_s < 0:
            raise DeviceError(f"warmup and min_time_s of device '{self.name}' must be >= 0")

    @property
    def kind(self) -> str:
        return "local-ort"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self), "onnxruntime": ort.__version__}

    def uncached(self) -> LocalOrtDevice:
        return self

    def with_timing(
        self, *, runs: int | None = None, warmup: int | None = None, rounds: int | None = None
    ) -> LocalOrtDevice:
        """A copy with other timing settings (None keeps the current one); ``min_time_s`` off."""
        if runs is not None and rounds is None:
            rounds = min(self.rounds, int(runs))
        return replace(
            self,
            runs=self.runs if runs is None else runs,
            warmup=self.warmup if warmup is None else warmup,
            rounds=self.rounds if rounds is None else rounds,
            min_time_s=0.0,
        )

    def session(self, onnx_bytes: bytes) -> ort.InferenceSession:
        """An InferenceSession configured for timing; DeviceError if ORT cannot load the model."""
        return ort_session(
            onnx_bytes, self.intra_op_threads, self.graph_optimization_level, who=f"device '{self.name}'"
        )

    def time_runs(self, session: ort.InferenceSession) -> np.ndarray:
        """Per-run latencies in ms after warm-up, pooled over the rounds."""
        return np.concatenate(self.time_rounds(session))

    def time_rounds(self, session: ort.InferenceSession) -> list[np.ndarray]:
        """Per-run latencies in ms after warm-up, one array per round."""
        feed = random_feed(session)
        try:
            with timing():  # the host's cores alone: no other measurement or training step
                for _ in range(self.warmup):
                    session.run(None, feed)
                return self._timed_rounds(session, feed)
        except Exception as exc:
            raise DeviceError(
                f"device '{self.name}' failed to run the model: {first_line(exc)}"
            ) from exc

    def _want_more(self, samples: list[int]) -> bool:
        if len(samples) < self.runs:
            return True
        return sum(samples) < self.min_time_s * 1e9 and len(samples) < 10 * self.runs

    def _timed_rounds(
        self, session: ort.InferenceSession, feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        per_round = -(-self.runs // self.rounds)
        samples: list[int] = []
        rounds: list[np.ndarray] = []
        gc_was_enabled = gc.isenabled()
        try:
            while self._want_more(samples):
                gc.collect(0)
                gc.disable()
                start_of_round = len(samples)
                for _ in range(per_round):
                    start = time.perf_counter_ns()
                    session.run(None, feed)
                    samples.append(time.perf_counter_ns() - start)
                    if not self._want_more(samples):
                        break
                gc.enable()
                rounds.append(np.asarray(samples[start_of_round:], dtype=np.float64) / 1e6)
        finally:
            if gc_was_enabled:
                gc.enable()
            else:
                gc.disable()
        return rounds

    def measure_latency(self, onnx_bytes: bytes) -> LatencyStats:
        return LatencyStats.from_rounds(self.time_rounds(self.session(onnx_bytes)))

    def measure(self, onnx_bytes: bytes) -> Measurement:
        latency = self.measure_latency(onnx_bytes)
        return Measurement(latency=latency, memory=onnx_memory(onnx_bytes), device=self.name)

    def measure_alternately(self, models: Mapping[K, bytes], repeats: int = 1) -> dict[K, Measurement]:
        """Every model timed in alternating rounds (``repeats`` times the usual runs each)."""
        stats = time_alternately({key: (self, data) for key, data in models.items()}, repeats)
        return {
            key: Measurement(stats[key], onnx_memory(data), self.name, timed="alternating")
            for key, data in models.items()
        }


def time_alternately(runs: Mapping[K, tuple[LocalOrtDevice, bytes]], repeats: int = 1) -> dict[K, LatencyStats]:
    """Latency of several (device, model) pairs, timed in alternating rounds.

    Each pair gets ``repeats * device.runs`` timed runs in ``repeats * device.rounds`` rounds; every
    round times each pair once, so load that comes and goes hits them alike and their ratio holds.
    """
    one_round = {
        key: (replace(device, runs=-(-device.runs // device.rounds), rounds=1), device.session(data))
        for key, (device, data) in runs.items()
    }
    rounds: dict[K, list[np.ndarray]] = {key: [] for key in runs}
    with timing():
        for _ in range(max((d.rounds for d, _ in runs.values()), default=0) * repeats):
            for key, (device, session) in one_round.items():
                rounds[key] += device.time_rounds(session)
    return {key: LatencyStats.from_rounds(v) for key, v in rounds.items()}
