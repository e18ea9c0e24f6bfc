"""A policy applied end to end: structure in torch, then (after recovery) the ONNX model to ship.

Order: skip blocks and prune channels (Torch-Pruning), run the first convolution at the policy's
`downsample` times its stride, factorize `lowrank` units (a factorized first convolution keeps
that stride), [recover in the caller], export to ONNX, quantize the `bits: 8` units with ONNX Runtime. When every unit is int8
the whole graph is quantized (adds and pooling too); a partial set quantizes only those layers,
which ONNX Runtime runs as int8 islands with layout changes around them (measured slower than
float on the 2-core dev machine: the agent has to learn that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from modeltailor.common.cores import working
from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.lowrank import LowRankCompressor, lowrank_candidates
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import ChannelPruningCompressor
from modeltailor.compressors.quantization import conv_node_names, quantize_layers, quantize_onnx
from modeltailor.compressors.resolution import set_downsample
from modeltailor.compressors.units import ModelAnalysis


@dataclass
class PolicyApplier:
    """Everything needed to turn a policy into a torch model and its ONNX export."""

    pruning: ChannelPruningCompressor = field(default_factory=ChannelPruningCompressor)
    lowrank: LowRankCompressor = field(default_factory=LowRankCompressor)
    name: str = "joint"

    def apply(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
        """The structurally compressed copy (skip, prune, downsample, low-rank); `model` is untouched."""
        with working():  # CPU work: not while a model is timed
            pruned = set_downsample(self.pruning.apply(model, policy, example), policy.downsample, example)
            ranks = policy.lowrank_ratios()
            return self.lowrank.apply_ranks(pruned, ranks, example) if ranks else pruned

    def to_onnx(
        self,
        model: nn.Module,
        policy: Policy,
        analysis: ModelAnalysis,
        input_shape: Sequence[int],
        calibration: torch.Tensor,
    ) -> bytes:
        """ONNX bytes of a (recovered) compressed model, with the policy's int8 units quantized."""
        onnx_bytes = export_onnx(model, tuple(input_shape))
        quantized = set(policy.quantized())
        if not quantized:
            return onnx_bytes
        calib = calibration.detach().cpu().numpy().astype(np.float32)
        if quantized >= {u.name for u in analysis.units} - set(policy.skipped()):
            return quantize_onnx(onnx_bytes, calib)
        layers = _int8_layers(onnx_bytes, analysis, quantized)
        return quantize_layers(onnx_bytes, calib, layers) if layers else onnx_bytes


def _int8_layers(onnx_bytes: bytes, analysis: ModelAnalysis, units: set[str]) -> list[str]:
    """Torch names of the Conv/Gemm layers whose output channels belong to `units` (factors too)."""
    owned = {layer.name for layer in analysis.layers if layer.out_unit in units}
    present = conv_node_names(onnx_bytes)
    return [name for name in present if any(name == o or name.startswith(o + ".") for o in owned)]


def lowrank_units(analysis: ModelAnalysis, model: nn.Module, round_to: int) -> set[str]:
    """Units whose root layer a low-rank factorization can shrink (at a 0.5 rank ratio)."""
    exclude = [analysis.output.name] if analysis.output is not None else []
    candidates = lowrank_candidates(model, ratio=0.5, round_to=round_to, exclude=exclude)
    return {u.name for u in analysis.units if u.name in candidates}
