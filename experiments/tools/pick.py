"""`modeltailor pick`: another trade-off from a finished search, without searching again.

Reads the search's Pareto set (from its output folder or its MLflow run) and returns the most
accurate result within the given limits. Accuracies are the search-time validation accuracies
(after the episode's short recovery); `modeltailor apply --policy ... --distill-steps N` rebuilds
the picked model and recovers it fully.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modeltailor.compressors.policy import Policy
from modeltailor.errors import ModelTailorError
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.summary import ParetoPoint, SearchSummary
from modeltailor.experiments.tracking.registry import within_limits
from modeltailor.experiments.tracking.tracker import default_tracking_uri, read_artifact_json


def load_search_summary(run: str, tracking_uri: str | None = None) -> SearchSummary:
    """summary.json of a search, from an output folder (or its summary.json) or an MLflow run id."""
    path = Path(run)
    if path.is_dir():
        path = path / files.SUMMARY
    if path.is_file():
        return SearchSummary.load(path)
    if path.suffix or "/" in run:
        raise ModelTailorError(f"'{run}' not found: pass a search's output folder or its MLflow run id")
    data = read_artifact_json(tracking_uri or default_tracking_uri(), run, files.SUMMARY)
    return SearchSummary.from_dict(data, source=f"summary.json of MLflow run '{run}'")


def pick(
    summary: SearchSummary,
    max_latency_ms: float | None = None,
    max_memory_bytes: float | None = None,
    min_accuracy: float | None = None,
) -> ParetoPoint:
    """The most accurate Pareto point within the limits (ties: the faster)."""
    fits = [p for p in summary.pareto if within_limits(p, max_latency_ms, max_memory_bytes, min_accuracy)]
    if not fits:
        fastest = min(summary.pareto, key=lambda p: p.latency_ms, default=None)
        hint = (
            f"; the fastest result is {fastest.latency_ms:.3f} ms at accuracy {fastest.accuracy:.4f}"
            if fastest else ""
        )
        raise ModelTailorError(f"no result of this search meets the limits{hint}: relax them or search again")
    return max(fits, key=lambda p: (p.accuracy, -p.latency_ms))


def picked_policy(summary: SearchSummary, point: ParetoPoint) -> Policy:
    """The picked point's policy with the search's rebuild settings (input shape, classes, ...)."""
    meta = dict(summary.policy.meta)
    meta.pop("kept_channels", None)
    meta["picked_from_episode"] = point.episode
    base = point.policy.to_policy(source="picked policy")
    return replace(base, meta=tuple(sorted(meta.items())))
