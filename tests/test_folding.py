"""BatchNorm folding, the folding report and parallel-branch merging on the zoo models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeltailor.compressors.export import export_onnx, onnx_matches_torch
from modeltailor.compressors.folding import (
    count_batchnorm,
    export_unfolded,
    fold_batchnorm,
    merge_parallel_branches,
)
from modeltailor.compressors.quantization import op_counts
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.experiments.tools.fold_report import fold_report
from modeltailor.models import ZOO, build_model


def _with_random_bn_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_folded_model_equals_original(name):
    torch.manual_seed(0)
    model = _with_random_bn_stats(build_model(name, input_size=16, width=0.5))
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    assert count_batchnorm(model) > 0 and count_batchnorm(folded) == 0
    assert _numel(folded.parameters()) < _numel(model.parameters())
    assert _numel(folded.buffers()) < _numel(model.buffers())
    assert model.training is False and count_batchnorm(model) > 0  # the original is untouched


def test_fold_report_measures_graphs_and_levels():
    model = _with_random_bn_stats(build_model("resnet20", in_channels=1, input_size=16, width=0.5))
    device = LocalOrtDevice(runs=10, warmup=2, rounds=2)
    report = fold_report(model, (1, 16, 16), device)
    assert {"torch", "unfolded", "exported", "folded_export", "device"} <= set(report)
    exported, unfolded = report["exported"], report["unfolded"]
    assert "BatchNormalization" not in exported["ops"]
    assert unfolded["ops"]["BatchNormalization"] == count_batchnorm(model)
    assert report["folded_export"]["nodes"] == exported["nodes"]
    assert unfolded["memory"]["weight_bytes"] > exported["memory"]["weight_bytes"]
    for graph in (exported, unfolded):
        assert set(graph["ort"]) == {"disable", "basic", "extended", "all"}
        assert all(entry["latency_ms"] > 0 for entry in graph["ort"].values())
        assert graph["ort"]["all"]["nodes"] <= graph["ort"]["disable"]["nodes"]
    assert "BatchNormalization" not in unfolded["ort"]["basic"]["ops"]  # ORT folds BN itself
    assert report["torch"]["folded_batchnorm"] == 0


def test_unfolded_export_matches_torch():
    model = _with_random_bn_stats(build_model("vgg", in_channels=1, input_size=16, width=0.5))
    data = export_unfolded(model, (1, 16, 16))
    assert op_counts(data)["BatchNormalization"] == count_batchnorm(model)
    onnx_matches_torch(model, data, torch.randn(3, 1, 16, 16))


def test_merge_parallel_branches_on_shufflenet():
    model = _with_random_bn_stats(build_model("shufflenet", input_size=16, width=0.5))
    merged = merge_parallel_branches(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-4, rtol=1e-4)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in merged.modules()) < convs
    data = export_onnx(merged, (3, 16, 16))
    before = op_counts(export_onnx(model, (3, 16, 16)))
    assert op_counts(data)["Conv"] < before["Conv"]
    assert op_counts(data)["Relu"] < before["Relu"]  # a shared ReLU is applied once, before slicing
    onnx_matches_torch(merged, data, x)
