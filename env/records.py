"""Episode records: what one evaluated policy measured, and what a search found.

- :class:`Outcome`: what the evaluator measured for one policy (env <- evaluator).
- :class:`EpisodeRecord`: one finished episode, carrying its :class:`~modeltailor.compressors.policy.Policy`
  (env -> searchers -> ``episodes.jsonl`` -> finalize).
- :class:`SearchResult`: every episode of a search, its Pareto set and best record (searchers ->
  experiments).

The ``summary.json`` contract built from them lives in :mod:`modeltailor.experiments.spec.summary`;
device measurements (``Measurement``) in :mod:`modeltailor.devices.measurement`. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from modeltailor.compressors.policy import Policy
from modeltailor.devices.measurement import Measurement
from modeltailor.errors import ModelTailorError


@dataclass(frozen=True)
class Outcome:
    """One evaluated policy: accuracy on the scoring split and the device measurement."""

    accuracy: float
    measurement: Measurement
    params: int
    macs: int
    kept_channels: dict[str, int]
    seconds: float
    cached: bool = False
    architecture: str = ""

    @property
    def latency_ms(self) -> float:
        return self.measurement.latency.median_ms

    @property
    def memory_bytes(self) -> int:
        return self.measurement.memory.total_bytes


@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated policy: its actions and what was measured for it."""

    episode: int
    policy: Policy
    accuracy: float
    latency_ms: float
    latency_p90_ms: float
    memory_bytes: int
    params: int
    macs: int
    reward: float
    feasible: bool
    cached: bool
    seconds: float
    kept_channels: dict[str, int] = field(default_factory=dict)
    architecture: str = ""
    failure: str | None = None
    """Why the policy could not be built or exported (one line); None for an evaluated episode."""

    @property
    def identity(self) -> tuple:
        """Same identity = same compressed model shape (and int8 units)."""
        return (self.architecture,) if self.architecture else tuple(sorted(self.kept_channels.items()))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the policy as its ``policy.json`` form); ``from_dict`` reads it back."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**data, "policy": self.policy.to_dict(), "kept_channels": dict(self.kept_channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "episode record") -> EpisodeRecord:
        """A record from ``to_dict``'s form; ModelTailorError naming ``source`` when malformed."""
        if not isinstance(data, dict):
            raise ModelTailorError(f"{source}: not a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelTailorError(f"{source}: unknown key '{unknown[0]}'")
        try:
            policy = Policy.from_dict(data["policy"], source=source)
            return cls(**{**data, "policy": policy})
        except (KeyError, TypeError) as exc:
            raise ModelTailorError(f"{source}: malformed record ({exc})") from None


@dataclass
class SearchResult:
    """Every episode of a search, its Pareto set and the best record under the objective."""

    searcher: str
    episodes: list[EpisodeRecord]
    pareto: list[EpisodeRecord] = field(default_factory=list)
    best: EpisodeRecord | None = None
    interrupted: bool = False
    notes: dict[str, Any] = field(default_factory=dict)
    """What the searcher says about how it searched (a surrogate-assisted one: real and surrogate
    episodes, where its agent came from); empty for the others."""
