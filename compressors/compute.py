"""Where torch work runs (training, distillation): ``device`` cpu|cuda|auto and ``precision`` fp32|bf16.

This is the torch side only. Latency is always measured by ONNX Runtime on the deployment's device
profile, whatever trains the model. ``auto`` picks CUDA when torch sees a GPU, else the CPU.
``bf16`` runs forward and backward passes under ``torch.autocast`` in bfloat16 (weights and the
optimizer stay float32): about 1.7x faster training on CPUs with AVX-512 BF16, and the usual mixed
precision on GPUs. Evaluation (accuracy) always runs in float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

from modeltailor.errors import ConfigError

TorchDevice = Literal["auto", "cpu", "cuda"]
"""Where torch runs (compute.device); not a device profile, which says where latency is measured."""
Precision = Literal["fp32", "bf16"]


def torch_device(name: str) -> torch.device:
    """The torch device for a setting; a ConfigError for cuda on a machine without a usable GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "compute.device is cuda but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}): use compute.device auto or cpu"
            )
        return torch.device("cuda")
    raise ConfigError(f"compute.device must be auto, cpu or cuda, got {name!r}")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """A context in which forward passes run at `precision` on `device` (fp32: no change)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ConfigError(f"compute.precision must be fp32 or bf16, got {precision!r}")
