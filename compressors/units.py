"""Compressible units of a model: what the agent decides about, one step per unit.

A *unit* is one Torch-Pruning dependency group: a set of layers whose channels must be pruned
together (a residual stage's convolutions, a depthwise conv with its producer, ...). It is named by
its root module's dotted name, which is stable across copies of the same architecture, so a
policy can be stored as data and re-applied to a fresh copy of the model.

Besides the units, `analyze_model` records per conv/linear layer which unit drives its output and
its input channels and its MACs at batch 1: enough to estimate the MACs of any policy without
building the pruned model (`estimate_macs`), which the env uses to keep actions within a budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import torch
import torch_pruning as tp
from torch import nn

UNIT_KINDS: tuple[str, ...] = ("conv", "pointwise", "depthwise", "grouped", "linear")

Layer = nn.Conv2d | nn.Linear
"""The layers a unit can be rooted at (Torch-Pruning's root module types here)."""


def conv_pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's (height, width) attribute (kernel_size, stride, ...), which torch types as a tuple."""
    height, width = value
    return height, width


@dataclass(frozen=True)
class LayerCost:
    """A conv or linear layer: its MACs at batch 1 and the units that set its channel counts."""

    name: str
    macs: int
    params: int
    out_unit: str | None
    in_unit: str | None
    depthwise: bool


@dataclass(frozen=True)
class Unit:
    """One compressible unit (a dependency group), with the features the agent observes."""

    name: str
    index: int
    kind: str
    channels: int
    in_channels: int
    kernel: int
    stride: int
    macs: int
    params: int
    members: tuple[str, ...] = field(default_factory=tuple)
    block: str | None = None  # the skippable residual block holding every member, if any


@dataclass(frozen=True)
class ModelAnalysis:
    """Units of a model plus the per-layer costs that let a policy's cost be estimated."""

    units: tuple[Unit, ...]
    layers: tuple[LayerCost, ...]
    total_macs: int
    total_params: int
    output: OutputLayer | None = None

    def unit(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)


@dataclass(frozen=True)
class OutputLayer:
    """The conv or linear layer that produces the model's output, found by running the model.

    `name` is the last Conv2d/Linear executed whose output channels (features) equal the model's
    output width; its output side is never pruned. `one_to_one`: channel c of that layer drives
    output c and nothing else (checked by perturbing each channel), so the deployment's classes can
    be kept by keeping those channels (class-subset narrowing). A head followed by softmax, or by a
    layer mixing the outputs, is found but not one-to-one.
    """

    name: str
    one_to_one: bool


def find_output_layer(model: nn.Module, example: torch.Tensor, mapping: bool = True) -> OutputLayer | None:
    """The layer producing `model`'s output (see `OutputLayer`); None if no conv/linear does.

    `mapping=False` skips the one-to-one check (`one_to_one` is then False): enough to protect it."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[nn.Module, int]] = []

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim >= 2:
            calls.append((module, int(output.shape[1])))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    width = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    head = next((m for m, channels in reversed(calls) if channels == width), None)
    try:
        if head is None:
            return None
        return OutputLayer(names[head], mapping and _drives_one_output_each(model, head, example))
    finally:
        model.train(was_training)


def _drives_one_output_each(model: nn.Module, head: nn.Module, example: torch.Tensor) -> bool:
    """Whether nudging channel c of `head` (up, then down) changes output c and only output c."""
    channels = head.out_channels if isinstance(head, nn.Conv2d) else cast(nn.Linear, head).out_features
    batch = example[:1].expand(1 + 2 * channels, *example.shape[1:]).clone()
    batch = batch + 0.1 * torch.randn(1, *example.shape[1:], generator=torch.Generator().manual_seed(0))

    def nudge(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        scale = 10.0 * (1.0 + float(output[0].abs().max()))
        for c in range(channels):
            output[1 + 2 * c, c] += scale
            output[2 + 2 * c, c] -= scale
        return output

    handle = head.register_forward_hook(nudge)
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception:  # noqa: BLE001 - a model that only runs at batch 1: no mapping can be shown
        return False
    finally:
        handle.remove()
    changed = (out[1:] - out[:1]).abs() > 1e-4 * (1.0 + out[:1].abs())
    for c in range(channels):
        moved = changed[2 * c] | changed[2 * c + 1]
        if not moved[c] or moved.sum() != 1:
            return False
    return True


def output_modules(model: nn.Module, output: OutputLayer | None) -> list[nn.Module]:
    """The module of `output` in `model` (a copy of the analysed model): what pruning must not narrow."""
    if output is None:
        return []
    try:
        return [model.get_submodule(output.name)]
    except AttributeError:  # replaced (e.g. factorized) since: nothing of it to protect by that name
        return []


def build_dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def pruning_groups(model: nn.Module, graph: tp.DependencyGraph, protected: list[nn.Module]) -> list[tp.Group]:
    """Groups whose channels can be pruned, in the order Torch-Pruning's pruner visits them."""
    groups = graph.get_all_groups(ignored_layers=protected, root_module_types=[nn.Conv2d, nn.Linear])
    return [g for g in groups if _out_channels(g[0].dep.target.module) > 1]


def analyze_model(model: nn.Module, example: torch.Tensor, projection_skips: bool = False) -> ModelAnalysis:
    """Find the units of `model` (not modified) and the MACs of each of its layers. A unit's
    `block` is the skippable residual block holding it; a projection block's only with
    `projection_skips` (search.skip_projection)."""
    names = {module: name for name, module in model.named_modules()}
    costs = _layer_macs(model, example)
    graph = build_dependency_graph(model, example)
    output = find_output_layer(model, example, mapping=False)  # which layer, not the mapping: an episode's hot path
    out_unit: dict[str, str] = {}
    in_unit: dict[str, str] = {}
    units: list[Unit] = []
    for index, group in enumerate(pruning_groups(model, graph, output_modules(model, output))):
        root = group[0].dep.target.module
        root_name = names[root]
        members: list[str] = []
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            name = names[module]
            if graph.is_out_channel_pruning_fn(dep.handler):
                out_unit[name] = root_name
                if _is_depthwise(module):
                    in_unit[name] = root_name
            else:
                in_unit[name] = root_name
            members.append(name)
        unit = _make_unit(root_name, index, root, members, costs)
        units.append(replace(unit, block=_enclosing_block(model, members, projection_skips)))
    order = {name: i for i, name in enumerate(costs)}
    units.sort(key=lambda u: order.get(u.name, len(order)))
    units = [replace(u, index=i) for i, u in enumerate(units)]
    layers = tuple(
        LayerCost(
            name=name,
            macs=macs,
            params=params,
            out_unit=out_unit.get(name),
            in_unit=in_unit.get(name),
            depthwise=_is_depthwise(dict(model.named_modules())[name]),
        )
        for name, (macs, params) in costs.items()
    )
    total_params = sum(p.numel() for p in model.parameters())
    return ModelAnalysis(tuple(units), layers, sum(c.macs for c in layers), total_params, output)


def estimate_macs(
    analysis: ModelAnalysis, keep: Mapping[str, float], lowrank: Mapping[str, float] | None = None
) -> float:
    """MACs after keeping `keep[unit]` of each unit's channels and factorizing `lowrank` layers.

    A layer factorized at rank ratio r is counted at r of its cost (SVD/Tucker factors at ratio r
    of the largest useful rank cost about r of the layer).
    """
    return _estimate(analysis, keep, "macs", lowrank or {})


def estimate_params(
    analysis: ModelAnalysis, keep: Mapping[str, float], lowrank: Mapping[str, float] | None = None
) -> float:
    """Conv/linear parameters after keeping `keep[unit]` of each unit's channels."""
    return _estimate(analysis, keep, "params", lowrank or {})


def _estimate(analysis: ModelAnalysis, keep: Mapping[str, float], attr: str, lowrank: Mapping[str, float]) -> float:
    total = 0.0
    for layer in analysis.layers:
        out_keep = keep.get(layer.out_unit, 1.0) if layer.out_unit else 1.0
        in_keep = keep.get(layer.in_unit, 1.0) if layer.in_unit else 1.0
        factor = out_keep if layer.depthwise else out_keep * in_keep
        total += getattr(layer, attr) * factor * lowrank.get(layer.name, 1.0)
    return total


def unit_macs(analysis: ModelAnalysis, unit: str) -> int:
    """MACs of every layer whose input or output channels the unit controls."""
    return sum(
        layer.macs for layer in analysis.layers if unit in (layer.out_unit, layer.in_unit)
    )


def _make_unit(
    name: str, index: int, root: Layer, members: Sequence[str], costs: Mapping
) -> Unit:
    macs = sum(costs[m][0] for m in members if m in costs)
    params = sum(costs[m][1] for m in members if m in costs)
    return Unit(
        name=name,
        index=index,
        kind=_kind(root),
        channels=_out_channels(root),
        in_channels=_in_channels(root),
        kernel=_kernel(root),
        stride=_stride(root),
        macs=macs,
        params=params,
        members=tuple(members),
    )


def _layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """MACs and parameter count of every Conv2d / Linear at batch 1, in forward order."""
    costs: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            params = sum(p.numel() for p in module.parameters(recurse=False))
            if isinstance(module, nn.Conv2d):
                weight_per_out = module.weight[0].numel()
                macs = output[0].numel() * weight_per_out
            else:  # hooks are registered on Conv2d and Linear layers only
                linear = cast(nn.Linear, module)
                macs = linear.in_features * linear.out_features
            costs[name] = (int(macs), int(params))

        return record

    run_once(model, example, {m: hook(n) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))})
    return costs


def run_once(model: nn.Module, example: torch.Tensor, hooks: Mapping[nn.Module, Callable] | None = None) -> object:
    """`model`'s output on `example[:1]` in eval mode without gradients, each module of `hooks`
    calling its forward hook; the model's mode is restored and the hooks removed after."""
    handles = [module.register_forward_hook(hook) for module, hook in (hooks or {}).items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def skippable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Residual blocks that declare `skippable = True`: removable whole (an identity shortcut), or
    down to their shortcut (`projection = True`: a strided 1x1 conv, kept by `skip_path()`)."""
    return {name: m for name, m in model.named_modules() if getattr(m, "skippable", False) is True}


def _enclosing_block(model: nn.Module, members: Sequence[str], projection: bool) -> str | None:
    blocks = {n: b for n, b in skippable_blocks(model).items() if projection or not getattr(b, "projection", False)}
    for name in sorted(blocks, key=len, reverse=True):
        if members and all(m.startswith(name + ".") for m in members):
            return name
    return None


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _kind(module: Layer) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_depthwise(module):
        return "depthwise"
    if module.groups > 1:
        return "grouped"
    return "pointwise" if module.kernel_size == (1, 1) else "conv"


def _out_channels(module: Layer) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _in_channels(module: Layer) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _kernel(module: Layer) -> int:
    return 1 if isinstance(module, nn.Linear) else int(module.kernel_size[0])


def _stride(module: Layer) -> int:
    return 1 if isinstance(module, nn.Linear) else int(module.stride[0])


def unit_widths(model: nn.Module, analysis: ModelAnalysis) -> dict[str, int]:
    """Output channels (or features) of every unit's root layer in ``model``, by unit name."""
    modules = dict(model.named_modules())
    out: dict[str, int] = {}
    for unit in analysis.units:
        module = modules[unit.name]
        out[unit.name] = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    return out
