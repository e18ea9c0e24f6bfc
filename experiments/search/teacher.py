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

from modeltailor.common.cores import working
from modeltailor.common.storage import atomic_write, cache_dir, locked
from modeltailor.compressors.compute import autocast, torch_device
from modeltailor.datasets import DataSplits
from modeltailor.errors import DataError, ModelLoadError, ModelTailorError, first_line
from modeltailor.experiments.spec.deployment import ComputeConfig, DeploymentConfig, TrainConfig
from modeltailor.models import build_model, load_factory, load_weights

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
        **({"factory": config.model.factory} if config.model.factory else {}),
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
    return cache_dir() / "teachers" / f"{model_label(config)}-{config.data.name}-{digest}.pt"


def model_label(config: DeploymentConfig) -> str:
    """A file-name-safe name of the configured model: the zoo name, or the factory's name."""
    if config.model.factory:
        name = config.model.factory.rpartition(":")[2]
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "factory"
    return config.model.name or "resnet20"


def load_teacher(
    config: DeploymentConfig, splits: DataSplits, progress: ProgressFn | None = None, train: bool | None = None
) -> tuple[nn.Module, str]:
    """The teacher in eval mode and where it came from (weights file, cache, or trained now).

    Without `model.weights`, the teacher is the cached one this config trained; when there is none
    a zoo model is trained now, a factory only when `train` (`modeltailor train`): a search never
    silently runs on an untrained network.
    """
    model = build_student_shape(config, splits)
    check_outputs(model, splits)
    if config.model.weights is not None:
        return load_weights(model, config.model.weights).eval(), str(config.model.weights)
    path = teacher_cache_path(config)
    if path.is_file():
        return load_weights(model, path).eval(), str(path)
    if config.model.factory and not train:
        raise ModelLoadError(
            f"model factory '{config.model.factory}' has no weights: train it on the deployment's data with "
            "`modeltailor train --config <this file>` (cached for every later search), or set model.weights"
        )
    with locked(path):  # another process may be training this very teacher: wait for it
        if path.is_file():
            return load_weights(model, path).eval(), str(path)
        try:
            train_model(model, splits, config.train, progress, config.compute)
        except (KeyboardInterrupt, ModelTailorError):
            raise
        except Exception as exc:  # noqa: BLE001 - a user model failing in training (shape, dtype, ...)
            raise ModelLoadError(f"training the model failed: {first_line(exc, 200)}") from None
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write(path, buffer.getvalue())
    return model.eval(), f"trained now, cached at {path}"


def check_outputs(model: nn.Module, splits: DataSplits) -> None:
    """ModelLoadError/DataError unless `model` maps one sample of the data to one logit per class."""
    shape = (1, splits.in_channels, splits.input_size, splits.input_size)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - a user model failing on the data's shape
        raise ModelLoadError(f"the model fails on input of shape {shape}: {first_line(exc, 200)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(
            f"the model returns a {type(out).__name__}, not a tensor of logits: return the logits alone"
        )
    if out.ndim != 2 or out.shape[1] != splits.num_classes:
        raise DataError(
            f"the model outputs shape {tuple(out.shape)} but data set '{splits.name}' has "
            f"{splits.num_classes} classes: build the model with num_classes={splits.num_classes}"
        )


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
