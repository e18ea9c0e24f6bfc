"""Channel pruning on every zoo model: smaller, same output shape, ONNX == torch, input untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from modeltailor.compressors.export import export_onnx, onnx_matches_torch
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import ChannelPruningCompressor, channels_to_keep, count_params
from modeltailor.compressors.units import analyze_model, estimate_macs, estimate_params
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.errors import CompressionError
from modeltailor.models import build_model

ZOO_NAMES = ["resnet20", "vgg", "mobilenetv2", "shufflenet"]
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", params=ZOO_NAMES)
def zoo_model(request):
    torch.manual_seed(0)
    return request.param, build_model(
        request.param, in_channels=3, input_size=32, num_classes=10
    ).eval()


def _half(model):
    analysis = analyze_model(model, torch.zeros(1, *SHAPE))
    return analysis, Policy.uniform([u.name for u in analysis.units], 0.5)


def test_pruning_keeps_shape_and_shrinks(zoo_model):
    name, model = zoo_model
    analysis, policy = _half(model)
    assert analysis.units, f"{name} has no prunable unit"
    before = copy.deepcopy(model.state_dict())
    pruned = ChannelPruningCompressor(round_to=4).apply(model, policy, torch.zeros(1, *SHAPE))
    x = torch.randn(4, *SHAPE)
    assert pruned(x).shape == model(x).shape == (4, 10)
    assert count_params(pruned) < 0.6 * count_params(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "input model was mutated"
    assert pruned is not model


def test_pruned_onnx_matches_torch(zoo_model):
    _, model = zoo_model
    _, policy = _half(model)
    pruned = ChannelPruningCompressor().apply(model, policy, torch.zeros(1, *SHAPE))
    onnx_bytes = export_onnx(pruned, SHAPE, dynamic_batch=True)
    assert onnx_matches_torch(pruned, onnx_bytes, torch.randn(8, *SHAPE)) < 1e-4


def test_pruned_is_faster_on_ort(zoo_model):
    name, model = zoo_model
    analysis = analyze_model(model, torch.zeros(1, *SHAPE))
    policy = Policy.uniform([u.name for u in analysis.units], 0.3)
    pruned = ChannelPruningCompressor().apply(model, policy, torch.zeros(1, *SHAPE))
    # alternating rounds: load that comes and goes (another test worker, a background job) hits
    # both alike; timed one after the other, shufflenet's ratio inverted under load
    timed = LocalOrtDevice(runs=20, warmup=10).measure_alternately(
        {"base": export_onnx(model, SHAPE), "small": export_onnx(pruned, SHAPE)}, repeats=3)
    base, small = timed["base"].latency.median_ms, timed["small"].latency.median_ms
    assert small < base, f"{name}: pruned {small:.3f} ms is not faster than {base:.3f} ms"


def test_estimates_match_the_pruned_model(zoo_model):
    _, model = zoo_model
    analysis, _ = _half(model)
    keep = {u.name: 0.5 for u in analysis.units}
    pruned = ChannelPruningCompressor(round_to=1).apply(
        model, Policy(tuple(UnitAction(u, keep=k) for u, k in keep.items())), torch.zeros(1, *SHAPE)
    )
    actual = analyze_model(pruned, torch.zeros(1, *SHAPE))
    # estimates ignore rounding to whole channels and grouped-conv constraints: within 15%
    assert estimate_macs(analysis, keep) == pytest.approx(actual.total_macs, rel=0.15)
    conv_params = sum(layer.params for layer in actual.layers)
    assert estimate_params(analysis, keep) == pytest.approx(conv_params, rel=0.15)


def test_unit_channels_follow_keep_and_round_to():
    model = build_model("resnet20", in_channels=1, input_size=16, num_classes=10)
    analysis = analyze_model(model, torch.zeros(1, 1, 16, 16))
    keeps = {u.name: k for u, k in zip(analysis.units, [0.3, 0.5, 0.8, 1.0] * 10, strict=False)}
    policy = Policy(tuple(UnitAction(u, keep=k) for u, k in keeps.items()))
    pruned = ChannelPruningCompressor(round_to=8).apply(model, policy, torch.zeros(1, 1, 16, 16))
    modules = dict(pruned.named_modules())
    for unit in analysis.units:
        expected = channels_to_keep(unit.channels, keeps[unit.name], 8)
        assert modules[unit.name].out_channels == expected, unit.name
        assert expected % 8 == 0 or expected == unit.channels


@pytest.mark.parametrize(
    ("channels", "keep", "round_to", "expected"),
    [(64, 0.5, 8, 32), (64, 0.01, 8, 8), (16, 0.5, 16, 16), (30, 1.0, 4, 30), (64, 0.55, 8, 32)],
)
def test_kept_channels_rounding(channels, keep, round_to, expected):
    assert channels_to_keep(channels, keep, round_to) == expected


def test_unknown_unit_is_a_clear_error():
    model = build_model("vgg", in_channels=1, input_size=16, num_classes=3)
    policy = Policy((UnitAction("no.such.layer", keep=0.5),))
    with pytest.raises(CompressionError, match="unit 'no.such.layer'"):
        ChannelPruningCompressor().apply(model, policy, torch.zeros(1, 1, 16, 16))


def test_bad_keep_and_method_are_rejected():
    with pytest.raises(CompressionError, match="outside"):
        UnitAction("a", keep=0.0)
    with pytest.raises(CompressionError, match="unknown method"):
        UnitAction("a", method="magic", keep=0.5)


def test_policy_round_trips_through_json(tmp_path):
    policy = Policy((UnitAction("a", keep=0.5), UnitAction("b", keep=1.0)), (("round_to", 8),))
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy


def test_policy_file_errors(tmp_path):
    with pytest.raises(CompressionError, match="not found"):
        Policy.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CompressionError, match="not valid JSON"):
        Policy.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"layers": []}')
    with pytest.raises(CompressionError, match="no 'units' list"):
        Policy.load(tmp_path / "other.json")


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_skipping_residual_blocks_removes_depth(name):
    import onnx

    model = build_model(name, in_channels=3, input_size=32, num_classes=10).eval()
    analysis = analyze_model(model, torch.zeros(1, *SHAPE))
    skippable = [u for u in analysis.units if u.block is not None]
    assert skippable, f"{name} has no skippable block"
    policy = Policy(tuple(UnitAction(u.name, method="skip", keep=0.0) for u in skippable))
    before = copy.deepcopy(model.state_dict())
    smaller = ChannelPruningCompressor().apply(model, policy, torch.zeros(1, *SHAPE))
    x = torch.randn(3, *SHAPE)
    assert smaller(x).shape == (3, 10)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    nodes = [len(onnx.load_from_string(export_onnx(m, SHAPE)).graph.node) for m in (model, smaller)]
    assert nodes[1] < nodes[0]
    keep = {u.name: 0.0 for u in skippable}
    assert estimate_macs(analysis, keep) == pytest.approx(analyze_model(smaller, x[:1]).total_macs)
    assert onnx_matches_torch(smaller, export_onnx(smaller, SHAPE, dynamic_batch=True), x) < 1e-4


def test_skip_of_a_block_whose_input_is_nonnegative_is_exact():
    """A ResNet block without its branch is relu(x) = x for the post-ReLU input it receives."""
    model = build_model("resnet20", in_channels=1, input_size=16, num_classes=10).eval()
    block = model.features[2]
    for p in list(block.conv2.parameters()):
        torch.nn.init.zeros_(p)
    torch.nn.init.zeros_(block.conv2[1].running_mean)  # branch output is exactly 0
    analysis = analyze_model(model, torch.zeros(1, 1, 16, 16))
    unit = next(u for u in analysis.units if u.block == "features.2")
    skipped = ChannelPruningCompressor().apply(
        model, Policy((UnitAction(unit.name, "skip", 0.0),)), torch.zeros(1, 1, 16, 16)
    )
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(skipped(x), model(x), atol=1e-5)


def test_a_projection_block_is_skipped_down_to_its_shortcut():
    """A stage's first block (strided, projection shortcut) skipped: relu(shortcut(x)) is what is
    left, the shortcut keeps its name and weights, the stage's channels still prune around it,
    and the MAC estimate (what the limiter checks episodes against) counts the shortcut."""
    from modeltailor.compressors.units import skippable_blocks
    from modeltailor.models.zoo import ProjectionPath

    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=3, input_size=32, num_classes=10, width=0.5).eval()
    analysis = analyze_model(model, torch.zeros(1, *SHAPE), projection_skips=True)
    blocks = skippable_blocks(model)
    projection = sorted(name for name, block in blocks.items() if block.projection)
    assert len(blocks) == 9 and projection == ["features.4", "features.7"]
    inside = {u.block: u for u in analysis.units if u.block in projection}
    assert set(inside) == set(projection)
    default = analyze_model(model, torch.zeros(1, *SHAPE))  # search.skip_projection off: identity blocks only
    assert {u.name for u in default.units if u.block} == {
        u.name for u in analysis.units if u.block} - {u.name for u in inside.values()}
    skips = {inside["features.4"].name: 0.0}
    actions = [UnitAction(u, "skip", 0.0) for u in skips]
    actions += [UnitAction(u.name, keep=0.5) for u in analysis.units if u.name not in skips and u.block is None]
    smaller = ChannelPruningCompressor(round_to=2).apply(model, Policy(tuple(actions)), torch.zeros(1, *SHAPE)).eval()
    path, block = smaller.get_submodule("features.4"), model.get_submodule("features.4")
    assert isinstance(path, ProjectionPath) and not hasattr(path, "conv1")
    z = torch.relu(torch.randn(2, block.conv1[0].in_channels, 32, 32))
    assert path.shortcut[0].out_channels < block.shortcut[0].out_channels  # the stage's channels pruned through it
    unpruned = ChannelPruningCompressor().apply(model, Policy(tuple(actions[:1])), torch.zeros(1, *SHAPE)).eval()
    with torch.no_grad():
        assert torch.allclose(unpruned.get_submodule("features.4")(z), block.relu(block.shortcut(z)), atol=1e-6)
    x = torch.randn(3, *SHAPE)
    assert smaller(x).shape == (3, 10) and count_params(smaller) < count_params(model)
    keep = {**{a.unit: a.keep for a in actions}}
    built = {u.name: 0.0 if u.name in skips else channels_to_keep(u.channels, 0.5, 2) / u.channels
             for u in analysis.units if u.name in keep}
    assert estimate_macs(analysis, built) == pytest.approx(analyze_model(smaller, x[:1]).total_macs, rel=0.02)
    assert onnx_matches_torch(smaller, export_onnx(smaller, SHAPE, dynamic_batch=True), x) < 1e-4
    # measured like any episode: timed against the original in alternating rounds (about 4x fewer MACs)
    timed = LocalOrtDevice(runs=30, warmup=5).measure_alternately(
        {"model": export_onnx(model, SHAPE), "smaller": export_onnx(smaller, SHAPE)}, repeats=3)
    assert timed["smaller"].latency.median_ms < timed["model"].latency.median_ms, timed


def test_skip_outside_a_residual_block_is_rejected():
    model = build_model("vgg", in_channels=1, input_size=16, num_classes=3)
    first = analyze_model(model, torch.zeros(1, 1, 16, 16)).units[0]
    assert first.block is None
    with pytest.raises(CompressionError, match="not inside a skippable residual block"):
        ChannelPruningCompressor().apply(
            model, Policy((UnitAction(first.name, "skip", 0.0),)), torch.zeros(1, 1, 16, 16)
        )
