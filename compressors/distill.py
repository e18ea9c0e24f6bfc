"""Recovery after compression: BatchNorm recalibration and knowledge distillation.

The teacher is the original model. Its logits on the training split are computed once
(`TeacherLogits`) and reused by every episode's short distillation and by the final, longer one;
with no data augmentation they are exact, and they save one teacher forward per step.
For a class-subset deployment the logits are restricted to the subset's columns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeltailor.common.cores import working
from modeltailor.compressors.compute import autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """How long and how hard to distil. `steps` counts optimizer steps (mini-batches)."""

    steps: int = 100
    batch_size: int = 64
    lr: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.7
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"  # torch device the student trains on (it comes back on the CPU)
    precision: str = "fp32"  # fp32 or bf16 (autocast of the forward pass; the loss stays float32)
    recalibrate: bool = True
    """Re-estimate BatchNorm statistics at the final weights (False only to measure what that
    changes: bench/episode_noise.py)."""


class TeacherLogits:
    """The teacher's logits on a fixed input tensor, computed once in eval mode."""

    def __init__(self, teacher: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
        self.inputs = inputs
        self.logits = predict_logits(teacher, inputs, batch_size)


def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of `model` on `inputs` in eval mode; the model's train/eval flag is restored."""
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for i in range(0, len(inputs), batch_size):
            with torch.no_grad(), working():
                chunks.append(model(inputs[i : i + batch_size]))
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def accuracy(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None
) -> float:
    """Top-1 accuracy; with `classes`, the prediction is restricted to those logit columns."""
    logits = predict_logits(model, inputs)
    return accuracy_from_logits(logits, labels, classes)


def accuracy_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None
) -> float:
    if classes is not None and logits.shape[1] != len(classes):
        index = torch.as_tensor(list(classes))
        predicted = index[logits[:, index].argmax(dim=1)]
    else:
        predicted = logits.argmax(dim=1)
    return float((predicted == labels).float().mean())


def recalibrate_batchnorm(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 128, max_samples: int = 512
) -> None:
    """Re-estimate every BatchNorm's running statistics on the first `max_samples` of `inputs`."""
    inputs = inputs[:max_samples]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                model(inputs[i : i + batch_size])
    finally:
        model.train(was_training)
        for m, momentum in saved:
            m.momentum = momentum


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy."""
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.softmax(teacher / temperature, dim=1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student, labels)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def distill(
    student: nn.Module,
    teacher: TeacherLogits,
    labels: torch.Tensor,
    config: DistillConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Fine-tune `student` in place towards the teacher's logits; returns it in eval mode, on the
    CPU, its BatchNorm statistics re-estimated at the final weights (`recalibrate_batchnorm`).

    `labels` index the student's outputs (already remapped for a narrowed head).
    """
    if config.steps <= 0:
        return student.eval()
    generator = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)
    student.to(device)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps))
    )
    student.train()
    n = len(teacher.inputs)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(config.steps):
        if cursor + config.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        with working():
            with autocast(device, config.precision):
                logits = student(teacher.inputs[idx].to(device))
            loss = distillation_loss(
                logits.float(), teacher.logits[idx].to(device), labels[idx].to(device),
                config.temperature, config.alpha,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_step is not None:
            on_step(step, loss.item())
    student.cpu()
    # The running statistics trail the weights: an EMA over the last few steps of weights that were
    # still moving. Re-estimated at the final weights, a short recovery's accuracy is its model's
    # (bench/episode_noise.py measures the difference).
    if config.recalibrate:
        recalibrate_batchnorm(student, teacher.inputs)
    return student.eval()
