"""Channel pruning through Torch-Pruning dependency groups.

Torch-Pruning's dependency graph keeps residual, depthwise and grouped structures consistent;
this module only decides how many channels each unit keeps (rounded to `round_to`) and which
criterion ranks them. The result is a new module with physically fewer channels (no masks).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from modeltailor.compressors.importance import ActivationImportance, GradientTaylorImportance
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.units import find_output_layer, output_modules, skippable_blocks
from modeltailor.errors import CompressionError

Calibration = tuple[torch.Tensor, torch.Tensor]
"""(inputs, labels) from the deployment's training split, for data-driven criteria."""


def _required(data: Calibration | None) -> Calibration:
    """The calibration data a data-driven criterion ranks channels on (CompressionError if none)."""
    if data is None:
        raise CompressionError("this importance ranks channels on data: pass calibration=(inputs, labels)")
    return data


IMPORTANCES: dict[str, Callable[[Calibration | None], tp.importance.Importance]] = {
    "l1": lambda _: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda _: tp.importance.GroupMagnitudeImportance(p=2),
    "fpgm": lambda _: tp.importance.FPGMImportance(),
    "lamp": lambda _: tp.importance.LAMPImportance(),
    "activation": lambda data: ActivationImportance(_required(data)[0]),  # DropNet
    "taylor": lambda data: GradientTaylorImportance(*_required(data)),
}
DATA_DRIVEN = frozenset({"activation", "taylor"})


def channels_to_keep(channels: int, keep: float, round_to: int) -> int:
    """Channels a unit keeps: `keep` of them rounded to a multiple of `round_to`, at least one multiple."""
    step = max(1, round_to)
    if channels <= step:
        return channels
    kept = int(round(channels * keep / step)) * step
    return int(min(channels, max(step, kept)))


@dataclass
class ChannelPruningCompressor:
    """Prunes each unit to its keep ratio with the chosen importance criterion.

    `activation` (DropNet: lowest mean post-activation first) and `taylor` (|w * dL/dw|) rank
    channels on `calibration` data, scored on the model being pruned; the magnitude criteria
    need none.
    """

    importance: str = "l2"
    round_to: int = 4
    name: str = "prune"
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise CompressionError(
                f"unknown importance '{self.importance}': choose one of {', '.join(IMPORTANCES)}"
            )
        if self.importance in DATA_DRIVEN and self.calibration is None:
            raise CompressionError(
                f"importance '{self.importance}' ranks channels on data: pass calibration=(inputs, labels)"
            )

    def apply(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
        """A pruned copy of `model`; `model` itself is left untouched."""
        pruned = copy.deepcopy(model).eval()
        skip_blocks(pruned, policy.skipped())
        modules = dict(pruned.named_modules())
        keep = {u: k for u, k in policy.keep_ratios().items() if u not in policy.skipped()}
        ratios = self._ratios(modules, keep)
        if not ratios:
            return pruned
        pruner = tp.pruner.BasePruner(
            pruned,
            example,
            importance=IMPORTANCES[self.importance](self.calibration),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            ignored_layers=output_modules(pruned, find_output_layer(pruned, example, mapping=False)),
            round_to=None,
        )
        pruner.step()
        return pruned

    def _ratios(self, modules: Mapping[str, nn.Module], keep: Mapping[str, float]) -> dict:
        ratios: dict[nn.Module, float] = {}
        for unit, ratio in keep.items():
            module = modules.get(unit)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                raise CompressionError(
                    f"policy names unit '{unit}', which is not a conv/linear layer of this model: "
                    "apply the policy to the model it was searched on"
                )
            channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            kept = channels_to_keep(channels, ratio, self.round_to)
            if kept < channels:
                # +0.5 keeps Torch-Pruning's int() truncation from dropping one channel too many
                ratios[module] = max(0.0, 1.0 - (kept + 0.5) / channels)
        return ratios


def skip_blocks(model: nn.Module, units: list[str]) -> None:
    """Replace, in place, the skippable residual block around each unit with what its `skip_path()`
    gives (a projection block: its shortcut), else nn.Identity."""
    blocks = skippable_blocks(model)
    for unit in units:
        owner = next((b for b in sorted(blocks, key=len, reverse=True) if unit.startswith(b + ".")), None)
        if owner is None:
            if any(unit.startswith(b + ".") or unit == b for b in _replaced(model)):
                continue
            raise CompressionError(
                f"policy skips unit '{unit}', which is not inside a skippable residual block of this model"
            )
        parent_name, _, child = owner.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        skip_path = getattr(blocks[owner], "skip_path", None)
        replacement: nn.Module = skip_path() if callable(skip_path) else nn.Identity()
        # torch types Module.__setattr__ as taking only a Tensor or Module, though plain attributes are allowed
        replacement.skipped_block = owner  # type: ignore[assignment]
        setattr(parent, child, replacement)
        blocks = skippable_blocks(model)


def _replaced(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if getattr(m, "skipped_block", None)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_fraction(original: nn.Module, pruned: nn.Module) -> float:
    """Fraction of parameters removed: 0 for an unchanged model."""
    before, after = count_params(original), count_params(pruned)
    return 1.0 - after / before if before else math.nan
