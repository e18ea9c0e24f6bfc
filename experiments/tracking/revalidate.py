"""``modeltailor registry revalidate``: each deployment's champion measured again beside its challengers.

A champion took its alias on its own search's final measurement, against the champion's final
measurement of another day (``champions.py``). Revalidation times them again together, on one
machine, at one time, so that what decides is the models and not the load of the day.

Protocol, for every deployment alias (``champion-...``) of the device's registered model:

1. The pool: the champion and up to ``challengers`` other versions of the same deployment (tag
   ``deployment_alias``), the best first by their recorded ranking under the champion's objective.
2. Their ``model.onnx``, downloaded from the registry, timed together on device profile D past any
   latency cache, in alternating rounds (``measure_alternately``, ``repeats`` times the device's
   runs each: every round times each model once, so load that comes and goes hits them alike).
3. Each one's re-measured latency is its median (the quietest round's), its spread the p90 of all
   its timed runs minus that median (``champions.latency_spread_ms``).
4. A challenger takes the alias when it outranks the champion by more than their two re-measured
   spreads under the deployment's objective (``champions.outranks``; accuracy and memory from the
   version's tags, the baseline the champion's); of several, the highest ranked.

Every model is measured before anything is written. Then, unless it is a dry run, each
re-measured version gets the tags ``revalidated_at`` (UTC, ISO 8601), ``revalidated_latency_ms``,
``revalidated_spread_ms``, ``revalidated_profile`` (the fingerprint of profile D on this machine)
and ``revalidated_verdict``, and the aliases move. The ``latency_ms`` tags stay what the searches
measured.

Refusals, one line each (ModelTailorError): an unknown device profile; a latency-table profile
(it predicts latencies, it measures nothing); an unreachable tracking server; a device without
registered models; a device that fails to measure (a device server that is down).

Not imported by the HTTP API: measuring needs ONNX Runtime and the device profiles.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from modeltailor.devices.base import Device
from modeltailor.devices.measurement import LatencyStats
from modeltailor.devices.profiles import get_spec
from modeltailor.env.reward import Resources
from modeltailor.errors import DeviceError, ModelTailorError, NotFoundError
from modeltailor.experiments.spec import files
from modeltailor.experiments.tracking.champions import (
    latency_spread_ms,
    outranks,
    ranking,
    resources,
    spread_of,
)
from modeltailor.experiments.tracking.registry import (
    CHAMPION,
    _client,
    _unknown_device,
    check_device_name,
    download_file,
    measured_profile,
    model_name,
    model_versions,
)
from modeltailor.experiments.tracking.tracker import _mlflow_errors, normalize_tracking_uri

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Remeasured:
    """One version of a deployment, as recorded and as measured again."""

    version: int
    role: str  # champion or challenger (before the revalidation)
    recorded_latency_ms: float
    recorded_spread_ms: float
    latency_ms: float  # re-measured median (the quietest round's)
    spread_ms: float  # re-measured p90 - median
    verdict: str


@dataclass(frozen=True)
class DeploymentCheck:
    """A deployment's champion and challengers measured side by side, and who holds the alias."""

    alias: str
    deployment: str
    champion: int  # before
    winner: int  # after (the champion when it keeps the alias)
    rows: list[Remeasured]

    @property
    def moves(self) -> bool:
        return self.winner != self.champion


@dataclass(frozen=True)
class Revalidation:
    """What ``revalidate`` measured and decided on one device."""

    device: str
    registered_model: str
    profile: str
    at: str
    dry_run: bool
    deployments: list[DeploymentCheck]


@dataclass(frozen=True)
class _Pool:
    alias: str
    champion: ModelVersion
    challengers: list[ModelVersion]

    @property
    def members(self) -> list[ModelVersion]:
        return [self.champion, *self.challengers]


def measuring_device(device: str, profiles: Path | None = None) -> Device:
    """Device profile `device`, built to measure (past any cache); DeviceError when it cannot."""
    spec = get_spec(device, profiles)
    if spec.kind == "table":
        raise DeviceError(
            f"device '{device}' is a latency table: it predicts latencies, it does not measure them; "
            "revalidate on a local-ort or remote device profile"
        )
    return spec.build(device, None, None).uncached()


def revalidate(
    tracking_uri: str, device: str, *, challengers: int = 3, repeats: int = 5, dry_run: bool = False,
    profiles: Path | None = None, progress: Progress | None = None,
) -> Revalidation:
    """Measure every deployment champion of `device` again beside its challengers (module docstring)."""
    if challengers < 1 or repeats < 1:
        raise ModelTailorError(f"challengers ({challengers}) and repeats ({repeats}) must be at least 1")
    say = progress or log.info
    check_device_name(device)
    measuring = measuring_device(device, profiles)
    uri = normalize_tracking_uri(tracking_uri)
    client = _client(uri)
    name = model_name(device)
    with _mlflow_errors(uri):
        pools = _pools(client, device, challengers)
    models = {int(v.version): download_file(uri, device, int(v.version), files.MODEL_ONNX).read_bytes()
              for pool in pools for v in pool.members}
    measured = []
    for pool in pools:
        say(f"measuring {pool.alias}: {', '.join(f'v{v.version}' for v in pool.members)}, alternating")
        measured.append(_measure(measuring, pool, models, repeats))
    checks = [_judge(pool, stats, dry_run) for pool, stats in zip(pools, measured, strict=True)]
    report = Revalidation(device, name, measured_profile(measuring.describe()), datetime.now(UTC).isoformat(timespec="seconds"),
                          dry_run, checks)
    if not dry_run:
        with _mlflow_errors(uri):
            for check in checks:
                _record(client, name, check, report)
    return report


def _pools(client: mlflow.MlflowClient, device: str, limit: int) -> list[_Pool]:
    """Each deployment alias of the device: its champion and its best `limit` other versions."""
    name = model_name(device)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise NotFoundError(_unknown_device(client, device)) from None
    versions = {int(v.version): v for v in model_versions(client, name)}
    pools = []
    for alias, number in sorted(registered.aliases.items()):
        champion = versions.get(int(number))
        if not alias.startswith(CHAMPION) or champion is None:
            continue
        settings, baseline = _objective(champion)
        others = [v for v in versions.values() if v.tags.get("deployment_alias") == alias and v is not champion]
        others.sort(key=lambda v: (ranking(settings, resources(dict(v.tags)), baseline), int(v.version)),
                    reverse=True)
        pools.append(_Pool(alias, champion, others[:limit]))
    return pools


def _objective(champion: ModelVersion) -> tuple[dict, Resources]:
    """The deployment's objective settings and baseline, as its champion recorded them."""
    tags = dict(champion.tags)
    return json.loads(tags["objective_settings"]), resources(tags, "baseline_")


def _measure(device: Device, pool: _Pool, models: dict[int, bytes], repeats: int) -> dict[int, LatencyStats]:
    keys = [int(v.version) for v in pool.members]
    measured = device.measure_alternately({k: models[k] for k in keys}, repeats=repeats)
    return {k: m.latency for k, m in measured.items()}


def _judge(pool: _Pool, stats: dict[int, LatencyStats], dry_run: bool) -> DeploymentCheck:
    settings, baseline = _objective(pool.champion)
    now = {int(v.version): _now(v, stats[int(v.version)]) for v in pool.members}
    spread = {k: latency_spread_ms(s.median_ms, s.p90_ms) for k, s in stats.items()}
    champ = int(pool.champion.version)
    beating = [int(v.version) for v in pool.challengers
               if outranks(settings, now[int(v.version)], now[champ], baseline, spread[int(v.version)] + spread[champ])]
    winner = max(beating, key=lambda k: (ranking(settings, now[k], baseline), -k), default=champ)
    takes, loses = ("would take", "would lose") if dry_run else ("takes", "loses")

    def verdict(k: int) -> str:
        if k == champ:
            return "keeps the alias" if winner == champ else f"{loses} the alias to v{winner}"
        if k == winner:
            return f"{takes} the alias"
        if k in beating:
            return f"beats the champion by more than the noise; v{winner} ranks higher"
        if ranking(settings, now[k], baseline) > ranking(settings, now[champ], baseline):
            return "better only within the noise"
        return "no better"

    rows = [Remeasured(int(v.version), "champion" if v is pool.champion else "challenger",
                       float(v.tags["latency_ms"]), spread_of(dict(v.tags)),
                       stats[int(v.version)].median_ms, spread[int(v.version)], verdict(int(v.version)))
            for v in pool.members]
    return DeploymentCheck(pool.alias, pool.champion.tags.get("deployment", ""), champ, winner, rows)


def _now(version: ModelVersion, stats: LatencyStats) -> Resources:
    """A version's recorded accuracy and memory with its re-measured latency."""
    recorded = resources(dict(version.tags))
    return Resources(recorded.accuracy, stats.median_ms, recorded.memory_bytes)


def _record(client: mlflow.MlflowClient, name: str, check: DeploymentCheck, report: Revalidation) -> None:
    for row in check.rows:
        tags = {"revalidated_at": report.at, "revalidated_latency_ms": repr(row.latency_ms),
                "revalidated_spread_ms": repr(row.spread_ms), "revalidated_profile": report.profile,
                "revalidated_verdict": row.verdict}
        for key, value in tags.items():
            client.set_model_version_tag(name, str(row.version), key, value)
    if check.moves:
        client.set_registered_model_alias(name, check.alias, str(check.winner))
        log.info("%s@%s: version %s (was %s; revalidated)", name, check.alias, check.winner, check.champion)
