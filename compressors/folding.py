"""Layer folding (DeepRebirth's "streamline slimming"): merge non-tensor layers into convolutions.

``fold_batchnorm`` folds every BatchNorm2d that directly follows a Conv2d in the same
``nn.Sequential`` (the zoo's ConvBNReLU) into the conv's weight and bias, and puts an
``nn.Identity`` in the BatchNorm's place, so module names (and policies) stay valid. The result
equals the original in eval mode.

The TorchScript ONNX exporter already does this fold in eval mode, and ONNX Runtime's graph
optimizer does the rest of DeepRebirth's merges at load time (Conv+BatchNorm at "basic",
Conv+Relu / Conv+Add+Relu into ``FusedConv`` and the NCHWc layout at "all").
``modeltailor.experiments.tools.fold_report`` measures what each of these steps changes: node counts,
latency on a device, memory.

``merge_parallel_branches`` (DeepRebirth's branch merging) merges 1x1 convs that read the same
tensor (the ShuffleNet heads) into one wider conv, with torch.fx.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.units import conv_pair

ELEMENTWISE: tuple[type[nn.Module], ...] = (nn.Identity, nn.ReLU)


def _foldable(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    return (
        bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair of a Sequential folded."""
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = sequential._modules[first], sequential._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and _foldable(conv, bn):
                sequential._modules[first] = fuse_conv_bn_eval(conv, bn)
                sequential._modules[second] = nn.Identity()
    return folded


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def export_unfolded(model: nn.Module, input_shape: tuple[int, ...], opset: int = 17) -> bytes:
    """ONNX export that keeps every BatchNormalization node (no eval-mode fold, no constant folding)."""
    return export_onnx(model, input_shape, opset=opset, keep_batchnorm=True)


# ------------------------------------------------------------------------ parallel branch merging


def _conv_key(conv: nn.Conv2d) -> tuple:
    return (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.padding_mode, conv.bias is not None)


def _target(node: fx.Node) -> str:
    """The qualified name of the module a call_module node calls (fx gives those a string target)."""
    assert isinstance(node.target, str), f"{node.op} node '{node.name}' names no module"
    return node.target


def _siblings(graph_module: fx.GraphModule) -> list[list[fx.Node]]:
    """Groups of >= 2 call_module Conv2d nodes (groups=1) that read the same value."""
    modules = dict(graph_module.named_modules())
    groups: dict[tuple, list[fx.Node]] = {}
    for node in graph_module.graph.nodes:
        conv = modules.get(_target(node)) if node.op == "call_module" else None
        if isinstance(conv, nn.Conv2d) and conv.groups == 1 and len(node.args) == 1 and not node.kwargs:
            groups.setdefault((node.args[0], _conv_key(conv)), []).append(node)
    return [nodes for nodes in groups.values() if len(nodes) > 1]


def _merged_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    first = convs[0]
    padding = first.padding if isinstance(first.padding, str) else conv_pair(first.padding)
    merged = nn.Conv2d(
        first.in_channels, sum(c.out_channels for c in convs), conv_pair(first.kernel_size),
        stride=conv_pair(first.stride), padding=padding, dilation=conv_pair(first.dilation),
        bias=first.bias is not None, padding_mode=first.padding_mode,
    )
    with torch.no_grad():
        merged.weight.copy_(torch.cat([c.weight for c in convs]))
        if merged.bias is not None:  # siblings share _conv_key, so every one has a bias
            merged.bias.copy_(torch.cat([c.bias for c in convs if c.bias is not None]))
    return merged


def _elementwise_chain(modules: Mapping[str, nn.Module], node: fx.Node) -> list[fx.Node]:
    """The Identity / ReLU modules that ``node``'s output alone flows through, in order."""
    chain: list[fx.Node] = []
    while len(node.users) == 1:
        user = next(iter(node.users))
        module = modules.get(_target(user)) if user.op == "call_module" else None
        if not isinstance(module, ELEMENTWISE) or user.args != (node,) or user.kwargs:
            break
        chain.append(user)
        node = user
    return chain


def _shared_depth(modules: Mapping[str, nn.Module], chains: Sequence[list[fx.Node]]) -> int:
    """How many leading element-wise modules every chain has in common (by type)."""
    depth = 0
    while all(len(c) > depth for c in chains):
        kinds = {type(modules[_target(c[depth])]) for c in chains}
        if len(kinds) > 1:
            break
        depth += 1
    return depth


def _merge_siblings(graph_module: fx.GraphModule, nodes: Sequence[fx.Node], name: str) -> None:
    """Replace sibling convs (and their shared trailing ReLU) by one conv and channel slices."""
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph
    convs = [modules[_target(n)] for n in nodes]
    chains = [_elementwise_chain(modules, n) for n in nodes]
    depth = _shared_depth(modules, chains)
    graph_module.add_submodule(name, _merged_conv(convs))
    source = nodes[0].args[0]
    assert isinstance(source, fx.Node), "sibling convs read a value of the graph"
    with graph.inserting_after(source):
        out = graph.call_module(name, (source,))
    for step in chains[0][:depth]:
        with graph.inserting_after(out):
            out = graph.call_module(_target(step), (out,))
    start = 0
    for node, conv, chain in zip(nodes, convs, chains, strict=True):
        branch = [node, *chain[:depth]]
        with graph.inserting_after(out):
            part = graph.call_function(
                operator.getitem, (out, (slice(None), slice(start, start + conv.out_channels)))
            )
        branch[-1].replace_all_uses_with(part)
        for old in reversed(branch):
            graph.erase_node(old)
        start += conv.out_channels


def merge_parallel_branches(model: nn.Module) -> fx.GraphModule:
    """Merge convs with the same input and the same kernel/stride/padding into one wider conv.

    Each original output becomes a channel slice of the merged conv's output; Identity / ReLU
    modules that every branch applies right after its conv are applied once, before the slices
    (so ONNX Runtime can still fuse the ReLU into the conv). BatchNorm is folded first
    (``fold_batchnorm``). Returns a ``torch.fx.GraphModule`` (a deployment form, for export).
    """
    graph_module = fx.symbolic_trace(fold_batchnorm(model))
    for index, nodes in enumerate(_siblings(graph_module)):
        _merge_siblings(graph_module, nodes, f"merged_conv_{index}")
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module.eval()
