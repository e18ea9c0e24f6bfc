"""summary.json as a typed contract: SearchSummary, its published JSON Schema, its parts."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from modeltailor.compressors.policy import BITS, METHODS, Policy, UnitAction
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats
from modeltailor.env.records import EpisodeRecord
from modeltailor.env.reward import AccuracyFloorReward, BudgetReward, TradeoffReward
from modeltailor.errors import ModelTailorError
from modeltailor.experiments.search.finalize import describe_objective
from modeltailor.experiments.spec.summary import (
    LatencyCacheStats,
    ModelMetrics,
    ObjectiveCheck,
    OnnxParity,
    ParetoPoint,
    PolicyData,
    PolicyUnit,
    SearchAgentInfo,
    SearchSummary,
)
from modeltailor.experiments.tools.pick import load_search_summary

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "summary.schema.json"


def measurement(latency_ms: float, memory: int) -> Measurement:
    latency = LatencyStats(latency_ms, 1.2 * latency_ms, latency_ms, 0.01, 0.9 * latency_ms, 0.02, 40)
    return Measurement(latency, MemoryStats(memory // 2, memory - memory // 2, memory, memory + 100), "cpu-1t")


def record(episode: int, accuracy: float, latency_ms: float, memory: int = 100, bits: int = 32) -> EpisodeRecord:
    policy = Policy((UnitAction("layer1.0", "prune", 0.5, bits), UnitAction("layer2.0", "skip")))
    return EpisodeRecord(
        episode=episode, policy=policy, accuracy=accuracy, latency_ms=latency_ms,
        latency_p90_ms=1.1 * latency_ms, memory_bytes=memory, params=1000, macs=5000, reward=accuracy,
        feasible=True, cached=False, seconds=1.0,
    )


def sample_summary(quantized: bool = False, pareto: list[ParetoPoint] | None = None) -> SearchSummary:
    """A complete summary built from its parts, as build_summary does (no search)."""
    chosen = record(3, 0.9, 0.2, bits=8 if quantized else 32)
    parity = (
        OnnxParity(metric="int8_prediction_disagreement", value=0.01) if quantized
        else OnnxParity(metric="max_abs_logit_diff", value=2e-6)
    )
    policy = PolicyData.from_policy(Policy(chosen.policy.actions, (("input_shape", [1, 1, 16, 16]),)))
    return SearchSummary(
        deployment="edge",
        baseline=ModelMetrics.measured(0.95, 0.94, measurement(0.5, 4000), 8000, 90000, accuracy_all_classes=0.93),
        best=ModelMetrics.measured(0.9, 0.91, measurement(0.2, 1000), 1000, 5000),
        speedup=2.5, memory_reduction=4.0, accuracy_drop=5.0,
        objective=describe_objective(BudgetReward(max_latency_ms=0.25), met=True),
        pareto=pareto if pareto is not None else [ParetoPoint.from_record(chosen)],
        policy=policy, chosen_episode=3, episodes=4, episodes_cached=1,
        latency_cache=LatencyCacheStats(
            enabled=True, path="cache/latency-cache-v3.json", max_age_days=7.0, identity="0123456789ab",
            host="node-1", hits_earlier_runs=2, repeats_this_run=1, measured=5, expired=1,
        ),
        search_agent=SearchAgentInfo(
            proposer="ppo", real_episodes=4, seed_episodes=4, surrogate_episodes=0, prior_samples=0, agent_from="cold",
            experience="cache/experience/resnet20--digits.jsonl", proposals={"agent": 3, "design": 1, "local": 2, "allocation": 2},
        ),
        interrupted=False,
        searcher="ppo", search_seconds=10.0, total_seconds=20.0,
        device={"name": "cpu-1t", "kind": "local", "threads": 1},
        classes=[0, 3, 7], class_names=["0", "3", "7"], subset=True, teacher="cache/resnet20.pt",
        onnx_parity=parity, methods=sorted(chosen.policy.methods()), mlflow_run_id=None,
        config={"name": "edge"},
    )


def key_paths(data: Any, prefix: str = "") -> set[str]:
    """Every key path of nested JSON objects (lists: their first element); free-form maps stop."""
    if isinstance(data, list):
        return key_paths(data[0], prefix + "[]") if data else set()
    if not isinstance(data, dict) or prefix.endswith(("device", "config", "meta")):
        return set()
    return {f"{prefix}.{k}" for k in data} | {p for k, v in data.items() for p in key_paths(v, f"{prefix}.{k}")}


def test_summary_round_trips_through_json():
    summary = sample_summary()
    text = json.dumps(summary.model_dump(mode="json"))
    again = SearchSummary.model_validate(json.loads(text))
    assert again == summary
    assert again.schema_version == 1
    assert again.policy.to_policy().actions == summary.policy.to_policy().actions


def test_float_and_int8_summaries_have_the_same_keys():
    plain, int8 = (sample_summary(quantized=q).model_dump(mode="json") for q in (False, True))
    assert key_paths(plain) == key_paths(int8)
    assert plain["onnx_parity"]["metric"] == "max_abs_logit_diff"
    assert int8["onnx_parity"]["metric"] == "int8_prediction_disagreement"
    assert "int8" in int8["methods"] and "int8" not in plain["methods"]
    assert plain["best"]["accuracy_all_classes"] is None and plain["baseline"]["accuracy_all_classes"] == 0.93


def test_a_summary_without_best_is_rejected_clearly(tmp_path):
    data = sample_summary().model_dump(mode="json")
    del data["best"]
    with pytest.raises(ValidationError, match=r"best\n\s+Field required"):
        SearchSummary.model_validate(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelTailorError, match=r"^'.*summary.json' is not a modeltailor search summary: required key 'best' is missing$"):
        load_search_summary(str(tmp_path))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"onnx_max_abs_diff": 1e-6}, "unknown key 'onnx_max_abs_diff': remove it"),
        ({"device": {"kind": "local"}}, "device: the device needs a 'name'"),
        ({"speedup": "fast"}, "speedup: Input should be a valid number"),
    ],
)
def test_malformed_summaries_name_the_key(tmp_path, change, fragment):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({**sample_summary().model_dump(mode="json"), **change}))
    with pytest.raises(ModelTailorError, match=fragment) as info:
        load_search_summary(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ModelTailorError, match="is not valid JSON"):
        load_search_summary(str(path))


def test_published_schema_is_current():
    """docs/summary.schema.json is what `modeltailor summary-schema` prints: regenerate it with
    `modeltailor summary-schema > docs/summary.schema.json` when the summary changes."""
    schema = SearchSummary.model_json_schema()
    assert json.loads(SCHEMA_FILE.read_text()) == schema, "docs/summary.schema.json is stale"
    contract = {"baseline", "best", "speedup", "accuracy_drop", "pareto", "policy", "episodes",
                "search_seconds", "device", "classes", "mlflow_run_id"}
    assert contract <= set(schema["required"])
    assert schema["additionalProperties"] is False


def test_every_schema_field_has_a_description():
    schema = SearchSummary.model_json_schema()
    models = [schema, *schema["$defs"].values()]
    missing = [f"{m['title']}.{k}" for m in models for k, v in m["properties"].items() if not v.get("description")]
    assert missing == []


def test_policy_data_matches_the_policy_module():
    assert set(get_args(PolicyUnit.model_fields["method"].annotation)) == set(METHODS)
    assert set(get_args(PolicyUnit.model_fields["bits"].annotation)) == set(BITS)
    policy = Policy((UnitAction("a", "lowrank", 0.25, 8),), (("classes", [1, 2]),))
    data = PolicyData.from_policy(policy)
    assert data.model_dump() == policy.to_dict()
    assert data.to_policy() == policy


@pytest.mark.parametrize(
    "reward",
    [BudgetReward(max_latency_ms=0.2, max_memory_bytes=1e6), AccuracyFloorReward(min_accuracy=0.9),
     TradeoffReward()],
)
def test_objective_check_keeps_every_reward_setting(reward):
    check = describe_objective(reward, met=False)
    search_only = {"correction", "reference"}  # the search's floor correction: the final reward never has one
    for f in fields(reward):
        if f.name not in search_only:
            assert getattr(check, f.name) == getattr(reward, f.name)
    assert check.reward == type(reward).__name__ and not check.met_at_final_measurement
    assert set(check.model_dump()) == set(ObjectiveCheck.model_fields)
