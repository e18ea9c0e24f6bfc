"""`modeltailor apply`: rebuild a compressed model from the original model and a policy file.

The policy is data (unit names, methods, keep ratios, plus the compressor settings in its meta);
re-applying it to the original model gives the same architecture, and the search's `model.pt`
(a plain state dict) then gives the same weights. Without it, a distillation can recover one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modeltailor.compressors.distill import (
    DistillConfig,
    TeacherLogits,
    accuracy,
    distill,
    recalibrate_batchnorm,
)
from modeltailor.compressors.head import narrow_classifier
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import count_params
from modeltailor.compressors.units import analyze_model
from modeltailor.datasets import remap_labels
from modeltailor.errors import CompressionError
from modeltailor.experiments.search.teacher import load_teacher
from modeltailor.experiments.search.workbench import (
    load_deployment_data,
    make_applier,
    recovery_config,
)
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.deployment import DeploymentConfig
from modeltailor.models import load_weights


def rebuild(
    config: DeploymentConfig, policy_path: Path, out: Path, weights: Path | None, distill_steps: int
) -> dict[str, Any]:
    policy = Policy.load(policy_path)
    meta = dict(policy.meta)
    full, splits, classes = load_deployment_data(config)
    teacher, _ = load_teacher(config, full)
    input_shape = (1, splits.in_channels, splits.input_size, splits.input_size)
    _check_meta(meta, input_shape, classes, policy_path)
    base = narrow_classifier(teacher, classes, torch.zeros(input_shape)) if classes else teacher
    round_to = int(meta.get("round_to", 4))
    train_x, train_y = splits.train.tensors
    if classes:
        train_y = remap_labels(train_y, classes)
    applier = make_applier(meta.get("importance", "l2"), round_to, train_x, train_y, meta.get("lowrank_scheme", "auto"))
    model = applier.apply(base, policy, torch.zeros(input_shape))
    if weights is not None:
        load_weights(model, weights)
    elif distill_steps > 0:
        recalibrate_batchnorm(model, train_x)
        r = recovery_config(config, final=True)
        distill(model, TeacherLogits(base, train_x), train_y, DistillConfig(**{**r.__dict__, "steps": distill_steps}))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze_model(base, torch.zeros(input_shape))
    onnx_bytes = applier.to_onnx(model, policy, analysis, input_shape[1:], train_x[:64])
    (out / files.MODEL_ONNX).write_bytes(onnx_bytes)
    torch.save(model.state_dict(), out / files.MODEL_WEIGHTS)
    val_x, val_y = splits.val.tensors
    if classes:
        val_y = remap_labels(val_y, classes)
    return {
        "params": count_params(model),
        "original_params": count_params(teacher),
        "val_accuracy": accuracy(model, val_x, val_y),
        "model": model,
    }


def _check_meta(
    meta: dict[str, Any], input_shape: tuple[int, ...], classes: list[int] | None, path: Path
) -> None:
    if "classes" in meta and meta["classes"] != classes:
        raise CompressionError(
            f"policy file '{path}' was searched for classes {meta['classes']} but this config gives "
            f"{classes}: pass the config of the search (--config)"
        )
    wanted = meta.get("input_shape")
    if wanted is not None and tuple(wanted) != tuple(input_shape):
        raise CompressionError(
            f"policy file '{path}' was searched for input {tuple(wanted)} but this config gives "
            f"{tuple(input_shape)}: pass the config of the search (--config)"
        )
