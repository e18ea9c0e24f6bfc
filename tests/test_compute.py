"""Where torch work runs (compute.device / compute.precision), per-image crop+flip augmentation,
ResNet-56 and the seeded validation sample the search scores on."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from modeltailor.compressors.compute import autocast, torch_device
from modeltailor.compressors.distill import DistillConfig, TeacherLogits, distill
from modeltailor.datasets import DataSplits
from modeltailor.errors import ConfigError
from modeltailor.experiments.search import teacher as teacher_module
from modeltailor.experiments.search.teacher import crop_flip, teacher_cache_path, train_model
from modeltailor.experiments.search.workbench import recovery_config, scoring_sample
from modeltailor.experiments.spec.deployment import (
    ComputeConfig,
    RecoveryConfig,
    TrainConfig,
    load_config,
)
from modeltailor.models import build_model
from modeltailor.models.zoo import BasicBlock, cifar_resnet, resnet20, resnet56
from tests.conftest import synthetic_images


def tiny_net(channels: int = 3, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ torch_device


def test_cpu_and_auto_without_gpu_are_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto") == torch.device("cpu")


def test_auto_picks_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("auto") == torch.device("cuda")
    assert torch_device("cuda") == torch.device("cuda")
    assert torch_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        torch_device("cuda")
    message = str(info.value)
    assert "\n" not in message
    assert "compute.device" in message
    assert "auto or cpu" in message


@pytest.mark.parametrize("name", ["gpu", "CUDA", "", "cuda:0"])
def test_unknown_device_is_a_config_error(name):
    with pytest.raises(ConfigError, match="compute.device must be auto, cpu or cuda"):
        torch_device(name)


# ---------------------------------------------------------------------------------- autocast


def test_fp32_autocast_changes_nothing():
    conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(5, 2)
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert conv(torch.randn(1, 3, 5, 5)).dtype == torch.float32
        assert linear(torch.randn(2, 5)).dtype == torch.float32


def test_bf16_autocast_runs_conv_and_linear_in_bfloat16_on_cpu():
    conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(5, 2)
    with autocast(torch.device("cpu"), "bf16"):
        assert conv(torch.randn(1, 3, 5, 5)).dtype == torch.bfloat16
        assert linear(torch.randn(2, 5)).dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32  # weights are not cast in place
    assert linear(torch.randn(2, 5)).dtype == torch.float32  # and it ends with the context


@pytest.mark.parametrize("precision", ["fp16", "bfloat16", "BF16", ""])
def test_unknown_precision_is_a_config_error(precision):
    with pytest.raises(ConfigError, match="compute.precision must be fp32 or bf16"):
        autocast(torch.device("cpu"), precision)


# ---------------------------------------------------------------------------------- distill


def distill_setup(seed: int = 0):
    x, y = synthetic_images(128, 3, 8, 4, seed=seed)
    teacher = tiny_net(seed=100)
    # a teacher that knows the task: a few plain steps of cross-entropy
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        optimizer.step()
    return TeacherLogits(teacher, x), y


def test_bf16_distillation_lowers_the_loss_and_keeps_float32_weights_on_cpu():
    logits, y = distill_setup()
    student = tiny_net(seed=1)
    losses: list[float] = []
    out = distill(
        student,
        logits,
        y,
        DistillConfig(steps=30, batch_size=32, lr=0.05, precision="bf16"),
        on_step=lambda step, loss: losses.append(loss),
    )
    assert out is student
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert not out.training
    for name, tensor in list(out.named_parameters()) + list(out.named_buffers()):
        assert tensor.device.type == "cpu", name
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, name
    # the returned model predicts in float32 outside autocast
    assert out(logits.inputs[:2]).dtype == torch.float32


def test_fp32_and_bf16_distillation_give_different_but_close_updates():
    logits, y = distill_setup()
    start = tiny_net(seed=1)
    before = torch.cat([p.detach().flatten() for p in start.parameters()])
    updates = {}
    for precision in ("fp32", "bf16"):
        student = copy.deepcopy(start)
        distill(
            student, logits, y, DistillConfig(steps=5, batch_size=32, lr=0.05, precision=precision)
        )
        updates[precision] = (
            torch.cat([p.detach().flatten() for p in student.parameters()]) - before
        )
    full, half = updates["fp32"], updates["bf16"]
    assert full.norm() > 0
    assert not torch.equal(full, half)  # bf16 really ran
    assert (half - full).norm() / full.norm() < 0.05
    assert F.cosine_similarity(full, half, dim=0) > 0.999


def test_distill_leaves_batchnorm_statistics_of_the_final_weights():
    logits, y = distill_setup()
    out = distill(tiny_net(seed=1), logits, y, DistillConfig(steps=20, batch_size=32, lr=0.05))
    norm = out[1]
    # the statistics of the distillation inputs at the returned weights, computed directly
    with torch.no_grad():
        features = out[0](logits.inputs)
    assert torch.allclose(norm.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, features.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert not out.training


def test_distill_rejects_an_unknown_precision():
    logits, y = distill_setup()
    with pytest.raises(ConfigError, match="compute.precision"):
        distill(tiny_net(), logits, y, DistillConfig(steps=1, precision="fp16"))


def test_recovery_config_passes_a_resolved_device_and_the_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, {"compute.precision": "bf16"})  # device defaults to auto
    for final in (False, True):
        distill_config = recovery_config(cfg, final=final)
        assert distill_config.device == "cpu"
        assert distill_config.precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert recovery_config(cfg).device == "cuda"
    assert recovery_config(load_config(None)).precision == "fp32"


# -------------------------------------------------------------------------------- crop_flip


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved so that out[i, j] = x[i + dy, j + dx], zeros outside."""
    out = torch.zeros_like(x)
    size = x.shape[-1]
    for i in range(size):
        for j in range(size):
            if 0 <= i + dy < size and 0 <= j + dx < size:
                out[..., i, j] = x[..., i + dy, j + dx]
    return out


def test_crop_flip_keeps_the_shape():
    x = torch.randn(5, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    assert crop_flip(x, g).shape == x.shape
    assert crop_flip(x, g, pad=3).shape == x.shape
    assert crop_flip(torch.randn(2, 1, 6, 6), g).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("pad", [1, 2])
def test_every_output_is_a_bounded_shift_of_the_image_or_its_mirror(pad):
    # all pixels distinct and nonzero, so each output matches exactly one shift/mirror
    x = torch.arange(1, 1 + 40 * 36, dtype=torch.float32).reshape(40, 1, 6, 6)
    out = crop_flip(x, torch.Generator().manual_seed(pad), pad=pad)
    seen = set()
    for image, result in zip(x, out, strict=True):
        matches = [
            (dy, dx, mirrored)
            for mirrored in (False, True)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(result, shifted(image.flip(-1) if mirrored else image, dy, dx))
        ]
        assert len(matches) == 1, matches  # exactly one (distinct pixels: no ambiguity)
        seen.add(matches[0])
    # with 40 draws from (2 pad + 1)^2 * 2 outcomes, both mirrors and several shifts occur
    assert {m for _, _, m in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) >= 5


def test_images_in_one_batch_get_different_crops():
    image = torch.randn(1, 3, 16, 16)
    # 16x16 -> pad 2: 5 * 5 shifts * 2 mirrors = 50 outcomes per image
    out = crop_flip(image.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) >= 20, len(distinct)


def test_crop_flip_is_deterministic_by_generator_seed():
    x = torch.randn(16, 3, 8, 8)
    a = crop_flip(x, torch.Generator().manual_seed(7))
    b = crop_flip(x, torch.Generator().manual_seed(7))
    c = crop_flip(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


# ------------------------------------------------------------------------------ train_model


def tiny_splits(flip: bool, n: int = 64, size: int = 8) -> DataSplits:
    x, y = synthetic_images(n, 3, size, 4)
    data = TensorDataset(x, y)
    return DataSplits(
        train=data,
        val=data,
        test=data,
        class_names=["a", "b", "c", "d"],
        in_channels=3,
        input_size=size,
        name="tiny",
        flip=flip,
    )


@pytest.mark.parametrize("flip", [True, False])
def test_train_model_augments_per_image_for_natural_images_only(monkeypatch, flip):
    calls = {"crop_flip": 0, "random_shift": 0}
    for name in calls:
        real = getattr(teacher_module, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(teacher_module, name, counting)
    model = tiny_net()
    out = train_model(model, tiny_splits(flip), TrainConfig(epochs=1, batch_size=16, lr=0.05))
    used, unused = ("crop_flip", "random_shift") if flip else ("random_shift", "crop_flip")
    assert calls[used] == 4  # 64 images / 16 per batch
    assert calls[unused] == 0
    assert out is model
    assert not out.training
    assert all(p.device.type == "cpu" for p in out.parameters())


def test_train_model_in_bf16_still_learns():
    splits = tiny_splits(flip=True, n=128)
    x, y = splits.train.tensors
    model = tiny_net().eval()
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    epochs: list[int] = []
    out = train_model(
        model,
        splits,
        TrainConfig(epochs=8, batch_size=16, lr=0.1),
        progress=lambda epoch, total, loss: epochs.append(epoch),
        compute=ComputeConfig(device="cpu", precision="bf16"),
    )
    assert epochs == list(range(1, 9))
    with torch.no_grad():
        after = float(F.cross_entropy(out(x), y))  # eval mode, float32
    assert after < 0.7 * before, (before, after)
    assert not out.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in out.parameters())


def test_train_model_rejects_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="compute.device"):
        train_model(
            tiny_net(),
            tiny_splits(False),
            TrainConfig(epochs=1),
            compute=ComputeConfig(device="cuda"),
        )


def test_teacher_cache_key_has_the_precision_but_not_the_device():
    default = teacher_cache_path(load_config(None))
    assert teacher_cache_path(load_config(None, {"compute.precision": "fp32"})) == default
    assert teacher_cache_path(load_config(None, {"compute.device": "cpu"})) == default
    assert teacher_cache_path(load_config(None, {"compute.device": "auto"})) == default
    bf16 = teacher_cache_path(load_config(None, {"compute.precision": "bf16"}))
    assert bf16 != default
    assert bf16.parent == default.parent
    assert (
        teacher_cache_path(
            load_config(None, {"compute.precision": "bf16", "compute.device": "cpu"})
        )
        == bf16
    )


def test_compute_config_defaults_and_validation():
    cfg = load_config(None)
    assert (cfg.compute.device, cfg.compute.precision) == ("auto", "fp32")
    with pytest.raises(ConfigError, match="compute.device"):
        load_config(None, {"compute.device": "tpu"})
    with pytest.raises(ConfigError, match="compute.precision"):
        load_config(None, {"compute.precision": "fp16"})


# ------------------------------------------------------------------------------------- zoo


def blocks(model: nn.Module) -> int:
    return sum(isinstance(m, BasicBlock) for m in model.modules())


def test_resnet56_has_27_blocks_and_about_0_86m_parameters():
    model = resnet56()
    assert blocks(model) == 27
    assert 0.85e6 < params(model) < 0.87e6
    assert params(cifar_resnet(depth=56)) == params(model)
    assert blocks(cifar_resnet(depth=32)) == 15


def test_resnet20_is_unchanged():
    model = build_model("resnet20")
    assert blocks(model) == 9
    assert 0.26e6 < params(model) < 0.28e6
    assert params(model) == params(resnet20()) == params(cifar_resnet(depth=20))


def test_build_model_resnet56():
    model = build_model("resnet56", in_channels=1, input_size=16, num_classes=3, width=0.5).eval()
    assert blocks(model) == 27
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize("depth", [21, 7, 2, 0, -4, 20.0, True])
def test_cifar_resnet_needs_depth_6n_plus_2(depth):
    with pytest.raises(ConfigError, match=r"6n \+ 2"):
        cifar_resnet(depth=depth)


# --------------------------------------------------------------------------- scoring_sample


def sorted_by_class(n_per_class: int = 50, classes: int = 10):
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.arange(len(y), dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i: traceable
    return x, y


@pytest.mark.parametrize("samples", [None, 500, 501, 10_000])
def test_scoring_sample_keeps_everything_when_not_smaller(samples):
    x, y = sorted_by_class()
    sx, sy = scoring_sample(x, y, samples, seed=0)
    assert sx is x and sy is y


def test_scoring_sample_is_a_fixed_random_subset_spanning_classes():
    x, y = sorted_by_class()
    sx, sy = scoring_sample(x, y, 40, seed=3)
    assert sx.shape == (40, 3) and sy.shape == (40,)
    index = sx[:, 0].long()
    assert len(set(index.tolist())) == 40  # no repeats
    assert torch.equal(sy, y[index])  # images keep their labels
    assert len(set(sy.tolist())) >= 5  # not just the first class of a sorted split
    again_x, again_y = scoring_sample(x, y, 40, seed=3)
    assert torch.equal(again_x, sx) and torch.equal(again_y, sy)
    other_x, _ = scoring_sample(x, y, 40, seed=4)
    assert not torch.equal(other_x, sx)


def test_val_samples_setting():
    assert RecoveryConfig().val_samples is None
    assert load_config(None).recovery.val_samples is None
    assert load_config(None, {"recovery.val_samples": 10}).recovery.val_samples == 10
    with pytest.raises(ConfigError, match="recovery.val_samples"):
        load_config(None, {"recovery.val_samples": 5})
