"""Zoo models (shapes, pruning, ONNX) and bring-your-own factories and weights."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torch import nn

from modeltailor.errors import ConfigError, ModelLoadError
from modeltailor.models import ZOO, build_model, load_factory, load_weights

NAMES = list(ZOO)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str, in_channels: int = 1, num_classes: int = 10) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, input_size=16, num_classes=num_classes)
    return model.eval(), torch.randn(2, in_channels, 16, 16)


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics so that eval-mode outputs depend on every channel."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_((torch.rand(n, generator=generator) - 0.5) * 0.4)


# ------------------------------------------------------------------------------------------ zoo


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("input_size", [16, 32])
@pytest.mark.parametrize("num_classes", [3, 10])
def test_zoo_output_shape(name: str, in_channels: int, input_size: int, num_classes: int) -> None:
    model = build_model(name, in_channels=in_channels, input_size=input_size, num_classes=num_classes)
    out = model.eval()(torch.randn(2, in_channels, input_size, input_size))
    assert out.shape == (2, num_classes)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == num_classes


@pytest.mark.parametrize("name", NAMES)
def test_zoo_structure(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=10)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    assert list(model.modules())[-1] is model.classifier
    assert 50_000 < params(model) < 1_000_000


@pytest.mark.parametrize("name", NAMES)
def test_zoo_width_and_tiny_inputs(name: str) -> None:
    narrow = build_model(name, width=0.5)
    assert params(narrow) < params(build_model(name))
    model = build_model(name, in_channels=1, input_size=4, num_classes=2).eval()
    assert model(torch.randn(1, 1, 4, 4)).shape == (1, 2)


def test_zoo_depthwise_layers() -> None:
    for name in ("mobilenetv2", "shufflenet"):
        convs = [m for m in build_model(name).modules() if isinstance(m, nn.Conv2d)]
        assert any(m.groups > 1 and m.groups == m.in_channels == m.out_channels for m in convs)


def test_build_model_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'x': choose one of resnet20, resnet56, vgg, mobilenetv2, shufflenet"):
        build_model("x")
    with pytest.raises(ConfigError, match="no option 'depth'"):
        build_model("vgg", depth=3)
    with pytest.raises(ConfigError, match="width > 0"):
        build_model("resnet20", width=0)
    with pytest.raises(ConfigError, match="num_classes to be a positive integer"):
        build_model("resnet20", num_classes=0)


# -------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("round_to", [None, 4])
def test_base_pruner_halves_model(name: str, round_to: int | None) -> None:
    model, x = small(name)
    before = params(model)
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.classifier],
        round_to=round_to,
    )
    pruner.step()
    assert params(model) < 0.5 * before
    assert model(x).shape == (2, 10)
    assert model.classifier.out_features == 10


@pytest.mark.parametrize("name", NAMES)
def test_groups_prune_with_per_layer_ratios(name: str) -> None:
    """As the compressor does it: a ratio per root layer, L1 importance, every group pruned."""
    model, x = small(name, in_channels=3)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = list(
        graph.get_all_groups(ignored_layers=[model.classifier], root_module_types=[nn.Conv2d, nn.Linear])
    )
    assert len(groups) >= 4
    ratios = {g[0].dep.target.module: 0.5 for g in groups}
    before = params(model)
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    assert params(model) < 0.6 * before
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_pruning_dead_channels_is_exact(name: str) -> None:
    """Zero half the channels of a group, prune exactly those: outputs must not change.

    This fails if the dependency graph pairs the wrong channels somewhere (e.g. across a
    view/transpose channel shuffle), even when the pruned model still runs.
    """
    model, x = small(name)
    randomize_batchnorm(model)
    count = len(_groups(model, x))
    for position in sorted({0, count // 2, count - 1}):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        group = _groups(model, x, graph)[position]
        root, handler = group[0].dep.target.module, group[0].dep.handler
        idxs = list(range(0, root.out_channels, 2))
        group = graph.get_pruning_group(root, handler, idxs)
        _zero_channels(graph, group)
        with torch.no_grad():
            reference = model(x)
        before = params(model)
        group.prune()
        with torch.no_grad():
            pruned = model(x)
        assert params(model) < before
        torch.testing.assert_close(pruned, reference, atol=1e-5, rtol=1e-4)


def _groups(model: nn.Module, x: torch.Tensor, graph: tp.DependencyGraph | None = None) -> list:
    graph = graph or tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = graph.get_all_groups(ignored_layers=[model.classifier], root_module_types=[nn.Conv2d])
    return [g for g in groups if g[0].dep.target.module.out_channels > 1]


def _zero_channels(graph: tp.DependencyGraph, group: tp.Group) -> None:
    """Make the group's channels exactly zero: zero them in every producing conv and BN."""
    with torch.no_grad():
        for dep, idxs in group:
            module = dep.target.module
            depthwise = isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1
            if isinstance(module, nn.BatchNorm2d):
                module.weight[idxs] = 0.0
                module.bias[idxs] = 0.0
            elif isinstance(module, nn.Conv2d) and (graph.is_out_channel_pruning_fn(dep.handler) or depthwise):
                module.weight[idxs] = 0.0


# ----------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(name: str, tmp_path: Path) -> None:
    model, x = small(name, in_channels=3, num_classes=5)
    randomize_batchnorm(model)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(3, 3, 16, 16)
    (out,) = session.run(None, {"x": batch.numpy()})
    with torch.no_grad():
        expected = model(batch).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ bring your own

FACTORY_SOURCE = """
import torch
from torch import nn

def make(hidden=4, num_classes=3):
    return nn.Sequential(
        nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(hidden, num_classes),
    )

class Builders:
    @staticmethod
    def tiny():
        return make(2, 2)

def broken():
    raise ValueError("bad width")

def not_a_model():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "mt_user_models.py").write_text(textwrap.dedent(FACTORY_SOURCE))
    (tmp_path / "mt_bad_import.py").write_text("import a_module_that_does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mt_user_models"


def test_load_factory_with_kwargs(user_module: str) -> None:
    model = load_factory(f"{user_module}:make", {"hidden": 6, "num_classes": 4})
    assert model[0].out_channels == 6
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert load_factory(f"{user_module}:make")[-1].out_features == 3
    assert load_factory(f"{user_module}:Builders.tiny")[-1].out_features == 2


@pytest.mark.parametrize(
    ("ref", "kwargs", "fragment"),
    [
        ("no_colon_here", None, "bad model reference 'no_colon_here'"),
        ("a:b:c", None, "bad model reference"),
        ("mt_bad_import:make", None, "cannot import module 'mt_bad_import'"),
        ("mt_missing_module_xyz:make", None, "No module named 'mt_missing_module_xyz'"),
        ("mt_user_models:nope", None, "has no attribute 'nope'"),
        ("mt_user_models:NOT_CALLABLE", None, "not callable"),
        ("mt_user_models:broken", None, "failed: ValueError: bad width"),
        ("mt_user_models:make", {"depth": 3}, "failed: TypeError"),
        ("mt_user_models:not_a_model", None, "returned int, not a torch.nn.Module"),
        ("mt_user_models:make", [1], "kwargs must be a mapping"),
    ],
)
def test_load_factory_errors(user_module: str, ref: str, kwargs: object, fragment: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_factory(ref, kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_weights_round_trip(tmp_path: Path) -> None:
    source = build_model("resnet20", in_channels=1, num_classes=3)
    randomize_batchnorm(source)
    x = torch.randn(2, 1, 16, 16)
    expected = source.eval()(x)
    for key, payload in [
        ("raw", source.state_dict()),
        ("state_dict", {"state_dict": source.state_dict(), "epoch": 3}),
        ("model", {"model": source.state_dict()}),
        ("dataparallel", {f"module.{k}": v for k, v in source.state_dict().items()}),
    ]:
        path = tmp_path / f"{key}.pt"
        torch.save(payload, path)
        target = build_model("resnet20", in_channels=1, num_classes=3)
        assert load_weights(target, path) is target
        torch.testing.assert_close(target.eval()(x), expected)


def test_weights_errors(tmp_path: Path) -> None:
    model = build_model("vgg", in_channels=1, num_classes=3)
    cases: list[tuple[Path, str]] = [(tmp_path / "missing.pt", "weights file '")]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    cases.append((garbage, "cannot read weights file"))
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    cases.append((listing, "not a state dict"))
    whole = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), whole)
    cases.append((whole, "cannot read weights file"))
    other = tmp_path / "other.pt"
    torch.save(build_model("vgg", in_channels=3, num_classes=5).state_dict(), other)
    cases.append((other, "with the wrong shape"))
    partial = tmp_path / "partial.pt"
    state = model.state_dict()
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, partial)
    cases.append((partial, "1 missing (classifier.bias); 1 unexpected (extra.weight)"))
    for path, fragment in cases:
        with pytest.raises(ModelLoadError) as info:
            load_weights(model, path)
        assert fragment in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="not found"):
        load_weights(model, tmp_path / "missing.pt")


def test_factory_in_the_current_folder_imports_like_python_m(tmp_path, monkeypatch):
    """Console scripts do not put the current folder on sys.path; a factory there is found anyway."""
    package = tmp_path / "cwdnets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("from torch import nn\n\ndef make():\n    return nn.Linear(4, 2)\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("cwdnets", None)
    assert load_factory("cwdnets.nets:make").out_features == 2
    with pytest.raises(ModelLoadError, match="cannot import module 'nowhere_xyz.nets'"):
        load_factory("nowhere_xyz.nets:make")
