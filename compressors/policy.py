"""A compression policy: per-unit decisions, stored as plain data (JSON), never pickled code."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modeltailor.errors import CompressionError

POLICY_FORMAT = 1
METHODS: tuple[str, ...] = ("prune", "skip", "lowrank")
"""prune: keep `keep` of the unit's channels; skip: remove the residual block the unit lives in;
lowrank: factorize the unit's root layer at rank ratio `keep`. Independently, `bits` = 8 runs the
unit's layers in int8 (ONNX Runtime static QDQ quantization), 32 keeps them in float."""
BITS: tuple[int, ...] = (32, 8)
DOWNSAMPLE: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class UnitAction:
    """What to do to one unit: `method` at amount `keep` (channel or rank fraction), at `bits`."""

    unit: str
    method: str = "prune"
    keep: float = 1.0
    bits: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CompressionError(
                f"unit '{self.unit}': unknown method '{self.method}': use one of {', '.join(METHODS)}"
            )
        if self.method in ("prune", "lowrank") and not 0.0 < self.keep <= 1.0:
            raise CompressionError(
                f"unit '{self.unit}': keep ratio {self.keep} is outside (0, 1]"
            )
        if self.bits not in BITS:
            raise CompressionError(f"unit '{self.unit}': bits {self.bits} is not one of 32, 8")


@dataclass(frozen=True)
class Policy:
    """Per-unit actions plus whatever identifies the model the policy was found for.

    `downsample`: the factor the model's first convolution's stride is multiplied by (2: every
    later feature map a quarter of the size, `compressors/resolution.py`); 1 leaves it."""

    actions: tuple[UnitAction, ...]
    meta: tuple[tuple[str, Any], ...] = ()
    downsample: int = 1

    def __post_init__(self) -> None:
        if self.downsample not in DOWNSAMPLE:
            raise CompressionError(
                f"policy downsample {self.downsample!r} is not one of {', '.join(map(str, DOWNSAMPLE))}"
            )

    @classmethod
    def uniform(cls, units: Iterable[str], keep: float) -> Policy:
        return cls(tuple(UnitAction(unit=u, keep=keep) for u in units))

    def keep_ratios(self) -> dict[str, float]:
        """Fraction of channels kept per pruned unit; 0 for a unit whose block is skipped."""
        return {a.unit: (a.keep if a.method == "prune" else 0.0) for a in self.actions if a.method != "lowrank"}

    def skipped(self) -> list[str]:
        return [a.unit for a in self.actions if a.method == "skip"]

    def lowrank_ratios(self) -> dict[str, float]:
        return {a.unit: a.keep for a in self.actions if a.method == "lowrank"}

    def quantized(self) -> list[str]:
        return [a.unit for a in self.actions if a.bits == 8 and a.method != "skip"]

    def methods(self) -> set[str]:
        """Methods in use, with "int8" for quantized units and "downsample" for a lower resolution."""
        used = {a.method for a in self.actions if a.method != "prune" or a.keep < 1.0}
        return used | ({"int8"} if self.quantized() else set()) | ({"downsample"} if self.downsample > 1 else set())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "meta": dict(self.meta),
            "units": [asdict(a) for a in self.actions],
            "downsample": self.downsample,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> Policy:
        if not isinstance(data, dict) or not isinstance(data.get("units"), list):
            raise CompressionError(f"{source}: not a modeltailor policy (no 'units' list)")
        if data.get("format", POLICY_FORMAT) != POLICY_FORMAT:
            raise CompressionError(f"{source}: policy format {data.get('format')} is not supported")
        try:
            actions = tuple(UnitAction(**entry) for entry in data["units"])
        except TypeError as exc:
            raise CompressionError(f"{source}: malformed unit entry ({exc})") from None
        meta = tuple(sorted((data.get("meta") or {}).items()))
        downsample = data.get("downsample", 1)  # absent in policies written before it existed
        if isinstance(downsample, bool) or downsample not in DOWNSAMPLE:
            raise CompressionError(f"{source}: downsample {downsample!r} is not one of {', '.join(map(str, DOWNSAMPLE))}")
        return cls(actions, meta, int(downsample))

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Policy:
        if not path.is_file():
            raise CompressionError(f"policy file '{path}' not found: pass the policy.json a search wrote")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CompressionError(f"policy file '{path}' is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, source=f"policy file '{path}'")
