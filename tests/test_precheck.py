"""The pre-search unit check, failed episodes, and refusing an untrained teacher."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from modeltailor.compressors.distill import DistillConfig, TeacherLogits
from modeltailor.compressors.pipeline import PolicyApplier
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.precheck import check_units
from modeltailor.compressors.pruning import ChannelPruningCompressor
from modeltailor.compressors.units import analyze_model, find_output_layer
from modeltailor.devices.cache import CachedDevice
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.env.compression_env import ActionRange, CompressionEnv
from modeltailor.env.evaluator import EvalData, PolicyEvaluator
from modeltailor.env.history import search_result
from modeltailor.env.reward import Resources, TradeoffReward
from modeltailor.errors import EpisodeFailed, ModelLoadError
from modeltailor.experiments.search.workbench import _untrained_hint, check_trained
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.models import build_model
from tests import corpus
from tests.conftest import synthetic_images

SHAPE = (1, 1, 16, 16)


@dataclass
class FailingApplier(PolicyApplier):
    """Prunes like the real one, but raises (as a library would) whenever `bad` is compressed."""

    bad: str = ""

    def apply(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
        if any(a.unit == self.bad and (a.keep < 1.0 or a.method != "prune") for a in policy.actions):
            raise IndexError(f"index 17 is out of bounds for dimension 0 with size 16 ({self.bad})")
        return super().apply(model, policy, example)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.5).eval()


def test_every_unit_passes_on_a_zoo_model():
    model = small_model()
    analysis = analyze_model(model, torch.zeros(SHAPE))
    checks = check_units(model, analysis, PolicyApplier(ChannelPruningCompressor(round_to=2)),
                         torch.randn(4, 1, 16, 16), methods=("prune", "skip", "int8"))
    assert not checks.frozen() and len(checks.checks) == len(analysis.units)
    assert checks.supporting("skip") == {u.name for u in analysis.units if u.block}
    assert checks.supporting("prune") == checks.supporting("int8") == {u.name for u in analysis.units}
    assert checks.restrict(analysis) == analysis


def test_a_failing_unit_is_found_frozen_and_left_out():
    model = small_model()
    analysis = analyze_model(model, torch.zeros(SHAPE))
    bad = analysis.units[3].name
    checks = check_units(model, analysis, FailingApplier(ChannelPruningCompressor(round_to=2), bad=bad),
                         torch.randn(4, 1, 16, 16), methods=("prune", "skip"))
    assert [c.unit for c in checks.frozen()] == [bad]
    frozen = checks.get(bad)
    assert frozen is not None and "compressing failed: index 17 is out of bounds" in frozen.failed["prune"]
    assert "skip" in frozen.failed  # skipping its block compresses it too
    restricted = checks.restrict(analysis)
    assert [u.name for u in restricted.units] == [u.name for u in analysis.units if u.name != bad]
    assert [u.index for u in restricted.units] == list(range(len(analysis.units) - 1))
    assert restricted.layers == analysis.layers and restricted.total_macs == analysis.total_macs


def test_shufflenet_shuffle_units_are_frozen_with_torch_pruning_reason():
    model = corpus.make_shufflenet().eval()
    analysis = analyze_model(model, torch.zeros(SHAPE))
    checks = check_units(model, analysis, PolicyApplier(ChannelPruningCompressor(round_to=2)),
                         torch.randn(4, 1, 16, 16), methods=("prune",))
    frozen = {c.unit: c.failed["prune"] for c in checks.frozen()}
    assert set(frozen) == {"layers.0.conv3", "layers.2.conv3"}
    assert all("out of DATA bounds" in reason for reason in frozen.values())
    assert len(checks.supporting("prune")) == len(analysis.units) - 2


def test_an_op_the_exporter_cannot_express_freezes_the_unit():
    """A unit whose compressed model runs in torch but cannot be exported is frozen too."""

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.a(x))
            if x.shape[1] != 8:  # any narrowed width takes an op ONNX has no export for
                x = torch.special.erfcx(x)
            return self.fc(torch.relu(self.b(x)).mean((2, 3)))

    model = Odd().eval()
    analysis = analyze_model(model, torch.zeros(SHAPE))
    checks = check_units(model, analysis, PolicyApplier(ChannelPruningCompressor(round_to=2)),
                         torch.randn(2, 1, 16, 16), methods=("prune",))
    assert [c.unit for c in checks.frozen()] == ["a"]
    assert "exporting to ONNX failed" in checks.frozen()[0].failed["prune"]


def test_output_layer_of_a_model_without_one_is_none():
    class ScaledMean(nn.Module):  # logits from a bare parameter, no conv/linear at the end
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3)
            self.scale = nn.Parameter(torch.ones(4, 6))

        def forward(self, x):
            return self.conv(x).mean((2, 3)) @ self.scale.t()

    assert find_output_layer(ScaledMean().eval(), torch.zeros(SHAPE)) is None


@pytest.fixture(scope="module")
def env_parts():
    teacher = small_model()
    x, y = synthetic_images(64, 1, 16, 4)
    analysis = analyze_model(teacher, torch.zeros(SHAPE))
    bad = analysis.units[2].name
    evaluator = PolicyEvaluator(
        teacher=teacher,
        compressor=FailingApplier(ChannelPruningCompressor(round_to=2), bad=bad),
        data=EvalData(x[:48], y[:48], x[48:], y[48:]),
        teacher_logits=TeacherLogits(teacher, x[:48]),
        recovery=DistillConfig(steps=1, batch_size=16),
        device=CachedDevice(LocalOrtDevice(runs=5, warmup=1)),
        input_shape=SHAPE,
    )
    return analysis, evaluator, bad


def test_a_failing_episode_names_the_unit_and_is_recorded_as_failed(env_parts):
    analysis, evaluator, bad = env_parts
    names = [u.name for u in analysis.units]
    policy = Policy(tuple(UnitAction(n, "prune", 0.5) for n in names))
    with pytest.raises(EpisodeFailed, match=f"compressing failed on unit '{bad}' \\(prune\\): index 17"):
        evaluator(policy)
    baseline = evaluator.measure(evaluator.teacher)
    resources = Resources(baseline.accuracy, baseline.latency_ms, baseline.memory_bytes)
    env = CompressionEnv(analysis, evaluator, TradeoffReward(), resources, ActionRange(0.25, 1.0))
    failed = env.evaluate(policy)
    good = env.evaluate(Policy(tuple(UnitAction(n, "prune", 0.5) for n in names if n != bad)))
    assert failed.failure is not None and f"unit '{bad}'" in failed.failure and not failed.feasible
    assert good.failure is None and good.reward > failed.reward
    result = search_result("random", env.history)
    assert result.best is good and failed not in result.pareto
    assert type(failed).from_dict(failed.to_dict()) == failed  # episodes.jsonl keeps it


@pytest.mark.parametrize(
    ("accuracy", "classes", "refused"),
    [(0.12, 10, True), (0.18, 10, True), (0.25, 10, False), (0.52, 2, True), (0.6, 2, False), (0.9, 3, False)],
)
def test_a_teacher_near_chance_is_refused(accuracy, classes, refused):
    if refused:
        with pytest.raises(ModelLoadError, match="near chance .*: set model.weights"):
            check_trained(accuracy, classes, "factory", "set model.weights")
    else:
        check_trained(accuracy, classes, "factory", "set model.weights")


def test_the_near_chance_hint_says_what_to_change_for_where_the_teacher_came_from(tmp_path):
    """A teacher the config trained asks for more epochs; given weights ask for trained weights."""
    trained = _untrained_hint(load_config(None, {"train.epochs": 2}))
    assert "trained for 2 epoch(s): raise train.epochs" in trained
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    given = _untrained_hint(load_config(None, {"model.weights": str(weights)}))
    assert "looks untrained: set model.weights" in given and "epochs" not in given


def test_a_model_that_cannot_ship_at_this_input_size_is_refused_not_blamed_on_units():
    """AdaptiveAvgPool2d(3) on a 14x14 map has no ONNX export: the model as it is cannot ship."""
    model = corpus.make_adaptive_large().eval()
    example = torch.zeros(1, 1, 32, 32)
    analysis = analyze_model(model, example)
    with pytest.raises(ModelLoadError, match=r"uncompressed model cannot ship as ONNX at input \(1, 1, 32, 32\).*"
                       r"adaptive_avg_pool2d.*data.input_size"):
        check_units(model, analysis, PolicyApplier(), torch.randn(2, 1, 32, 32))
