"""Joint policies: prune + skip + low-rank + int8 applied, exported, quantized, rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.lowrank import LowRankCompressor, plan_layer
from modeltailor.compressors.pipeline import PolicyApplier, lowrank_units
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import ChannelPruningCompressor, count_params
from modeltailor.compressors.quantization import count_qdq, onnx_predictions
from modeltailor.compressors.units import analyze_model
from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.tools.apply import rebuild
from modeltailor.models import build_model
from tests.test_env import make_env
from tests.test_env import parts as parts  # noqa: F401 - the fixture
from tests.test_search_e2e import TINY

SHAPE = (1, 1, 16, 16)


@pytest.fixture(scope="module")
def model_and_analysis():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, input_size=16, num_classes=10, width=0.5).eval()
    return model, analyze_model(model, torch.zeros(SHAPE))


def mixed_policy(analysis, lowrank: set[str], int8_units: set[str]) -> Policy:
    actions = []
    for unit in analysis.units:
        method = "lowrank" if unit.name in lowrank else "prune"
        actions.append(UnitAction(unit.name, method, 0.5, 8 if unit.name in int8_units else 32))
    return Policy(tuple(actions))


@pytest.mark.parametrize("round_to", [2, 16])
def test_lowrank_units_are_exactly_the_units_a_factorization_shrinks(model_and_analysis, round_to):
    model, analysis = model_and_analysis
    units = lowrank_units(analysis, model, round_to=round_to)
    modules = dict(model.named_modules())
    for unit in analysis.units:
        plan = plan_layer(unit.name, modules[unit.name], 0.5, round_to=round_to)
        assert (unit.name in units) == (plan.scheme is not None and plan.params_after < plan.params_before)
    assert units  # resnet20's 3x3 convs shrink at half rank
    # coarse rounding leaves the narrow stem (1 -> 8 channels) nothing smaller to become
    assert ("features.0.0" in units) == (round_to == 2)


def test_mixed_policy_is_smaller_and_exports(model_and_analysis):
    model, analysis = model_and_analysis
    lowrank = set(sorted(lowrank_units(analysis, model, round_to=2))[:2])
    policy = mixed_policy(analysis, lowrank, set())
    applier = PolicyApplier(ChannelPruningCompressor(round_to=2), LowRankCompressor(round_to=2))
    compressed = applier.apply(model, policy, torch.zeros(SHAPE))
    assert count_params(compressed) < count_params(model)
    assert {"prune", "lowrank"} <= policy.methods()
    x = torch.randn(4, *SHAPE[1:])
    assert compressed(x).shape == (4, 10)
    onnx_bytes = applier.to_onnx(compressed, policy, analysis, SHAPE[1:], x)
    assert count_qdq(onnx_bytes) == 0
    assert onnx_bytes == export_onnx(compressed, SHAPE[1:])


@pytest.mark.parametrize("share", ["some", "all"])
def test_int8_units_are_quantized_in_onnx_runtime(model_and_analysis, share):
    model, analysis = model_and_analysis
    names = [u.name for u in analysis.units]
    # "some": the two largest units, so int8 weights outweigh the scales and QDQ nodes they add
    largest = {u.name for u in sorted(analysis.units, key=lambda u: u.params)[-2:]}
    int8_units = largest if share == "some" else set(names)
    policy = mixed_policy(analysis, set(), int8_units)
    applier = PolicyApplier(ChannelPruningCompressor(round_to=2))
    compressed = applier.apply(model, policy, torch.zeros(SHAPE))
    calibration = torch.randn(16, *SHAPE[1:])
    quantized = applier.to_onnx(compressed, policy, analysis, SHAPE[1:], calibration)
    float_onnx = export_onnx(compressed, SHAPE[1:])
    assert count_qdq(quantized) > 0
    assert len(quantized) < len(float_onnx)
    if share == "all":  # the whole graph: adds and pooling quantized too
        partial = applier.to_onnx(compressed, mixed_policy(analysis, set(), largest), analysis, SHAPE[1:], calibration)
        assert count_qdq(quantized) > count_qdq(partial)
    x = torch.randn(32, *SHAPE[1:])
    agreement = (onnx_predictions(quantized, x) == onnx_predictions(float_onnx, x)).mean()
    assert agreement >= 0.7


def test_joint_env_passes_both_checkers(parts):  # noqa: F811
    teacher, _, _ = parts
    analysis = analyze_model(teacher, torch.zeros(SHAPE))
    env = make_env(parts, lowrank_units=frozenset(lowrank_units(analysis, teacher, 2)))
    assert env.action_space.shape == (3,)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_joint_actions_choose_lowrank_where_allowed(parts):  # noqa: F811
    teacher, _, _ = parts
    allowed = frozenset(lowrank_units(analyze_model(teacher, torch.zeros(SHAPE)), teacher, 2))
    env = make_env(parts, lowrank_units=allowed)
    env.reset()
    for _ in env.units:
        env.step(np.array([0.0, 1.0, -1.0], dtype=np.float32))
    units = {u["unit"]: u for u in env.history[-1].policy.to_dict()["units"]}
    for unit in env.units:
        assert units[unit.name]["method"] == ("lowrank" if unit.name in allowed else "prune")
        assert units[unit.name]["bits"] == 32


@pytest.mark.slow
def test_joint_search_and_apply_rebuild_the_same_int8_model(tmp_path):
    cfg = load_config(None, {**TINY, "search.methods": ["prune", "lowrank", "int8"], "search.episodes": 3,
                             "objective.kind": "tradeoff", "tracking.enabled": False})
    out = tmp_path / "out"
    run_search(cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    policy = Policy.load(out / "policy.json")
    rebuilt = rebuild(cfg, out / "policy.json", tmp_path / "apply", out / "model.pt", 0)
    x = torch.randn(16, 1, 16, 16).numpy()
    searched, again = (out / "model.onnx").read_bytes(), (tmp_path / "apply" / "model.onnx").read_bytes()
    np.testing.assert_array_equal(onnx_predictions(searched, x), onnx_predictions(again, x))
    assert (count_qdq(searched) > 0) == bool(policy.quantized())
    assert summary["methods"] == sorted(policy.methods())
    assert rebuilt["params"] == summary["best"]["params"]


@pytest.mark.slow
def test_int8_at_model_scope_searches_and_ships_a_whole_int8_graph(tmp_path):
    """The default int8 scope: the limiter is seeded with int8 measurements (the uncompressed model
    in int8 is smaller and faster than the float baseline), every episode runs every unit in int8,
    and the shipped graph is quantized whole."""
    from modeltailor.experiments.search.objective import measure_unrecovered
    from modeltailor.experiments.search.workbench import build_workbench

    cfg = load_config(None, {**TINY, "search.methods": ["prune", "int8"], "search.searcher": "random",
                             "objective.kind": "budget", "objective.max_latency_ratio": 0.7, "tracking.enabled": False})
    assert cfg.search.int8_scope == "model"
    bench = build_workbench(cfg)
    names = [u.name for u in bench.analysis.units]
    int8_teacher = measure_unrecovered(bench, Policy.uniform(names, 1.0))
    assert int8_teacher.memory_bytes < 0.5 * bench.baseline.memory_bytes
    assert int8_teacher.architecture != bench.baseline.architecture
    out = tmp_path / "out"
    run_search(cfg, out)
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line.strip()]
    assert len(records) == 3
    for record in records:
        assert {u["bits"] for u in record["policy"]["units"] if u["method"] != "skip"} == {8}
    shipped = (out / "model.onnx").read_bytes()
    assert count_qdq(shipped) > 0 and float_adds(shipped) == 0  # adds too: the whole graph, no int8 islands


def float_adds(onnx_bytes: bytes) -> int:
    """Add nodes with an input that does not come from a DequantizeLinear (not run in int8)."""
    import onnx

    nodes = onnx.load_from_string(onnx_bytes).graph.node
    producer = {out: node.op_type for node in nodes for out in node.output}
    return sum(
        any(producer.get(i) != "DequantizeLinear" for i in node.input) for node in nodes if node.op_type == "Add"
    )


def test_partial_int8_leaves_the_adds_in_float_and_whole_int8_does_not(model_and_analysis):
    """What float_adds tells apart: int8 islands (some units) against the whole graph (every unit)."""
    model, analysis = model_and_analysis
    names = [u.name for u in analysis.units]
    x = torch.randn(8, *SHAPE[1:])
    counts = {}
    for share, units in {"some": set(names[:2]), "all": set(names)}.items():
        policy = Policy(tuple(UnitAction(n, "prune", 1.0, 8 if n in units else 32) for n in names))
        onnx_bytes = PolicyApplier().to_onnx(model, policy, analysis, SHAPE[1:], x)
        counts[share] = float_adds(onnx_bytes)
    assert counts["some"] > 0 and counts["all"] == 0
