"""Feature-map resolution: the model keeps its input size, its first convolution runs at a larger
stride, and every later layer works on feature maps `factor` times smaller in each dimension.

Once-for-All's strongest lever (the input resolution) without changing what the deployment feeds
the model: a 32x32 image still goes in, and with `factor` 2 every layer after the first
convolution does about a quarter of its work. The first convolution is the first `nn.Conv2d` the
model runs (found by running it), so any model whose later layers accept smaller maps (ending in
global pooling, as every zoo model does) can use it; one that cannot (a flatten to a fixed-size
linear layer) is refused with the reason.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from modeltailor.compressors.policy import DOWNSAMPLE
from modeltailor.compressors.units import conv_pair, run_once
from modeltailor.errors import CompressionError


def first_conv(model: nn.Module, example: torch.Tensor) -> str:
    """Dotted name of the first `nn.Conv2d` `model` runs on `example` (CompressionError if none)."""
    names = {module: name for name, module in model.named_modules()}
    order: list[str] = []

    def record(module: nn.Module, _inputs, _output) -> None:
        order.append(names[module])

    run_once(model, example, {m: record for m in model.modules() if isinstance(m, nn.Conv2d)})
    if not order:
        raise CompressionError("downsampling needs a convolution: the model runs no nn.Conv2d")
    return order[0]


def set_downsample(model: nn.Module, factor: int, example: torch.Tensor) -> nn.Module:
    """`model` itself, its first convolution's stride multiplied by `factor` (in place), checked to
    still give an output of the same shape on `example`."""
    if factor not in DOWNSAMPLE:
        raise CompressionError(f"downsample {factor!r} is not one of {', '.join(map(str, DOWNSAMPLE))}")
    if factor == 1:
        return model
    name = first_conv(model, example)
    conv = model.get_submodule(name)
    assert isinstance(conv, nn.Conv2d)
    height, width = conv_pair(conv.stride)
    before = _output_shape(model, example)
    conv.stride = (height * factor, width * factor)
    try:
        after = _output_shape(model, example)
    except RuntimeError as exc:
        raise CompressionError(
            f"the model cannot run with its first convolution '{name}' at stride {height * factor}: "
            f"{str(exc).splitlines()[0][:160]} (search.downsample needs later layers that accept smaller maps, "
            "e.g. global pooling before the classifier)"
        ) from None
    if after != before:
        raise CompressionError(
            f"with its first convolution '{name}' at stride {height * factor} the model's output is {list(after)}, "
            f"not {list(before)}: search.downsample needs an output whose shape does not depend on the maps' size"
        )
    return model


def downsampled(model: nn.Module, factor: int, example: torch.Tensor) -> nn.Module:
    """A copy of `model` with its first convolution at `factor` times its stride; `model` untouched."""
    return model if factor == 1 else set_downsample(copy.deepcopy(model), factor, example)


def _output_shape(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    out = run_once(model, example)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()
