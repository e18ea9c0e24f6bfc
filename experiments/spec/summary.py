"""``summary.json``: the published result contract of one search (pydantic; its JSON Schema is
``docs/summary.schema.json``), with its parts :class:`ModelMetrics`, :class:`ParetoPoint`,
:class:`ObjectiveCheck`, :class:`OnnxParity`, :class:`LatencyCacheStats` and :class:`PolicyData` (the
``policy.json`` form).

Every key is always present (null where it does not apply), whatever the model or objective.
Torch-free: the HTTP API reads summaries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from modeltailor.common.validation import Strict, validation_line
from modeltailor.compressors.policy import POLICY_FORMAT, Policy
from modeltailor.devices.measurement import Measurement
from modeltailor.env.records import EpisodeRecord
from modeltailor.errors import ModelTailorError

SUMMARY_SCHEMA_VERSION = 1


class PolicyUnit(Strict):
    """What the policy does to one unit (a prunable channel group and the layers it feeds)."""

    unit: str = Field(description="unit name: the module path of the unit's root layer")
    method: Literal["prune", "skip", "lowrank"] = Field(
        description="prune: keep `keep` of the channels; skip: remove the residual block; "
        "lowrank: factorize the root layer at rank ratio `keep`"
    )
    keep: float = Field(description="fraction of channels (prune) or of the rank (lowrank) kept, in (0, 1]")
    bits: Literal[32, 8] = Field(description="8: the unit's layers run in int8 (ONNX Runtime QDQ); 32: float")


class PolicyData(Strict):
    """A compression policy in its policy.json form: plain data, never pickled code."""

    format: int = Field(default=POLICY_FORMAT, description="policy format version")
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description="what it takes to rebuild the model (model, input_shape, classes, importance, ...)",
    )
    units: list[PolicyUnit] = Field(description="one action per unit, in the model's unit order")
    downsample: Literal[1, 2] = Field(
        default=1,
        description="2: the first convolution runs at twice its stride (every later feature map a quarter of "
        "the size; search.downsample); 1: as the teacher",
    )

    @classmethod
    def from_policy(cls, policy: Policy) -> PolicyData:
        return cls.model_validate(policy.to_dict())

    def to_policy(self, source: str = "policy") -> Policy:
        """The :class:`Policy`; CompressionError naming ``source`` when an action is invalid."""
        return Policy.from_dict(self.model_dump(mode="json"), source=source)


class ModelMetrics(Strict):
    """One model (the baseline or the chosen one) measured at the end of the search."""

    accuracy: float = Field(description="test-split accuracy, a fraction in [0, 1]")
    val_accuracy: float = Field(description="validation-split accuracy, a fraction in [0, 1]")
    latency_ms: float = Field(
        description="median latency on the deployment's device (ms; timed in rounds: the quietest round's)"
    )
    latency_p90_ms: float = Field(description="90th percentile of every timed run (ms)")
    latency_pooled_median_ms: float | None = Field(
        description="median of every timed run (ms); null where the device does not report it"
    )
    latency_spread: float = Field(description="(p90 - median) / median: how heavy the slow tail is")
    latency_runs: int = Field(description="timed runs behind the latency figures")
    memory_bytes: int = Field(description="weights plus peak activations at batch 1 (bytes)")
    weight_bytes: int = Field(description="constant data of the ONNX graph, at its stored size (bytes)")
    activation_bytes: int = Field(description="peak of live intermediate tensors at batch 1 (bytes)")
    onnx_bytes: int = Field(description="size of the ONNX file (bytes)")
    params: int = Field(description="parameter count")
    macs: int = Field(description="multiply-accumulates per image")
    accuracy_all_classes: float | None = Field(
        description="baseline only: the teacher's test accuracy predicting among all of its classes, "
        "on the deployment's test images; null for best",
    )

    @classmethod
    def measured(
        cls, accuracy: float, val_accuracy: float, m: Measurement, params: int, macs: int,
        accuracy_all_classes: float | None = None,
    ) -> ModelMetrics:
        return cls(
            accuracy=accuracy, val_accuracy=val_accuracy,
            latency_ms=m.latency.median_ms, latency_p90_ms=m.latency.p90_ms,
            latency_pooled_median_ms=m.latency.pooled_median_ms, latency_spread=m.latency.spread,
            latency_runs=m.latency.runs, memory_bytes=m.memory.total_bytes,
            weight_bytes=m.memory.weight_bytes, activation_bytes=m.memory.peak_activation_bytes,
            onnx_bytes=m.memory.onnx_file_bytes, params=params, macs=macs,
            accuracy_all_classes=accuracy_all_classes,
        )


class ParetoPoint(Strict):
    """One search episode on the Pareto front (accuracy vs latency vs memory), as measured during the search."""

    episode: int = Field(description="episode number (0-based)")
    val_accuracy: float = Field(description="validation accuracy after the episode's short recovery")
    accuracy: float = Field(description="the same validation accuracy (what `modeltailor pick` compares)")
    latency_ms: float = Field(description="median latency on the search's device (ms)")
    memory_bytes: int = Field(description="weights plus peak activations at batch 1 (bytes)")
    params: int = Field(description="parameter count")
    feasible: bool = Field(description="whether the episode met the search's objective")
    policy: PolicyData = Field(description="the episode's policy (rebuild settings: the summary's `policy.meta`)")

    @classmethod
    def from_record(cls, record: EpisodeRecord) -> ParetoPoint:
        return cls(
            episode=record.episode, val_accuracy=record.accuracy, accuracy=record.accuracy,
            latency_ms=record.latency_ms, memory_bytes=record.memory_bytes, params=record.params,
            feasible=record.feasible, policy=PolicyData.from_policy(record.policy),
        )


class ObjectiveCheck(Strict):
    """The objective's reward, its limits in absolute units, and whether the final measurement meets them."""

    reward: str = Field(description="reward class: BudgetReward, AccuracyFloorReward or TradeoffReward")
    name: str = Field(description="objective kind the reward implements: budget, accuracy or tradeoff")
    max_latency_ms: float | None = Field(default=None, description="latency limit (ms); null if none")
    max_memory_bytes: float | None = Field(default=None, description="memory limit (bytes); null if none")
    min_accuracy: float | None = Field(default=None, description="test accuracy floor (fraction); null if none")
    minimize: str | None = Field(default=None, description="accuracy objective: what it minimizes (latency or memory)")
    penalty: float | None = Field(default=None, description="reward penalty per unit of missed limit; null if none")
    accuracy_weight: float | None = Field(default=None, description="tradeoff objective: weight of accuracy")
    latency_weight: float | None = Field(default=None, description="tradeoff objective: weight of log speedup")
    memory_weight: float | None = Field(default=None, description="tradeoff objective: weight of log memory reduction")
    met_at_final_measurement: bool = Field(description="whether the chosen model's final measurement meets the limits")

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        named = {"max_latency_ms": self.max_latency_ms, "max_memory_bytes": self.max_memory_bytes,
                 "min_accuracy": self.min_accuracy}
        return {k: v for k, v in named.items() if v is not None}


class OnnxParity(Strict):
    """How closely the exported model.onnx matches the torch model it was exported from."""

    metric: Literal["max_abs_logit_diff", "int8_prediction_disagreement"] = Field(
        description="float model: largest |ONNX - torch| logit difference; int8 model: fraction of test "
        "predictions where ONNX Runtime's int8 model and the float torch model disagree"
    )
    value: float = Field(description="the metric's value (0 = identical)")


class SearchAgentInfo(Strict):
    """How a surrogate-assisted search (ppo, evolution-surrogate) spent its episodes and where its agent came from."""

    proposer: str = Field(description="what learned on the surrogate and proposed policies: ppo or evolution")
    real_episodes: int = Field(description="real episodes (compressed, recovered, measured) this run spent")
    seed_episodes: int = Field(description="of them, seed episodes (a space-filling design) for a surrogate short of experience")
    surrogate_episodes: int = Field(description="episodes played on the surrogate (milliseconds each)")
    prior_samples: int = Field(description="earlier real episodes of this model, data and recovery the surrogate started from")
    agent_from: str = Field(description="cold, warm (another search's agent, checked against a surrogate-ranked "
                            "space-filling design), 'cold (the warm start fell back)', or resumed")
    warm_start: str | None = Field(default=None, description="the run id or path of the warm start's agent checkpoint")
    warm_check: dict[str, Any] | None = Field(
        default=None, description="the warm agent's and its rival's (a surrogate-ranked space-filling design) "
        "best real rewards, and which agent went on")
    predictor: dict[str, Any] | None = Field(
        default=None, description="the accuracy predictor: its kind and every candidate's cross-validated Kendall tau"
    )
    experience: str | None = Field(default=None, description="the experience file read and appended (null: off)")
    proposals: dict[str, int] | None = Field(
        default=None, description="of the real episodes after the seeds, how many went to the agent's models, how "
        "many to the space-filling design's and (ppo) how many to mutations of the best real episodes (local) and "
        "to greedy's allocations from the surrogate's predicted sensitivities (allocation), all ranked by the surrogate")
    deployment_variants: int = Field(
        default=0, description="ppo: variants of the deployment (budgets, floors, class subsets) its agent also learned on"
    )


class LatencyCacheStats(Strict):
    """Where the search's latencies came from: the persistent latency cache, repeats, or the device.

    Counts every latency the search asked of its device outside the final comparison (the limiter's
    calibration models and every episode measured; the baseline and the final comparison are
    always timed fresh and not counted), in this invocation only (a --resume counts what it ran).
    """

    enabled: bool = Field(description="whether the persistent cache was on (false: --no-cache or device.cache: false)")
    path: str | None = Field(description="the cache file; null when the persistent cache was off")
    max_age_days: float = Field(description="entries older than this many days were measured again")
    identity: str = Field(
        description="hash of the measurement identity the entries were keyed on: host, CPU model, the device's "
        "kind and settings (threads, graph optimization, url, runs, warm-up, rounds, ONNX Runtime version)"
    )
    host: str = Field(description="the host the search ran on; entries are served on the host that measured them only")
    hits_earlier_runs: int = Field(
        description="latencies served from entries measured earlier on this host (earlier runs, or other processes)"
    )
    repeats_this_run: int = Field(description="latencies served from entries this search measured itself")
    measured: int = Field(description="latencies measured on the device")
    expired: int = Field(description="of `measured`: models whose cached entry was past max_age_days")


class FloorJudgement(Strict):
    """How an accuracy objective's search judged its episodes against the floor."""

    judged_by: Literal["learned correction", "search_slack"] = Field(
        description="learned correction: each episode's accuracy after its long recovery, predicted from earlier "
        "finalists; search_slack: the floor relaxed by objective.search_slack points"
    )
    finalists: int = Field(description="earlier finalists (episode and long-recovery accuracy) the correction was fitted on")
    correction: list[list[float]] | None = Field(
        default=None, description="the fitted correction's knots: [episode drop, predicted final drop] in points"
    )


class SubsetGain(Strict):
    """What a class subset bought on this model and device: its fastest episode within the floor
    against the fastest all-class episode within the same drop, from the experience."""

    subset_speedup: float = Field(description="this search's fastest episode within the drop: baseline latency / its latency")
    all_class_speedup: float = Field(description="the same over earlier all-class episodes of this model, data, "
                                     "recovery and device")
    all_class_episodes: int = Field(description="earlier all-class episodes compared (all, within the drop or not)")
    max_drop: float = Field(description="the accuracy drop (points, after the episode's short recovery) both were held to")
    ratio: float = Field(description="subset_speedup / all_class_speedup")
    pays: bool = Field(description="whether the subset is at least 10% faster than all classes within the same drop")
    says: str = Field(description="the verdict in one sentence")


class SearchSummary(Strict):
    """summary.json: what one search of one deployment found, measured on the deployment's device.

    Accuracies are fractions, latencies milliseconds, memory bytes. `baseline` and `best` are
    timed together at the end of the search, alternating where the device can (`final_timing`).
    """

    schema_version: int = Field(default=SUMMARY_SCHEMA_VERSION, description="version of this summary format")
    deployment: str = Field(description="deployment name")
    baseline: ModelMetrics = Field(description="the original model (the teacher, narrowed to the deployment's classes)")
    best: ModelMetrics = Field(description="the chosen compressed model (model.onnx)")
    speedup: float = Field(description="baseline latency / best latency")
    memory_reduction: float = Field(description="baseline memory / best memory")
    accuracy_drop: float = Field(description="baseline minus best test accuracy, in percentage points")
    objective: ObjectiveCheck = Field(description="the objective and whether the final measurement meets it")
    pareto: list[ParetoPoint] = Field(description="the search's Pareto set")
    policy: PolicyData = Field(description="the chosen policy, as in policy.json")
    chosen_episode: int = Field(description="the episode whose policy was chosen")
    episodes: int = Field(description="episodes searched (resumed ones included)")
    episodes_cached: int = Field(
        description="episodes whose architecture an earlier episode of this search already evaluated: its accuracy "
        "and latency reused, nothing recovered or measured (repeats within the search; see `latency_cache` for "
        "latencies served from earlier runs)"
    )
    latency_cache: LatencyCacheStats | None = Field(
        default=None,
        description="latencies served from the persistent cache, repeated within the search, or measured; null "
        "when the search was handed a device of its own (and in summaries written before it existed)",
    )
    final_timing: str | None = Field(
        default=None,
        description="how `baseline` and `best` were timed against each other: alternating (interleaved rounds "
        "on the device, so load hit both alike), sequential (one after the other: a device server too old to "
        "alternate; load in between skews the speedup), predicted (a latency table: nothing timed); null in "
        "summaries written before it existed",
    )
    search_agent: SearchAgentInfo | None = Field(
        default=None, description="surrogate-assisted searchers: real and surrogate episodes, where the agent came from"
    )
    accuracy_floor: FloorJudgement | None = Field(
        default=None, description="accuracy objective: how episodes were judged against the floor during the search"
    )
    subset_gain: SubsetGain | None = Field(
        default=None, description="a class subset under an accuracy floor: whether it made the model faster than "
        "all classes do on this model and device (null: not a subset, no floor, or no all-class episode to compare)"
    )
    interrupted: bool = Field(description="whether the search was stopped early (Ctrl-C)")
    searcher: str = Field(description="the searcher: ppo, ppo-real, evolution-surrogate, random, uniform, greedy, evolution, ddpg")
    search_seconds: float = Field(description="time spent searching (s)")
    total_seconds: float = Field(description="time of the whole run, finalization included (s)")
    device: dict[str, Any] = Field(
        description="the deployment's device: `name` plus what the device describes of itself (kind, threads, url, ...)",
        json_schema_extra={"required": ["name"], "properties": {"name": {"type": "string"}}},
    )
    classes: list[int] = Field(description="class ids the deployment predicts, in output order")
    class_names: list[str] = Field(description="names of `classes`, in the same order")
    subset: bool = Field(description="whether the deployment predicts a subset of the model's classes")
    teacher: str = Field(description="where the original model came from (weights file or cache entry)")
    onnx_parity: OnnxParity = Field(description="model.onnx checked against the torch model")
    methods: list[str] = Field(description="compression methods the chosen policy uses (prune, skip, lowrank, int8, downsample)")
    mlflow_run_id: str | None = Field(description="MLflow run of the search; null when tracking is off")
    config: dict[str, Any] = Field(description="the effective deployment config, defaults filled in")

    @field_validator("device")
    @classmethod
    def _device_has_a_name(cls, device: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(device.get("name"), str):
            raise ValueError("the device needs a 'name' (a string)")
        return device

    @classmethod
    def from_dict(cls, data: Any, source: str = "summary") -> SearchSummary:
        """Validated summary; a one-line ModelTailorError naming ``source`` when it is not one."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            line = validation_line(exc, f"{source} is not a modeltailor search summary")
            raise ModelTailorError(line + more) from None

    @classmethod
    def load(cls, path: Path) -> SearchSummary:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelTailorError(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, source=f"'{path}'")
