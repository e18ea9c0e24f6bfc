"""Teachers: load a bring-your-own model, or train a zoo model once and cache it.

The cache key is the model, its kwargs, the data set, input size, split seed and training settings,
so `modeltailor search` on the embedded default trains the teacher on first use only. Processes
filling the cache at once take turns (an inter-process lock around check, train, save): the second
waits, then loads what the first trained. The file is written atomically (temporary file, rename).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeltailor.compute import autocast, torch_device
from modeltailor.cores import working
from modeltailor.datasets import DataSplits
from modeltailor.experiments.config import ComputeConfig, DeploymentConfig, TrainConfig
from modeltailor.models import build_model, load_factory, load_weights
from modeltailor.storage import atomic_write, cache_dir, locked

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]


def build_student_shape(config: DeploymentConfig, splits: DataSplits) -> nn.Module:
    """An untrained instance of the configured architecture, sized for the data."""
    m = config.model
    if m.factory:
        return load_factory(m.factory, m.kwargs)
    return build_model(
        m.name or "resnet20",
        in_channels=splits.in_channels,
        input_size=splits.input_size,
        num_classes=splits.num_classes,
        **m.kwargs,
    )


def teacher_cache_path(config: DeploymentConfig) -> Path:
    key = {
        "model": config.model.name,
        "kwargs": config.model.kwargs,
        "data": config.data.name,
        "root": str(config.data.root) if config.data.root else None,
        "input_size": config.data.input_size,
        "split_seed": config.data.seed,
        "train": config.train.model_dump(),
    }
    if config.compute.precision != "fp32":  # the device is not part of the key: one recipe, one teacher
        key["precision"] = config.compute.precision
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "teachers" / f"{config.model.name}-{config.data.name}-{digest}.pt"


def load_teacher(
    config: DeploymentConfig, splits: DataSplits, progress: ProgressFn | None = None
) -> tuple[nn.Module, str]:
    """The teacher in eval mode and where it came from (weights file, cache, or trained now)."""
    model = build_student_shape(config, splits)
    if config.model.weights is not None:
        return load_weights(model, config.model.weights).eval(), str(config.model.weights)
    if config.model.factory:
        return model.eval(), "factory (no weights file)"
    path = teacher_cache_path(config)
    if path.is_file():
        return load_weights(model, path).eval(), str(path)
    with locked(path):  # another process may be training this very teacher: wait for it
        if path.is_file():
            return load_weights(model, path).eval(), str(path)
        train_model(model, splits, config.train, progress, config.compute)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write(path, buffer.getvalue())
    return model.eval(), f"trained now, cached at {path}"


def train_model(
    model: nn.Module,
    splits: DataSplits,
    config: TrainConfig,
    progress: ProgressFn | None = None,
    compute: ComputeConfig | None = None,
) -> nn.Module:
    """SGD + one-cycle schedule + augmentation; returns the model in eval mode, on the CPU.

    Augmentation: natural images (`splits.flip`) get the standard CIFAR recipe, a random crop with
    1/8 of the image size as zero padding and a horizontal flip, drawn per image; others (digits)
    get one random shift per batch.
    """
    compute = compute or ComputeConfig()
    device = torch_device(compute.device)
    torch.manual_seed(config.seed)
    x, y = splits.train.tensors
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total = config.epochs * steps_per_epoch
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            batch = crop_flip(x[idx], generator) if splits.flip else random_shift(x[idx], generator)
            with working():
                with autocast(device, compute.precision):
                    loss = F.cross_entropy(model(batch.to(device)), y[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        if progress is not None:
            progress(epoch + 1, config.epochs, loss.item())
    return model.cpu().eval()


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image (pad ~1/8 of its size) and a coin-flip mirror."""
    n, size = len(x), x.shape[-1]
    pad = pad if pad is not None else max(1, size // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    span = torch.arange(size)
    rows = (dy[:, None] + span)[:, None, :, None]  # (n, 1, size, 1)
    cols = (dx[:, None] + span)[:, None, None, :]  # (n, 1, 1, size)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int | None = None) -> torch.Tensor:
    """Shift each batch by up to ~1/8 of the image size (zero padding): cheap augmentation."""
    size = x.shape[-1]
    pad = max_shift if max_shift is not None else max(1, size // 8)
    dx, dy = (int(v) for v in torch.randint(-pad, pad + 1, (2,), generator=generator))
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded[..., pad + dy : pad + dy + size, pad + dx : pad + dx + size]
