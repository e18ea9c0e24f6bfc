"""Low-rank factorization: exact at full rank, smaller and monotone below it, zoo models export."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modeltailor.compressors import policy as policy_module
from modeltailor.compressors.export import export_onnx, onnx_matches_torch
from modeltailor.compressors.lowrank import (
    LowRankCompressor,
    cp_conv,
    factorized_cost,
    full_rank,
    lowrank_candidates,
    rank_for,
    spatial_svd,
    svd_conv1x1,
    svd_linear,
    tucker2,
    tucker_full_ranks,
    worth_factorizing,
)
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import count_params, skip_blocks
from modeltailor.compressors.units import find_output_layer
from modeltailor.errors import CompressionError
from modeltailor.models import build_model

SHAPE = (3, 32, 32)


def _seeded(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in layer.parameters():
        nn.init.normal_(p)
    return layer.eval()


def _rel_error(original: nn.Module, factors: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected, actual = original(x), factors(x)
    assert actual.shape == expected.shape
    return float((actual - expected).norm() / expected.norm())


FULL_RANK = [
    ("linear", lambda: nn.Linear(20, 12), lambda m: svd_linear(m, 12), (5, 20)),
    ("1x1", lambda: nn.Conv2d(8, 12, 1, stride=2), lambda m: svd_conv1x1(m, 8), (2, 8, 9, 9)),
    (
        "spatial",
        lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1),
        lambda m: spatial_svd(m, 18),
        (2, 6, 11, 11),
    ),
    ("spatial5", lambda: nn.Conv2d(4, 6, 5, padding=2), lambda m: spatial_svd(m, 20), (2, 4, 9, 9)),
    (
        "tucker2",
        lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1),
        lambda m: tucker2(m, *tucker_full_ranks(m)),
        (2, 6, 11, 11),
    ),
]


@pytest.mark.parametrize("case", FULL_RANK, ids=[c[0] for c in FULL_RANK])
def test_full_rank_reproduces_layer(case):
    _, make, factorize, shape = case
    layer = _seeded(make())
    factors = factorize(layer)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(factors(x), layer(x), rtol=1e-4, atol=1e-4)


REDUCED = [
    ("linear", lambda: nn.Linear(64, 48), svd_linear, [4, 8, 16, 24], (16, 64)),
    ("1x1", lambda: nn.Conv2d(32, 24, 1), svd_conv1x1, [4, 8, 12], (2, 32, 6, 6)),
    ("spatial", lambda: nn.Conv2d(16, 16, 3, padding=1), spatial_svd, [4, 8, 12, 20], (2, 16, 8, 8)),
    (
        "tucker2",
        lambda: nn.Conv2d(16, 16, 3, padding=1),
        lambda m, r: tucker2(m, r, r),
        [4, 8, 12],
        (2, 16, 8, 8),
    ),
]


@pytest.mark.parametrize("case", REDUCED, ids=[c[0] for c in REDUCED])
def test_reduced_rank_smaller_and_monotone(case):
    _, make, factorize, ranks, shape = case
    layer = _seeded(make())
    x = torch.randn(*shape)
    errors = []
    for rank in ranks:
        factors = factorize(layer, rank)
        assert count_params(factors) < count_params(layer)
        errors.append(_rel_error(layer, factors, x))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.05


def test_rank_for_rounds_and_caps():
    assert rank_for(48, 0.5, 4) == 24
    assert rank_for(48, 0.5, 4, cap=23) == 20
    assert rank_for(48, 0.01, 4) == 4
    assert rank_for(3, 0.5, 4) == 3
    assert rank_for(48, 0.5, 4, cap=3) == 0
    with pytest.raises(CompressionError):
        rank_for(48, 0.0, 4)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    assert not worth_factorizing(conv, 24)  # 24 * (48 + 48) == 16 * 16 * 9
    assert worth_factorizing(conv, 20)
    assert worth_factorizing(conv, (8, 8))
    assert not worth_factorizing(nn.Conv2d(16, 16, 3, groups=16), 1)


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def count(layer, _inputs, out):
        nonlocal total
        total += out[0].numel() * layer.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(x)
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize("scheme", ["spatial", "tucker2", "cp"])
@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv2d(16, 24, 3, padding=1), (1, 16, 8, 8)),
        (nn.Conv2d(16, 24, 3, stride=2, padding=1), (1, 16, 8, 8)),
        (nn.Conv2d(16, 32, 1, stride=2), (1, 16, 8, 8)),
        (nn.Linear(40, 24), (1, 40)),
    ],
)
def test_factorized_cost_matches_built_chain(layer, shape, scheme):
    x = torch.randn(*shape)
    params, macs = factorized_cost(layer, 0.5, scheme)
    small = LowRankCompressor(scheme=scheme).apply_ranks(nn.Sequential(layer), {"0": 0.5})
    assert isinstance(small[0], nn.Sequential) and params < 1.0
    assert params == pytest.approx(count_params(small) / count_params(layer))
    assert macs == pytest.approx(_macs(small, x) / _macs(layer, x))


def output_name(model: nn.Module) -> str:
    found = find_output_layer(model, torch.zeros(1, *SHAPE), mapping=False)
    assert found is not None
    return found.name


@pytest.mark.parametrize("name", ["resnet20", "vgg"])
def test_zoo_half_rank(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, input_size=32, num_classes=10).eval()
    candidates = lowrank_candidates(model, exclude=[output_name(model)])
    assert candidates and "classifier" not in candidates
    assert {"spatial", "tucker2"} & set(candidates.values())
    before = copy.deepcopy(model.state_dict())
    small = LowRankCompressor().apply_ranks(model, dict.fromkeys(candidates, 0.5), torch.zeros(1, *SHAPE))
    assert all(isinstance(small.get_submodule(n), nn.Sequential) for n in candidates)
    x = torch.randn(4, *SHAPE)
    assert small(x).shape == model(x).shape == (4, 10)
    assert count_params(small) < count_params(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "input model was mutated"
    onnx_bytes = export_onnx(small, SHAPE, dynamic_batch=True)
    assert onnx_matches_torch(small, onnx_bytes, torch.randn(8, *SHAPE)) < 1e-4


@pytest.mark.parametrize("stride", [1, 2])
def test_cp_recovers_a_kernel_of_that_cp_rank(stride):
    """A kernel that is a sum of 5 rank-one terms: CP at rank 5 gives the layer back (1x1,
    depthwise (3, 1), depthwise (1, 3), 1x1; stride and bias kept), with fewer parameters."""
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 3, stride=stride, padding=1).eval()
    a, b, c, d = torch.randn(20, 5), torch.randn(12, 5), torch.randn(3, 5), torch.randn(3, 5)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))
    factors = cp_conv(conv, 5)
    depthwise = [m for m in factors if m.groups > 1]
    assert [tuple(m.kernel_size) for m in depthwise] == [(3, 1), (1, 3)] and all(m.groups == 5 for m in depthwise)
    assert _rel_error(conv, factors, torch.randn(2, 12, 9, 9)) < 1e-4
    assert count_params(factors) == 5 * (12 + 3 + 3 + 20) + 20 < count_params(conv)
    assert cp_conv(conv, 5)[0].weight.equal(factors[0].weight), "the same layer gives the same factors"


def test_cp_rank_is_capped_below_the_layer_and_checked():
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    cap = full_rank(conv, "cp")
    assert cap * (16 + 3 + 3 + 16) < 16 * 16 * 9 <= (cap + 1) * (16 + 3 + 3 + 16)
    with pytest.raises(CompressionError, match="cp rank"):
        cp_conv(conv, cap + 1)


def test_cp_zoo_model_is_smaller_and_exports():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=3, input_size=32, num_classes=10, width=0.25).eval()
    candidates = lowrank_candidates(model, 0.3, "cp", exclude=[output_name(model)])
    assert set(candidates.values()) == {"cp", "svd"}  # svd: the 1x1 shortcuts
    small = LowRankCompressor("cp").apply_ranks(model, dict.fromkeys(candidates, 0.3)).eval()
    assert count_params(small) < count_params(model)
    assert any(m.groups > 1 for m in small.modules() if isinstance(m, nn.Conv2d))
    assert onnx_matches_torch(small, export_onnx(small, SHAPE, dynamic_batch=True), torch.randn(4, *SHAPE)) < 1e-4


def test_policy_with_lowrank_method(monkeypatch):
    if "lowrank" not in policy_module.METHODS:
        monkeypatch.setattr(policy_module, "METHODS", (*policy_module.METHODS, "lowrank"))
    model = build_model("resnet20", in_channels=3, input_size=32).eval()
    policy = Policy((UnitAction("features.1.conv1.0", "lowrank", 0.5), UnitAction("features.2.conv1.0")))
    small = LowRankCompressor().apply(model, policy, torch.zeros(1, *SHAPE))
    assert isinstance(small.get_submodule("features.1.conv1.0"), nn.Sequential)
    assert isinstance(small.get_submodule("features.2.conv1.0"), nn.Conv2d)


def test_layer_in_skipped_block_is_left_alone():
    model = build_model("resnet20", in_channels=3, input_size=32).eval()
    skip_blocks(model, ["features.2.conv1.0"])
    ranks = {"features.2.conv2.0": 0.5, "features.3.conv1.0": 0.5}
    plans = LowRankCompressor().plan(model, ranks)
    assert plans["features.2.conv2.0"].scheme is None
    assert "skipped block 'features.2'" in plans["features.2.conv2.0"].reason
    small = LowRankCompressor().apply_ranks(model, ranks)
    assert isinstance(small.get_submodule("features.3.conv1.0"), nn.Sequential)
    assert small(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_depthwise_is_not_a_candidate():
    model = build_model("mobilenetv2", in_channels=3, input_size=32).eval()
    candidates = lowrank_candidates(model, exclude=[output_name(model)])
    depthwise = [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
    ]
    assert depthwise and not set(depthwise) & set(candidates)
    assert any(v == "svd" for v in candidates.values())  # the 1x1 convs
    plan = LowRankCompressor().plan(model, {depthwise[0]: 0.5})[depthwise[0]]
    assert plan.scheme is None and "not decomposable" in plan.reason
    small = LowRankCompressor().apply_ranks(model, {depthwise[0]: 0.5})
    assert isinstance(small.get_submodule(depthwise[0]), nn.Conv2d)


def test_bad_inputs_raise():
    model = build_model("resnet20", in_channels=3, input_size=32)
    compressor = LowRankCompressor()
    for bad in ({"features.99.conv": 0.5}, {"features.0.1": 0.5}, {"": 0.5}, {"features.0.0": 1.5}):
        with pytest.raises(CompressionError):
            compressor.apply_ranks(model, bad)
    with pytest.raises(CompressionError):
        LowRankCompressor(scheme="cpd")
    with pytest.raises(CompressionError):
        spatial_svd(nn.Conv2d(8, 8, 3, groups=8), 2)
