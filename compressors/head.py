"""Narrow the output layer to a deployment's classes (the data-driven compression paper's key idea).

The output layer is found by running the model (`find_output_layer`): a Linear, a 1x1 (or any
ungrouped) convolution followed by pooling and flatten, whatever produces the logits, as long as
its channel c drives output c alone. The new layer keeps only the subset's channels, in the order
given, so the narrowed model's outputs equal the original's logits restricted to those classes
(checked on a random batch): a physically smaller head whose predictions are the teacher's
predictions restricted to the subset.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from modeltailor.compressors.units import find_output_layer
from modeltailor.errors import CompressionError


def narrow_classifier(model: nn.Module, classes: Sequence[int], example: torch.Tensor) -> nn.Module:
    """A copy of `model` whose output layer produces only `classes`; `model` is untouched."""
    output = find_output_layer(model, example)
    if output is None:
        raise CompressionError(
            "cannot keep only the deployment's classes: no conv or linear layer produces the model's "
            "output: drop `classes` or end the model with a Linear or 1x1 conv head"
        )
    if not output.one_to_one:
        raise CompressionError(
            f"cannot keep only the deployment's classes: the output layer '{output.name}' is followed by an "
            "op that mixes the outputs (e.g. softmax): drop `classes`, or return the head's logits"
        )
    narrowed = copy.deepcopy(model)
    head = narrowed.get_submodule(output.name)
    if not isinstance(head, (nn.Linear, nn.Conv2d)):
        raise CompressionError(f"cannot keep only the deployment's classes: '{output.name}' is not a conv or linear")
    width = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    if max(classes) >= width or min(classes) < 0:
        raise CompressionError(f"class id {max(classes)} is beyond the model's {width} outputs")
    narrowed.set_submodule(output.name, _keep_outputs(head, list(classes)))
    _check_restricted(model, narrowed, list(classes), example)
    return narrowed


def _keep_outputs(head: nn.Linear | nn.Conv2d, classes: list[int]) -> nn.Module:
    index = torch.as_tensor(classes)
    new: nn.Linear | nn.Conv2d
    if isinstance(head, nn.Linear):
        new = nn.Linear(head.in_features, len(classes), bias=head.bias is not None)
    elif head.groups == 1:
        new = copy.deepcopy(head)
        new.out_channels = len(classes)
    else:
        raise CompressionError(
            "cannot keep only the deployment's classes: the output layer is a grouped convolution: drop `classes`"
        )
    with torch.no_grad():
        new.weight = nn.Parameter(head.weight[index].clone())
        if head.bias is not None:
            new.bias = nn.Parameter(head.bias[index].clone())
    return new


def _check_restricted(model: nn.Module, narrowed: nn.Module, classes: list[int], example: torch.Tensor) -> None:
    x = torch.randn(2, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    was_training = model.training
    try:
        with torch.no_grad():
            expected = model.eval()(x)[:, classes]
            actual = narrowed.eval()(x)
    finally:
        model.train(was_training)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=1e-4, rtol=1e-4):
        raise CompressionError(
            "cannot keep only the deployment's classes: the narrowed model's outputs differ from the "
            "original's restricted to them: drop `classes`"
        )

