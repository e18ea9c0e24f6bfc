"""The best policy per device: MLflow's model registry.

Naming. One registered model per device profile, ``modeltailor-<device>`` (``modeltailor-cpu-1t``).
Every finished deployment (a single search or a campaign trial) adds a version to its device's
model: the chosen ONNX model logged as an MLflow model (onnx flavor, signature, input example,
CPU execution provider) with ``policy.json`` and ``summary.json`` beside it (``extra_files/``),
tagged with what a query needs (model, data set, classes, objective, accuracy, latency, memory,
speedup, campaign, run).

Aliases. A *deployment* on a device is (model, data set, classes, objective). Each has its own
alias, ``champion-<model>-<data>-<classes>-<objective kind>-<hash>`` (the hash covers the objective's
settings), which moves to a new version only when the new version beats the current champion
under the new deployment's own objective (feasible first, then its reward, with the deployment's
baseline) by more than the two versions' measured latency spread (tag ``latency_spread_ms``),
measured on the same device profile: a champion measured under a different profile (other
threads, ONNX Runtime version or CPU) is replaced. The exact rule: ``experiments/tracking/
champions.py``; ``modeltailor registry revalidate`` applies it to latencies measured again side by
side (``experiments/tracking/revalidate.py``). Re-registering a run returns its existing version
and changes nothing.

Queries (`best`): the versions of the device for exactly the asked class set (all classes when
none are asked), within the limits. With no limits the answer is the deployment champions' most
accurate; with limits, the most accurate version within them (ties: faster, then smaller). The
other fitting versions on the accuracy/latency/memory Pareto front come back as runners-up. A
query nothing satisfies raises NoMatchError naming the closest versions.

Torch-free: the HTTP API imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field

from modeltailor.common.storage import cache_dir
from modeltailor.devices.cache import cpu_model
from modeltailor.errors import ModelTailorError, NoMatchError, NotFoundError
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.summary import SearchSummary
from modeltailor.experiments.tracking.champions import SPREAD_TAG, beats, latency_spread_ms
from modeltailor.experiments.tracking.tracker import (
    _mlflow_errors,
    check_reachable,
    normalize_tracking_uri,
    quiet_mlflow_logging,
)

log = logging.getLogger(__name__)

MODEL_PREFIX = "modeltailor-"
CHAMPION = "champion"
PROFILE_KEYS = ("name", "kind", "intra_op_threads", "graph_optimization_level", "onnxruntime", "url", "cpu")
_FLUENT = threading.Lock()  # log_model reads the process-wide tracking URI
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,99}$")


# -- what a query answers -----------------------------------------------------------------------


class VersionInfo(BaseModel):
    """One registered version, as its tags describe it."""

    device: str
    version: int
    run_id: str | None = None
    deployment: str = Field(description="the deployment's name in its search or campaign")
    deployment_alias: str = Field(description="the champion alias of the deployment (see registry naming)")
    model: str
    dataset: str
    classes: list[int]
    objective: str = Field(description="objective kind: budget, accuracy or tradeoff")
    objective_met: bool
    accuracy: float = Field(description="test accuracy, a fraction")
    latency_ms: float = Field(description="median latency on the device (ms)")
    memory_bytes: int
    speedup: float
    memory_reduction: float
    baseline_accuracy: float
    baseline_latency_ms: float
    campaign: str | None = None
    aliases: list[str] = Field(default_factory=list)
    model_id: str | None = Field(default=None, description="the MLflow logged model behind the version")
    created: int = Field(default=0, description="creation time, ms since the epoch")

    @property
    def champion(self) -> bool:
        return any(a.startswith(CHAMPION) for a in self.aliases)


class BestAnswer(BaseModel):
    """What `modeltailor best` and `GET /v1/devices/{name}/best` answer."""

    device: str
    registered_model: str
    filters: dict[str, Any]
    rule: str = Field(description="how the chosen version was picked")
    chosen: VersionInfo
    runners_up: list[VersionInfo] = Field(description="other fitting versions on the Pareto front")
    policy: dict[str, Any] = Field(description="the chosen version's policy.json")


class DeviceEntry(BaseModel):
    device: str
    registered_model: str
    versions: int
    champions: list[VersionInfo]


# -- names -------------------------------------------------------------------------------------


def model_name(device: str) -> str:
    """The registered model of a device profile."""
    return f"{MODEL_PREFIX}{device}"


def check_device_name(device: str) -> str:
    if not _NAME.match(device or ""):
        raise ModelTailorError(
            f"device '{device}' is not a device name: use letters, digits, '.', '_' or '-' (e.g. cpu-1t)"
        )
    return device


def deployment_alias(summary: SearchSummary) -> str:
    """champion-<model>-<data>-<classes>-<objective kind>-<hash of the objective settings>."""
    config = summary.config
    model = _slug(str(config.get("model", {}).get("factory") or config.get("model", {}).get("name") or "model"))
    data = _slug(str(config.get("data", {}).get("name") or "data"))
    classes = "c" + "_".join(map(str, summary.classes)) if summary.subset else "all"
    objective = config.get("objective", {})
    identity = json.dumps({"model": config.get("model"), "data": config.get("data"),
                           "classes": summary.classes, "objective": objective}, sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:6]
    return f"{CHAMPION}-{model}-{data}-{classes}-{summary.objective.name}-{digest}"[:250]


def _slug(text: str) -> str:
    return re.sub(r"[^\w\-]+", "_", text.rsplit(":", 1)[-1].rsplit(".", 1)[-1])[:40] or "x"


def profile_fingerprint(device: dict[str, Any]) -> str:
    """What makes two latency measurements comparable: the profile's settings and the CPU."""
    kept = {k: device.get(k) for k in PROFILE_KEYS if device.get(k) is not None}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


# -- registering -------------------------------------------------------------------------------


def measured_profile(device: dict[str, Any]) -> str:
    """The fingerprint of a device as it describes itself, a local device's CPU model added (a
    local-ort description names no CPU: where it measured is this machine)."""
    info = dict(device)
    if info.get("kind") == "local-ort":
        info.setdefault("cpu", cpu_model())
    return profile_fingerprint(info)


def _client(tracking_uri: str) -> mlflow.MlflowClient:
    quiet_mlflow_logging()
    uri = normalize_tracking_uri(tracking_uri)
    check_reachable(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _version_tags(summary: SearchSummary, campaign: str | None, fingerprint: str) -> dict[str, str]:
    config = summary.config
    tags = {
        "device": summary.device["name"],
        "deployment": summary.deployment,
        "deployment_alias": deployment_alias(summary),
        "model": str(config.get("model", {}).get("factory") or config.get("model", {}).get("name") or ""),
        "dataset": str(config.get("data", {}).get("name") or ""),
        "classes": ",".join(map(str, summary.classes)),
        "subset": str(summary.subset).lower(),
        "objective": summary.objective.name,
        "objective_settings": json.dumps(summary.objective.model_dump(mode="json"), sort_keys=True),
        "objective_met": str(summary.objective.met_at_final_measurement).lower(),
        "accuracy": repr(summary.best.accuracy),
        "latency_ms": repr(summary.best.latency_ms),
        SPREAD_TAG: repr(latency_spread_ms(summary.best.latency_ms, summary.best.latency_p90_ms)),
        "memory_bytes": str(summary.best.memory_bytes),
        "speedup": repr(summary.speedup),
        "memory_reduction": repr(summary.memory_reduction),
        "baseline_accuracy": repr(summary.baseline.accuracy),
        "baseline_latency_ms": repr(summary.baseline.latency_ms),
        "baseline_memory_bytes": str(summary.baseline.memory_bytes),
        "methods": ",".join(summary.methods),
        "profile": fingerprint,
        "run_id": summary.mlflow_run_id or "",
    }
    if campaign:
        tags["campaign"] = campaign
    return tags


def register_search(tracking_uri: str, out_dir: Path, summary: SearchSummary | None = None) -> VersionInfo:
    """Register the finished search in `out_dir` (model.onnx, policy.json, summary.json) as a version
    of its device's registered model and move the deployment's champion alias if it wins.
    Idempotent: a run already registered returns its version unchanged."""
    out_dir = Path(out_dir)
    summary = summary or SearchSummary.load(out_dir / files.SUMMARY)
    for name in files.REGISTERED:
        if not (out_dir / name).is_file():
            raise ModelTailorError(f"'{out_dir}' has no {name}: register a finished search's output folder")
    run_id = summary.mlflow_run_id
    if not run_id:
        raise ModelTailorError(
            f"'{out_dir}' was searched without tracking (no MLflow run): search again with tracking on"
        )
    client = _client(tracking_uri)
    uri = normalize_tracking_uri(tracking_uri)
    device = check_device_name(summary.device["name"])
    name = model_name(device)
    with _mlflow_errors(uri):
        experiment_id = client.get_run(run_id).info.experiment_id
    with _mlflow_errors(uri), _tracking_uri_set(uri, experiment_id):  # the registry resolves logged models so
        existing = _version_of_run(client, name, run_id)
        if existing is not None:
            return _info(client, existing)
        _ensure_registered_model(client, name, device)
        campaign = _campaign_of(client, run_id)
        tags = _version_tags(summary, campaign, measured_profile(summary.device))
        model_id, source = _log_onnx_model(run_id, out_dir, summary)
        version = client.create_model_version(
            name, source=source, run_id=run_id, tags=tags, model_id=model_id,
            description=f"{summary.deployment}: accuracy {summary.best.accuracy:.4f}, "
            f"{summary.best.latency_ms:.3f} ms ({summary.speedup:.2f}x), {summary.best.memory_bytes:,} bytes",
        )
        _link_logged_model(client, model_id, name, int(version.version))
        _crown_if_better(client, name, version, summary)
        return _info(client, client.get_model_version(name, version.version))


def _link_logged_model(client: mlflow.MlflowClient, model_id: str, name: str, version: int) -> None:
    """Tag the logged model with its registered version, as mlflow.register_model does, so the UI
    shows the version beside the run's logged model."""
    tag = "mlflow.modelVersions"
    current = json.loads(client.get_logged_model(model_id).tags.get(tag) or "[]")
    entry = {"name": name, "version": version}
    if entry not in current:
        client.set_logged_model_tags(model_id, {tag: json.dumps([*current, entry])})


def _version_of_run(client: mlflow.MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _ensure_registered_model(client: mlflow.MlflowClient, name: str, device: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, tags={"device": device, "modeltailor": "device"},
                description=f"modeltailor: compressed models measured on device profile '{device}'. "
                "Aliases champion-<model>-<data>-<classes>-<objective>-<hash> mark each deployment's best.",
            )
        except MlflowException:  # created by a concurrent trial meanwhile
            client.get_registered_model(name)


def _campaign_of(client: mlflow.MlflowClient, run_id: str) -> str | None:
    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    if not parent:
        return None
    try:
        return client.get_run(parent).data.tags.get("campaign")
    except MlflowException:
        return None


@contextlib.contextmanager
def _tracking_uri_set(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's model logging reads the process-wide tracking URI and experiment: set them, then put
    them (and the MLFLOW_TRACKING_URI variable MLflow sets with the URI) back."""
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    with _FLUENT:
        previous, variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        experiment = fluent._active_experiment_id
        mlflow.set_tracking_uri(uri)
        if experiment_id is not None:
            fluent._active_experiment_id = experiment_id  # type: ignore[assignment]  # the run's experiment
        try:
            yield
        finally:
            utils._tracking_uri = previous
            fluent._active_experiment_id = experiment
            if variable is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = variable


def _log_onnx_model(run_id: str, out_dir: Path, summary: SearchSummary) -> tuple[str, str]:
    """Log model.onnx as an MLflow model of the run (linked to it); its model id and source URI.
    Call it with the tracking URI set (`_tracking_uri_set`)."""
    import mlflow.onnx
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = onnx.load(str(out_dir / files.MODEL_ONNX))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (inp,), outputs = session.get_inputs(), session.get_outputs()
    shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
    example = np.zeros(tuple(1 if d == -1 else d for d in shape), dtype=np.float32)
    out = session.run(None, {inp.name: example})[0]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape, inp.name)]),
        outputs=Schema([TensorSpec(np.dtype(out.dtype), (-1, *out.shape[1:]), outputs[0].name)]),
    )
    info = mlflow.onnx.log_model(
        model, name=_slug(summary.deployment), run_id=run_id, signature=signature, input_example=example,
        onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
        pip_requirements=["onnx", "onnxruntime"], extra_files=[str(out_dir / files.POLICY),
                                                            str(out_dir / files.SUMMARY)],
        tags={"device": summary.device["name"], "deployment": summary.deployment},
        await_registration_for=0,
    )
    return info.model_id, f"models:/{info.model_id}"


# -- champions -----------------------------------------------------------------------------------


def _crown_if_better(client: mlflow.MlflowClient, name: str, version: ModelVersion, summary: SearchSummary) -> None:
    alias = deployment_alias(summary)
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    new = client.get_model_version(name, version.version)
    if current is None or beats(dict(new.tags), dict(current.tags)):
        client.set_registered_model_alias(name, alias, version.version)
        client.set_registered_model_tag(name, alias, _describe_deployment(summary))
        was = f"version {current.version}" if current is not None else "nobody"
        log.info("%s@%s: version %s (was %s)", name, alias, version.version, was)


def _describe_deployment(summary: SearchSummary) -> str:
    limits = ", ".join(f"{k}={v:g}" for k, v in summary.objective.limits().items())
    classes = ",".join(map(str, summary.classes)) if summary.subset else "all"
    return f"{summary.deployment}: classes {classes}, objective {summary.objective.name}" + (
        f" ({limits})" if limits else ""
    )


# -- reading -----------------------------------------------------------------------------------


def _info(client: mlflow.MlflowClient, version: ModelVersion) -> VersionInfo:
    tags = dict(version.tags)
    return VersionInfo(
        device=tags.get("device", version.name.removeprefix(MODEL_PREFIX)),
        version=int(version.version),
        run_id=version.run_id or tags.get("run_id") or None,
        deployment=tags.get("deployment", ""),
        deployment_alias=tags.get("deployment_alias", ""),
        model=tags.get("model", ""),
        dataset=tags.get("dataset", ""),
        classes=[int(c) for c in tags.get("classes", "").split(",") if c.strip()],
        objective=tags.get("objective", ""),
        objective_met=tags.get("objective_met") == "true",
        accuracy=float(tags.get("accuracy", "nan")),
        latency_ms=float(tags.get("latency_ms", "nan")),
        memory_bytes=int(tags.get("memory_bytes", "0")),
        speedup=float(tags.get("speedup", "nan")),
        memory_reduction=float(tags.get("memory_reduction", "nan")),
        baseline_accuracy=float(tags.get("baseline_accuracy", "nan")),
        baseline_latency_ms=float(tags.get("baseline_latency_ms", "nan")),
        campaign=tags.get("campaign"),
        aliases=sorted(version.aliases or []),
        model_id=_model_id(version),
        created=int(version.creation_timestamp or 0),
    )


def _model_id(version: ModelVersion) -> str | None:
    """The logged model behind a version (some stores keep only the models:/ source)."""
    found = getattr(version, "model_id", None)
    if found:
        return str(found)
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def model_versions(client: mlflow.MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of a registered model that modeltailor registered (tagged with its metrics)."""
    found: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    return [v for v in found if "accuracy" in v.tags]  # others are not ours


def _versions(client: mlflow.MlflowClient, name: str) -> list[VersionInfo]:
    infos = []
    for version in model_versions(client, name):
        if not version.aliases:  # search results may omit aliases: read them from the model
            version = client.get_model_version(name, version.version)
        infos.append(_info(client, version))
    return sorted(infos, key=lambda v: v.version)


def registered_devices(tracking_uri: str) -> list[DeviceEntry]:
    """Every device with registered versions, and its deployments' champions."""
    client = _client(tracking_uri)
    with _mlflow_errors(normalize_tracking_uri(tracking_uri)):
        models = client.search_registered_models(f"name LIKE '{MODEL_PREFIX}%'", max_results=1000)
        entries = []
        for registered in sorted(models, key=lambda m: m.name):
            versions = _versions(client, registered.name)
            if not versions:
                continue
            entries.append(DeviceEntry(
                device=registered.name.removeprefix(MODEL_PREFIX), registered_model=registered.name,
                versions=len(versions), champions=[v for v in versions if v.champion],
            ))
    return entries


def device_versions(tracking_uri: str, device: str) -> list[VersionInfo]:
    """Every registered version of a device; NotFoundError naming the devices there are."""
    check_device_name(device)
    client = _client(tracking_uri)
    with _mlflow_errors(normalize_tracking_uri(tracking_uri)):
        try:
            client.get_registered_model(model_name(device))
        except MlflowException:
            raise NotFoundError(_unknown_device(client, device)) from None
        return _versions(client, model_name(device))


def _unknown_device(client: mlflow.MlflowClient, device: str) -> str:
    known = sorted(m.name.removeprefix(MODEL_PREFIX) for m in client.search_registered_models(
        f"name LIKE '{MODEL_PREFIX}%'", max_results=1000))
    there = ", ".join(known) if known else "none yet: run a search or a campaign first"
    return f"device '{device}' has no registered models; devices in the registry: {there}"


def within_limits(v: Any, max_latency_ms: float | None, max_memory_bytes: float | None,
                  min_accuracy: float | None) -> bool:
    """Whether a result (anything with accuracy, latency_ms, memory_bytes) meets the limits given."""
    return ((max_latency_ms is None or v.latency_ms <= max_latency_ms)
            and (max_memory_bytes is None or v.memory_bytes <= max_memory_bytes)
            and (min_accuracy is None or v.accuracy >= min_accuracy))


def _dominated(v: VersionInfo, others: list[VersionInfo]) -> bool:
    return any(
        o is not v and o.accuracy >= v.accuracy and o.latency_ms <= v.latency_ms and o.memory_bytes <= v.memory_bytes
        and (o.accuracy > v.accuracy or o.latency_ms < v.latency_ms or o.memory_bytes < v.memory_bytes)
        for o in others
    )


def check_filters(classes: list[int] | None, max_latency_ms: float | None, max_memory_bytes: float | None,
                  min_accuracy: float | None) -> None:
    """One-line errors for filters no model could meet (negative limits, accuracy outside [0, 1])."""
    for name, value in (("max_latency_ms", max_latency_ms), ("max_memory_bytes", max_memory_bytes)):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise ModelTailorError(f"{name} must be a positive number, got {value}")
    if min_accuracy is not None and not (0.0 <= min_accuracy <= 1.0):
        raise ModelTailorError(f"min_accuracy is a fraction in [0, 1], got {min_accuracy}")
    if classes is not None and (not classes or any(c < 0 for c in classes)):
        raise ModelTailorError(f"classes must be non-negative class ids, got {classes}")


def query_best(
    tracking_uri: str,
    device: str,
    classes: list[int] | None = None,
    max_latency_ms: float | None = None,
    max_memory_bytes: float | None = None,
    min_accuracy: float | None = None,
) -> BestAnswer:
    """The version to ship to `device` for `classes` within the limits (see the module's rules)."""
    check_filters(classes, max_latency_ms, max_memory_bytes, min_accuracy)
    wanted = sorted(set(classes)) if classes else None
    filters = {"classes": wanted, "max_latency_ms": max_latency_ms, "max_memory_bytes": max_memory_bytes,
               "min_accuracy": min_accuracy}
    versions = device_versions(tracking_uri, device)
    same_classes = [v for v in versions if _class_match(v, wanted, versions)]
    if not same_classes:
        sets = sorted({",".join(map(str, v.classes)) for v in versions})
        asked = ",".join(map(str, wanted)) if wanted else "all classes"
        raise NoMatchError(
            f"no version on '{device}' for classes {asked}; registered class sets: {'; '.join(sets)}",
            closest=[_brief(v) for v in versions[:5]],
        )
    limited = any(x is not None for x in (max_latency_ms, max_memory_bytes, min_accuracy))
    fitting = [v for v in same_classes if within_limits(v, max_latency_ms, max_memory_bytes, min_accuracy)]
    if not fitting:
        closest = sorted(same_classes, key=lambda v: _miss(v, max_latency_ms, max_memory_bytes, min_accuracy))[:3]
        described = "; ".join(
            f"v{v.version}: accuracy {v.accuracy:.4f}, {v.latency_ms:.3f} ms, {v.memory_bytes:,} bytes" for v in closest
        )
        raise NoMatchError(f"no version on '{device}' meets the limits; closest: {described}: relax them or search "
                           "again with this budget", closest=[_brief(v) for v in closest])
    pool = fitting if limited else ([v for v in fitting if v.champion] or fitting)
    chosen = max(pool, key=lambda v: (v.accuracy, -v.latency_ms, -v.memory_bytes, v.version))
    rule = ("the most accurate version within the limits (ties: faster, smaller)" if limited
            else "the most accurate deployment champion (no limits given)")
    runners = [v for v in fitting if v is not chosen and not _dominated(v, fitting)]
    runners.sort(key=lambda v: (-v.accuracy, v.latency_ms))
    return BestAnswer(
        device=device, registered_model=model_name(device), filters=filters, rule=rule, chosen=chosen,
        runners_up=runners, policy=json.loads(download_file(tracking_uri, device, chosen.version,
                                                             files.POLICY).read_text()),
    )


def _class_match(v: VersionInfo, wanted: list[int] | None, versions: list[VersionInfo]) -> bool:
    if wanted is not None:
        return sorted(v.classes) == wanted
    widest = max(len(o.classes) for o in versions)
    return len(v.classes) == widest  # no classes asked: the models that predict every class


def _miss(v: VersionInfo, max_latency_ms: float | None, max_memory_bytes: float | None,
          min_accuracy: float | None) -> float:
    """How far a version is from the limits, relative (0 = fits)."""
    miss = 0.0
    if max_latency_ms is not None:
        miss += max(0.0, v.latency_ms / max_latency_ms - 1)
    if max_memory_bytes is not None:
        miss += max(0.0, v.memory_bytes / max_memory_bytes - 1)
    if min_accuracy is not None:
        miss += max(0.0, min_accuracy - v.accuracy) / max(min_accuracy, 1e-9)
    return miss


def _brief(v: VersionInfo) -> dict[str, Any]:
    return {"version": v.version, "classes": v.classes, "accuracy": v.accuracy, "latency_ms": v.latency_ms,
            "memory_bytes": v.memory_bytes}


def download_file(tracking_uri: str, device: str, version: int, filename: str) -> Path:
    """One of model.onnx, policy.json, summary.json of a version, downloaded to a local cache path."""
    if filename not in files.REGISTERED:
        raise NotFoundError(f"file '{filename}' is not served: ask for one of {', '.join(files.REGISTERED)}")
    check_device_name(device)
    client = _client(tracking_uri)
    uri = normalize_tracking_uri(tracking_uri)
    with _mlflow_errors(uri):
        try:
            mv = client.get_model_version(model_name(device), str(int(version)))
        except MlflowException:
            raise NotFoundError(f"device '{device}' has no version {version}: `modeltailor registry list` "
                                "shows the versions") from None
        model_id = _model_id(mv)
        if model_id is None:
            raise NotFoundError(f"version {version} of '{device}' has no logged model: it was not registered by modeltailor")
        inner = filename if filename == files.MODEL_ONNX else f"extra_files/{filename}"
        path = cache_dir() / "registry" / model_id / inner
        if not path.is_file():
            location = client.get_logged_model(model_id).artifact_location.rstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/{inner}", dst_path=str(path.parent), tracking_uri=uri
            )
    return path


def download_version(tracking_uri: str, device: str, version: int, dest: Path) -> dict[str, Path]:
    """model.onnx, policy.json and summary.json of a version, copied into `dest`."""
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in files.REGISTERED:
        written[name] = Path(shutil.copyfile(download_file(tracking_uri, device, version, name), dest / name))
    return written
