"""Narrow the classifier to a deployment's classes (the data-driven compression paper's key idea).

The new head keeps only the rows of the subset's classes, so its outputs equal the original
model's logits restricted to those classes, in the order given: a physically smaller head whose
predictions are the teacher's predictions restricted to the subset.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from modeltailor.compressors.units import classifier_layers
from modeltailor.errors import CompressionError


def narrow_classifier(model: nn.Module, classes: Sequence[int]) -> nn.Module:
    """A copy of `model` whose final Linear outputs only `classes`; `model` is untouched."""
    narrowed = copy.deepcopy(model)
    heads = classifier_layers(narrowed)
    if not heads or not isinstance(heads[0], nn.Linear):
        raise CompressionError(
            "cannot narrow the head: the model has no `classifier` Linear layer (or final nn.Linear)"
        )
    head = heads[0]
    if max(classes) >= head.out_features:
        raise CompressionError(
            f"class id {max(classes)} is beyond the model's {head.out_features} outputs"
        )
    index = torch.as_tensor(list(classes))
    new = nn.Linear(head.in_features, len(classes), bias=head.bias is not None)
    with torch.no_grad():
        new.weight.copy_(head.weight[index])
        if head.bias is not None:
            new.bias.copy_(head.bias[index])
    _replace_module(narrowed, head, new)
    return narrowed


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise CompressionError("could not locate the classifier inside the model")
