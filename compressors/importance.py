"""Activation-based filter importance (DropNet) for Torch-Pruning.

DropNet (Tan & Lim, 2020) removes the filters whose mean post-activation value over the training
data is lowest: a filter that rarely fires contributes little downstream. ``ActivationImportance``
scores each channel of a Torch-Pruning group that way, so it drops into ``tp.pruner.BasePruner``
(and into ``ChannelPruningCompressor``'s ``IMPORTANCES`` table) like any built-in criterion.

The activation of a conv/linear layer's channel is read at the layer's activation site: the ReLU
(or other activation module) that follows it in the same ``nn.Sequential``, after an optional
BatchNorm (the zoo's Conv-BN-ReLU); where there is none (a linear projection, a residual branch's
last conv) it is the layer's output (after its BatchNorm) passed through ReLU. Activations are
recorded once per model with forward hooks, in eval mode and without gradients, over ``inputs``
split into ``batches`` batches, and cached per module.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from modeltailor.compressors.units import Layer

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.ELU, nn.Mish,
)
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def _sequential_sites(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, bool]]:
    """(layer, module to hook, whether to apply ReLU to its output) for layers inside Sequentials."""
    for sequential in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        children = list(sequential.children())
        for index, layer in enumerate(children):
            if not isinstance(layer, LAYERS):
                continue
            site, rest = layer, children[index + 1 :]
            if rest and isinstance(rest[0], NORMS):
                site, rest = rest[0], rest[1:]
            if rest and isinstance(rest[0], ACTIVATIONS):
                yield layer, rest[0], False
            else:
                yield layer, site, True


def activation_sites(model: nn.Module) -> dict[nn.Module, tuple[nn.Module, bool]]:
    """For every Conv2d / Linear: the module whose output is its activation, and whether to ReLU it."""
    sites = {layer: (site, relu) for layer, site, relu in _sequential_sites(model)}
    for module in model.modules():
        if isinstance(module, LAYERS) and module not in sites:
            sites[module] = (module, True)
    return sites


def channel_means(output: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-channel sum (channel axis 1) over every other axis, and the count of summed values."""
    flat = output.detach().transpose(0, 1).reshape(output.shape[1], -1).float()
    return flat.sum(dim=1), flat.shape[1]


@torch.no_grad()
def mean_activations(
    model: nn.Module, inputs: torch.Tensor, batches: int = 4
) -> dict[nn.Module, torch.Tensor]:
    """Mean post-activation value of every channel of every Conv2d / Linear of ``model``."""
    sums: dict[nn.Module, list] = {}
    handles = []

    def hook(layer: nn.Module, relu: bool):
        def record(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            total, count = channel_means(F.relu(output) if relu else output)
            entry = sums.setdefault(layer, [torch.zeros_like(total), 0])
            entry[0] += total
            entry[1] += count

        return record

    for layer, (site, relu) in activation_sites(model).items():
        handles.append(site.register_forward_hook(hook(layer, relu)))
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for chunk in torch.chunk(inputs, max(1, min(batches, len(inputs)))):
            model(chunk.to(device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {layer: total / max(1, count) for layer, (total, count) in sums.items()}


class ActivationImportance(tp.importance.GroupMagnitudeImportance):
    """DropNet: a channel's importance is its mean post-activation value on training inputs.

    Per group, the scores of every layer whose OUTPUT channels the group prunes are averaged
    (``group_reduction="mean"``, mapped to the root's channels through ``root_idxs`` exactly as
    ``GroupMagnitudeImportance`` does). No normalization by default: raw mean activations are
    comparable across layers, which is what DropNet's global ranking uses.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        batches: int = 4,
        group_reduction: str = "mean",
        normalizer: str | None = None,
    ) -> None:
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer)
        self.inputs = inputs.detach()
        self.batches = batches
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def activations(self, model: nn.Module) -> dict[nn.Module, torch.Tensor]:
        """Mean activations of ``model``, recorded once; recomputed if a layer's width changed."""
        cached = self._cache.get(model)
        if cached is None or any(_width(layer) != len(v) for layer, v in cached.items()):
            cached = mean_activations(model, self.inputs, self.batches)
            self._cache[model] = cached
        return cached

    def reset(self) -> None:
        """Forget the recorded activations (e.g. after the model's weights changed)."""
        self._cache = weakref.WeakKeyDictionary()

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        graph = getattr(group, "_DG", None)
        if graph is None:
            raise ValueError("ActivationImportance needs a group made by a tp.DependencyGraph")
        means = self.activations(graph.model)
        scores, idxs_list = [], []
        for item in group:
            layer, handler = item.dep.target.module, item.dep.handler
            if layer not in means or not graph.is_out_channel_pruning_fn(handler):
                continue
            scores.append(means[layer][list(item.idxs)])
            idxs_list.append(item.root_idxs)
        if not scores:
            return None
        return self._normalize(self._reduce(scores, idxs_list), self.normalizer)


def _width(layer: Layer) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


class GradientTaylorImportance(tp.importance.GroupTaylorImportance):
    """Torch-Pruning's first-order Taylor importance |w * dL/dw|, with the backward pass built in.

    ``GroupTaylorImportance`` reads ``weight.grad``: this wrapper runs one forward/backward of
    cross-entropy on ``(inputs, targets)`` per model (cached like ``ActivationImportance``)
    before scoring, so a pruner can use it without a training loop around it.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        self.inputs, self.targets = inputs.detach(), targets.detach()
        self._done: weakref.WeakSet = weakref.WeakSet()

    def _backward(self, model: nn.Module) -> None:
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            F.cross_entropy(model(self.inputs), self.targets).backward()
        model.train(was_training)
        self._done.add(model)

    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        model = group._DG.model
        if model not in self._done:
            self._backward(model)
        return super().__call__(group)
