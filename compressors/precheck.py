"""Check each unit before a search: which compression methods really work on it.

A user's architecture can hold idioms Torch-Pruning or the exporter get wrong (a channel shuffle
written as view/transpose, an op the ONNX exporter cannot express, a head that mixes outputs). So
before a search spends hours, each method the search allows is tried on each unit alone, at its
most aggressive setting, on a copy of the model: the compressed model must run, keep the output
shape, export to ONNX and match torch in ONNX Runtime (int8: run and keep the shape, since int8
logits are not meant to equal float ones). A method that fails on a unit is off for that unit
for this search, with the reason; a unit whose pruning fails is frozen (left as it is).

To keep this cheap, every unit is first tried at once (one model per method); only when that
fails are the units tried one by one, to find which.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from modeltailor.compressors.export import export_onnx, onnx_matches_torch
from modeltailor.compressors.pipeline import PolicyApplier
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.units import ModelAnalysis
from modeltailor.devices.session import run_onnx
from modeltailor.errors import ModelLoadError, first_line

CHECK_METHODS: tuple[str, ...] = ("prune", "skip", "lowrank", "int8")
"""What `check_units` tries: prune at the lowest keep, skip the enclosing residual block,
low-rank at the lowest rank ratio, int8 with ONNX Runtime static quantization."""


@dataclass(frozen=True)
class UnitCheck:
    """Which methods work on one unit, and why the others do not."""

    unit: str
    passed: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def frozen(self) -> bool:
        """Pruning fails on the unit: the search leaves it as it is."""
        return "prune" in self.failed

    def reason(self) -> str:
        return "; ".join(f"{method}: {why}" for method, why in self.failed.items())


@dataclass(frozen=True)
class UnitChecks:
    """The outcome of `check_units` for every unit of a model."""

    checks: tuple[UnitCheck, ...]

    def frozen(self) -> list[UnitCheck]:
        return [c for c in self.checks if c.frozen]

    def supporting(self, method: str) -> frozenset[str]:
        """Units on which `method` passed."""
        return frozenset(c.unit for c in self.checks if method in c.passed)

    def get(self, unit: str) -> UnitCheck | None:
        return next((c for c in self.checks if c.unit == unit), None)

    def restrict(self, analysis: ModelAnalysis) -> ModelAnalysis:
        """`analysis` without the frozen units, and without a skippable block where skipping failed."""
        frozen = {c.unit for c in self.frozen()}
        no_skip = {c.unit for c in self.checks if "skip" in c.failed}
        units = [
            replace(u, block=None if u.name in no_skip else u.block) for u in analysis.units if u.name not in frozen
        ]
        return replace(analysis, units=tuple(replace(u, index=i) for i, u in enumerate(units)))


Attempt = Callable[[Sequence[str]], None]


def check_units(
    model: nn.Module,
    analysis: ModelAnalysis,
    applier: PolicyApplier,
    x: torch.Tensor,
    *,
    methods: Collection[str] = ("prune",),
    min_keep: float = 0.2,
    lowrank_units: Collection[str] = (),
) -> UnitChecks:
    """Try each of `methods` (see CHECK_METHODS) on every unit that could take it; `model` is untouched.

    `x` is a small batch of real inputs (int8 calibration, parity). Skip is tried on units inside a
    skippable block, low-rank on `lowrank_units` only.
    """
    model = model.eval()
    example = x[:1]
    expected = _output_shape(model, x)
    try:  # the model as it is first: if it cannot ship, no unit is to blame
        onnx_bytes = _stage("exporting to ONNX", lambda: export_onnx(model, tuple(x.shape[1:])))
        _stage("comparing ONNX with torch", lambda: onnx_matches_torch(model, onnx_bytes, x, atol=1e-3))
    except _Failed as exc:
        raise ModelLoadError(
            f"the uncompressed model cannot ship as ONNX at input {tuple(example.shape)}: {exc}: "
            "change the input size (data.input_size) or the op in the model"
        ) from None
    passed: dict[str, list[str]] = {u.name: [] for u in analysis.units}
    failed: dict[str, dict[str, str]] = {u.name: {} for u in analysis.units}

    def structural(action: Callable[[str], UnitAction]) -> Attempt:
        def attempt(units: Sequence[str]) -> None:
            policy = Policy(tuple(action(u) for u in units))
            compressed = _stage("compressing", lambda: applier.apply(model, policy, example))
            _check_runs(compressed, x, expected)
            onnx_bytes = _stage("exporting to ONNX", lambda: export_onnx(compressed, tuple(x.shape[1:])))
            _stage("comparing ONNX with torch", lambda: onnx_matches_torch(compressed, onnx_bytes, x, atol=1e-3))

        return attempt

    def int8(units: Sequence[str]) -> None:
        policy = Policy(tuple(UnitAction(u, "prune", 1.0, bits=8) for u in units))
        onnx_bytes = _stage(
            "quantizing to int8", lambda: applier.to_onnx(model, policy, analysis, tuple(x.shape[1:]), x)
        )
        out = _stage("running the int8 model", lambda: run_onnx(onnx_bytes, x.numpy()))
        if tuple(out.shape) != expected or not np.isfinite(out).all():
            raise _Failed(f"the int8 model outputs shape {tuple(out.shape)} (expected {expected}) or non-finite values")

    attempts: dict[str, tuple[Attempt, list[str]]] = {}
    names = [u.name for u in analysis.units]
    if "prune" in methods:
        attempts["prune"] = (structural(lambda u: UnitAction(u, "prune", min_keep)), names)
    if "skip" in methods:
        attempts["skip"] = (structural(lambda u: UnitAction(u, "skip", 1.0)), [u.name for u in analysis.units if u.block])
    if "lowrank" in methods:
        attempts["lowrank"] = (structural(lambda u: UnitAction(u, "lowrank", min_keep)), [n for n in names if n in lowrank_units])
    if "int8" in methods:
        attempts["int8"] = (int8, names)
    for method, (attempt, units) in attempts.items():
        for unit, reason in _failures(attempt, units).items():
            failed[unit][method] = reason
        for unit in units:
            if method not in failed[unit]:
                passed[unit].append(method)
    return UnitChecks(tuple(UnitCheck(u, tuple(passed[u]), failed[u]) for u in names))


def _failures(attempt: Attempt, units: list[str]) -> dict[str, str]:
    """unit -> reason for the units on which `attempt` fails alone (all at once first: the usual pass)."""
    if not units:
        return {}
    if _reason(attempt, units) is None:
        return {}
    found = {u: r for u in units if (r := _reason(attempt, [u])) is not None}
    if not found:  # each passes alone, not together: blame the last, the one that completes the clash
        found = {units[-1]: _reason(attempt, units) or "fails together with the other units"}
    return found


def _reason(attempt: Attempt, units: Sequence[str]) -> str | None:
    try:
        attempt(units)
    except _Failed as exc:
        return str(exc)
    return None


class _Failed(Exception):
    """One check failed; the message says at which stage and why (one line)."""


def _stage(what: str, step: Callable[[], object]):
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - anything a user's architecture makes a library raise
        raise _Failed(f"{what} failed: {first_line(exc, 200)}") from None


def _output_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(model(x).shape)


def _check_runs(model: nn.Module, x: torch.Tensor, expected: tuple[int, ...]) -> None:
    out = _stage("running the compressed model", lambda: _output_shape(model.eval(), x))
    if out != expected:
        raise _Failed(f"the compressed model outputs shape {out}, not {expected}")
