"""Everything a search leaves behind: summary.json, policy.json, model.onnx, model.pt, pareto.png.

`summary.json` is a :class:`~modeltailor.experiments.spec.summary.SearchSummary` (the contract in DESIGN.md; its
JSON Schema is ``docs/summary.schema.json``, printed by ``modeltailor summary-schema``):
`baseline` and `best` (accuracy on the test split as a fraction, median latency on the
deployment's device, memory, params), `speedup`, `accuracy_drop` (points), `pareto`, `policy`,
`episodes`, `search_seconds`, `device`, `classes`, `mlflow_run_id`, and more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from modeltailor.compressors.policy import Policy
from modeltailor.env.records import EpisodeRecord, SearchResult
from modeltailor.experiments.search.finalize import FinalResult
from modeltailor.experiments.search.plots import plot_pareto
from modeltailor.experiments.search.workbench import Workbench
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.summary import (
    FloorJudgement,
    LatencyCacheStats,
    ModelMetrics,
    ParetoPoint,
    PolicyData,
    SearchAgentInfo,
    SearchSummary,
    SubsetGain,
)
from modeltailor.experiments.tracking.tracker import TRAINING_VIEW, Tracker


def policy_with_meta(bench: Workbench, record: EpisodeRecord) -> Policy:
    """The chosen policy plus what it takes to rebuild it on the original model."""
    config = bench.config
    meta = {
        "model": config.model.factory or config.model.name,
        "model_kwargs": config.model.kwargs,
        "input_shape": list(bench.input_shape),
        "num_classes": bench.splits.num_classes,
        "classes": bench.classes,
        "importance": config.search.importance,
        "round_to": config.search.round_to,
        "lowrank_scheme": config.search.lowrank_scheme,
        "kept_channels": record.kept_channels,
    }
    base = record.policy
    return replace(base, meta=tuple(sorted(meta.items())))


@dataclass(frozen=True)
class RunInfo:
    """How long the search took and where it was tracked."""

    search_seconds: float
    total_seconds: float
    mlflow_run_id: str | None
    accuracy_floor: FloorJudgement | None = None
    subset_gain: SubsetGain | None = None


def build_summary(
    bench: Workbench, result: SearchResult, final: FinalResult, info: RunInfo, policy: Policy
) -> SearchSummary:
    chosen = final.chosen
    baseline = ModelMetrics.measured(
        final.baseline_test_accuracy, bench.baseline.accuracy, final.baseline, bench.baseline.params,
        bench.baseline.macs,
        # the teacher predicting among all of its classes, on the deployment's test images
        accuracy_all_classes=final.baseline_test_accuracy_all_classes,
    )
    best = ModelMetrics.measured(
        final.test_accuracy, chosen.val_accuracy, final.best, chosen.record.params, chosen.record.macs
    )
    return SearchSummary(
        deployment=bench.config.name,
        baseline=baseline,
        best=best,
        speedup=baseline.latency_ms / best.latency_ms,
        memory_reduction=baseline.memory_bytes / best.memory_bytes,
        accuracy_drop=100.0 * (baseline.accuracy - best.accuracy),
        objective=final.objective,
        pareto=[ParetoPoint.from_record(r) for r in result.pareto],
        policy=PolicyData.from_policy(policy),
        chosen_episode=chosen.record.episode,
        episodes=len(result.episodes),
        episodes_cached=sum(r.cached for r in result.episodes),
        latency_cache=LatencyCacheStats(**bench.latency_cache.stats()) if bench.latency_cache is not None else None,
        final_timing=final.best.timed,
        search_agent=SearchAgentInfo(**result.notes) if result.notes else None,
        accuracy_floor=info.accuracy_floor,
        subset_gain=info.subset_gain,
        interrupted=result.interrupted,
        searcher=result.searcher,
        search_seconds=info.search_seconds,
        total_seconds=info.total_seconds,
        device={"name": bench.config.device.name, **bench.device.describe()},
        classes=bench.output_classes,
        class_names=[bench.splits.class_names[c] for c in bench.output_classes],
        subset=bench.classes is not None,
        teacher=bench.teacher_source,
        onnx_parity=final.onnx_parity,
        methods=sorted(policy.methods()),
        mlflow_run_id=info.mlflow_run_id,
        config=bench.config.model_dump(mode="json"),
    )


def write_outputs(
    out_dir: Path,
    bench: Workbench,
    result: SearchResult,
    final: FinalResult,
    info: RunInfo,
    tracker: Tracker | None,
) -> SearchSummary:
    """Write every output file (see files.ARTIFACTS) to ``out_dir``; log them to ``tracker``."""
    policy = policy_with_meta(bench, final.chosen.record)
    summary = build_summary(bench, result, final, info, policy)
    policy.save(out_dir / files.POLICY)
    (out_dir / files.MODEL_ONNX).write_bytes(final.onnx_bytes)
    torch.save(final.chosen.model.state_dict(), out_dir / files.MODEL_WEIGHTS)
    plot_pareto(
        [r.to_dict() for r in result.episodes],
        [p.model_dump() for p in summary.pareto],
        {**summary.baseline.model_dump(), "accuracy": summary.baseline.val_accuracy},
        final.chosen.record.to_dict(),
        out_dir / files.PARETO_PLOT,
    )
    (out_dir / files.SUMMARY).write_text(json.dumps(summary.model_dump(mode="json"), indent=2) + "\n")
    if tracker is not None:
        tracker.log_metrics(final_metrics(summary))
        for name in files.ARTIFACTS:
            tracker.log_artifact(out_dir / name)
        for name in files.OPTIONAL_ARTIFACTS:
            if (out_dir / name).is_file():
                tracker.log_artifact(out_dir / name)
    return summary


def final_metrics(summary: SearchSummary) -> dict[str, float]:
    metrics = {"final/speedup": summary.speedup, "final/accuracy_drop_points": summary.accuracy_drop}
    for side, entry in (("baseline", summary.baseline), ("best", summary.best)):
        for key in ("accuracy", "latency_ms", "latency_p90_ms", "memory_bytes", "params"):
            metrics[f"{side}/{key}"] = float(getattr(entry, key))
    return metrics


def run_description(summary: SearchSummary, run_id: str, experiment_id: str, registered: Any = None) -> str:
    """The search run's description in the MLflow UI (markdown): the result table, the objective,
    the registered version and its logged model, and the Pareto plot."""
    b, c = summary.baseline, summary.best
    config = summary.config
    model = config.get("model", {}).get("factory") or config.get("model", {}).get("name")
    classes = ",".join(map(str, summary.classes)) if summary.subset else "all"
    limits = ", ".join(f"{k} {v:,.4g}" for k, v in summary.objective.limits().items())
    met = "met" if summary.objective.met_at_final_measurement else "**not met**"
    lines = [
        f"**{summary.deployment}**: {model} on {config.get('data', {}).get('name')}, classes {classes}, "
        f"device `{summary.device['name']}`, objective {summary.objective.name}"
        + (f" ({limits})" if limits else "") + f": {met}",
        "",
        "| | test accuracy | latency (ms) | memory (bytes) | params |",
        "|---|---:|---:|---:|---:|",
        f"| baseline | {b.accuracy:.4f} | {b.latency_ms:.3f} | {b.memory_bytes:,} | {b.params:,} |",
        f"| chosen | {c.accuracy:.4f} | {c.latency_ms:.3f} | {c.memory_bytes:,} | {c.params:,} |",
        "",
        f"{summary.speedup:.2f}x faster, {summary.memory_reduction:.2f}x less memory, accuracy drop "
        f"{summary.accuracy_drop:+.2f} points; methods {', '.join(summary.methods) or 'none'}; "
        f"{summary.episodes} episodes ({summary.searcher}), search {summary.search_seconds:.0f} s.",
        "",
    ]
    if registered is not None:
        name = f"modeltailor-{registered.device}"
        lines.append(
            f"Registered as [{name} version {registered.version}](#/models/{name}/versions/{registered.version}{TRAINING_VIEW})"
            + (f", alias `{', '.join(registered.aliases)}`" if registered.aliases else "")
            + (f"; logged model [{registered.model_id}](#/experiments/{experiment_id}/models/{registered.model_id}{TRAINING_VIEW})"
               if registered.model_id else "") + "."
        )
        lines.append("")
    lines.append(f"![Pareto front](get-artifact?path=pareto.png&run_uuid={run_id})")
    return "\n".join(lines)
