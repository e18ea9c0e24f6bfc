"""Real int8 quantization with ONNX Runtime: QDQ graphs, smaller weights, same predictions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.quantization import (
    conv_node_names,
    count_qdq,
    module_path,
    onnx_accuracy,
    onnx_predictions,
    op_counts,
    preprocess,
    quantize_layers,
    quantize_onnx,
)
from modeltailor.devices.memory import onnx_memory
from modeltailor.errors import CompressionError
from modeltailor.models import ZOO, build_model
from tests.conftest import synthetic_images

SHAPE = (1, 16, 16)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """resnet20 (width 0.5, 1x16x16, 4 classes) trained briefly on class blobs, and its export."""
    torch.manual_seed(0)
    x, y = synthetic_images(256, 1, 16, 4)
    model = _train(build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5), x, y)
    test_x, test_y = synthetic_images(64, 1, 16, 4, seed=1)
    return model, export_onnx(model, SHAPE), x[:64], test_x, test_y


@pytest.fixture(scope="module")
def static_int8(trained):
    _, data, calibration, _, _ = trained
    return quantize_onnx(data, calibration.numpy())


def test_static_quantization_inserts_qdq_and_shrinks_weights(trained, static_int8):
    _, data, _, _, _ = trained
    assert count_qdq(data) == 0
    assert count_qdq(static_int8) > 0
    assert onnx_memory(data).weight_bytes > 2 * onnx_memory(static_int8).weight_bytes


def test_static_quantization_keeps_predictions(trained, static_int8):
    model, data, _, test_x, test_y = trained
    float_pred = onnx_predictions(data, test_x)
    agreement = float(np.mean(onnx_predictions(static_int8, test_x) == float_pred))
    assert len(set(float_pred.tolist())) > 1  # the model is trained: predictions differ
    assert agreement >= 0.9
    assert onnx_accuracy(static_int8, test_x, test_y) >= onnx_accuracy(data, test_x, test_y) - 0.1


def test_onnx_accuracy_matches_torch(trained):
    model, data, _, test_x, test_y = trained
    with torch.no_grad():
        torch_acc = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert onnx_accuracy(data, test_x, test_y) == pytest.approx(torch_acc)


def test_quantizing_one_layer_gives_fewer_qdq(trained, static_int8):
    _, data, calibration, test_x, _ = trained
    one = quantize_layers(data, calibration, ["features.1.conv1.0"])
    assert 0 < count_qdq(one) < count_qdq(static_int8)
    agreement = np.mean(onnx_predictions(one, test_x) == onnx_predictions(data, test_x))
    assert agreement >= 0.9


@pytest.mark.parametrize("name", sorted(ZOO))
def test_name_mapping_covers_every_conv(name):
    model = build_model(name, in_channels=3, input_size=16, num_classes=10, width=0.5)
    data = export_onnx(model, (3, 16, 16))
    mapping = conv_node_names(data)
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert layers <= set(mapping)
    ops = {node.name: node.op_type for node in onnx.load_from_string(data).graph.node}
    assert all(ops[mapping[n]] == ("Gemm" if n == "classifier" else "Conv") for n in layers)
    if name == "resnet20":
        assert conv_node_names(preprocess(data)) == mapping  # names survive pre-processing


def test_module_path_parses_exporter_scopes():
    assert module_path("/features/features.1/conv1/conv1.0/Conv") == "features.1.conv1.0"
    assert module_path("/features/features.2/conv/conv.0/conv.0.0/Conv") == "features.2.conv.0.0"
    assert module_path("/classifier/Gemm") == "classifier"
    assert module_path("Conv_3") == ""


def test_fp16_and_dynamic_modes(trained):
    _, data, _, test_x, _ = trained
    half = quantize_onnx(data, None, mode="fp16")
    assert onnx_memory(half).weight_bytes * 2 == pytest.approx(onnx_memory(data).weight_bytes, rel=0.01)
    assert np.mean(onnx_predictions(half, test_x) == onnx_predictions(data, test_x)) >= 0.95
    dynamic = quantize_onnx(data, None, mode="dynamic")
    assert op_counts(dynamic).get("ConvInteger", 0) > 0
    assert onnx_predictions(dynamic, test_x[:8]).shape == (8,)


def test_bad_inputs_raise_compression_errors(trained):
    _, data, calibration, _, _ = trained
    with pytest.raises(CompressionError, match="mode"):
        quantize_onnx(data, calibration, mode="int4")
    with pytest.raises(CompressionError, match="calibration"):
        quantize_onnx(data, calibration[:, :, :8, :8])
    with pytest.raises(CompressionError, match="no Conv/Gemm node"):
        quantize_layers(data, calibration, ["features.99.conv1.0"])
