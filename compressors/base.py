"""The interface every compressor implements: a policy in, a new physically smaller model out."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from modeltailor.compressors.policy import Policy


class Compressor(Protocol):
    """Applies a policy to a model. Never mutates `model`; returns a new, smaller module."""

    name: str

    def apply(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module: ...
