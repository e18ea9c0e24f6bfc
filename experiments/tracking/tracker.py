"""Experiment tracking: every MLflow call of the project lives in this module.

A :class:`Tracker` owns its own :class:`mlflow.MlflowClient` (no global fluent state), so several
trackers can log to different runs in one process (for example Ray trials). With a SQLite store
the experiment is created with an absolute artifact location next to the database file, so runs
started from any working directory put their artifacts in the same place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from modeltailor.errors import ModelTailorError, first_line
from modeltailor.experiments.spec.deployment import DeploymentConfig

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
PROBE_TIMEOUT_S = 5.0
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"  # the experiment is for model training (not GenAI)
TRAINING_VIEW = "?workflowType=machine_learning"
"""MLflow 3.17's UI ignores the kind tag (mlflow/mlflow#24498) and opens experiments in its GenAI
view unless the link asks for the model-training view: every link we write or print carries this."""
EXPERIMENT_NOTE = (
    "modeltailor searches: one run per deployment (its description holds the result table and the "
    "Pareto plot), campaigns as parent runs comparing their deployments. The chosen models are in "
    "the model registry as `modeltailor-<device>`, with a `champion-...` alias per deployment."
)
_QUIET_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.store.db.db_types")


def default_tracking_uri(base_dir: Path | None = None) -> str:
    """MODELTAILOR_TRACKING_URI, then MLFLOW_TRACKING_URI, else a SQLite file in base_dir (or cwd)."""
    for var in ("MODELTAILOR_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        value = os.environ.get(var, "").strip()
        if value:
            return normalize_tracking_uri(value)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _sqlite_uri(base.resolve() / DB_NAME)


def normalize_tracking_uri(uri: str) -> str:
    """Make SQLite URIs absolute; turn a bare directory or ``*.db`` path into a SQLite URI."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return uri if path.is_absolute() else _sqlite_uri(path.resolve())
    if "://" in uri or uri.startswith(("databricks", "file:")):
        return uri
    path = Path(uri).expanduser().resolve()
    return _sqlite_uri(path if path.suffix == ".db" else path / DB_NAME)


def _sqlite_uri(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))




def quiet_mlflow_logging() -> None:
    """Silence MLflow's INFO chatter (database creation, alembic migrations) and its "View run at"
    stdout lines for remote servers (``ui_hint`` says where to look); warnings and errors still show.
    Set MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false to get the stdout lines back."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ModelTailorError quickly when an http(s) tracking server does not answer at all."""
    if not _is_http(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered (maybe 401/404): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelTailorError(
            f"tracking server '{uri}' is unreachable: {reason}; start it or set MODELTAILOR_TRACKING_URI"
        ) from exc


@contextlib.contextmanager
def _mlflow_errors(uri: str) -> Iterator[None]:
    """Turn MLflow failures into one-line ModelTailorErrors naming the tracking URI."""
    try:
        yield
    except MlflowException as exc:
        raise ModelTailorError(f"tracking at '{uri}' failed: {first_line(exc)}") from exc


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings become dotted keys ("a.b"); values are stringified and truncated."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = _truncate(str(value), MAX_PARAM_VAL_LENGTH)
    return flat


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _metric_entities(metrics: Mapping[str, Any], step: int | None) -> list[Metric]:
    stamp = int(time.time() * 1000)
    entities = []
    for key, value in metrics.items():
        if value is None:
            continue
        number = float(value)
        if math.isnan(number):
            continue
        entities.append(Metric(key=key, value=number, timestamp=stamp, step=step or 0))
    return entities


def _run_tags(tags: Mapping[str, Any], parent_run_id: str | None) -> dict[str, str]:
    """User tags plus MLflow's context tags (user, source, git commit) and the parent link."""
    run_tags = {k: _truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in tags.items()}
    if parent_run_id:
        run_tags[PARENT_TAG] = parent_run_id
    try:
        return resolve_tags(run_tags)
    except Exception:  # context detection is best effort
        return run_tags


def _serialize(data: Any, filename: str) -> str:
    if filename.endswith((".yaml", ".yml")):
        return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False)
    return json.dumps(data, indent=2, default=str)


class Tracker:
    """Logs runs of one experiment to one tracking store through its own MlflowClient.

    Runs nest as a stack: starting a run while another is active keeps the outer one, and
    ending the inner run makes the outer run active again.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "modeltailor") -> None:
        quiet_mlflow_logging()
        self.tracking_uri = normalize_tracking_uri(tracking_uri or default_tracking_uri())
        self.experiment = experiment
        check_reachable(self.tracking_uri)
        db_path = sqlite_path(self.tracking_uri)
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self._stack: list[str] = []
        with _mlflow_errors(self.tracking_uri):
            self.experiment_id = self._ensure_experiment()

    # -- experiment -------------------------------------------------------------------------
    def artifact_location(self) -> str | None:
        """Absolute artifact root for new experiments (SQLite: <db dir>/mlartifacts)."""
        db_path = sqlite_path(self.tracking_uri)
        return (db_path.parent / ARTIFACTS_DIR).as_uri() if db_path is not None else None

    def _ensure_experiment(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return self._client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location(),
                    tags={KIND_TAG: KIND, NOTE_TAG: EXPERIMENT_NOTE},
                )
            except MlflowException:  # another process created it meanwhile
                found = self._client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self._client.restore_experiment(found.experiment_id)
        if found.tags.get(KIND_TAG) != KIND:  # made before modeltailor set it, or by hand
            self._client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id

    # -- runs -------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """The active run, or None."""
        return self._stack[-1] if self._stack else None

    def _active(self) -> str:
        if not self._stack:
            raise ModelTailorError("no active tracking run; call Tracker.start_run first")
        return self._stack[-1]

    def start_run(
        self,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Create a run, log its params and tags, make it active and return its id."""
        run_tags = _run_tags(tags or {}, parent_run_id)
        with _mlflow_errors(self.tracking_uri):
            run = self._client.create_run(self.experiment_id, tags=run_tags, run_name=run_name)
            run_id = run.info.run_id
            entities = [Param(k, v) for k, v in flatten_params(params or {}).items()]
            if entities:
                self._client.log_batch(run_id, params=entities)
        self._stack.append(run_id)
        return run_id

    def resume_run(self, run_id: str) -> str:
        """Make an ended run of this experiment (e.g. KILLED by an interruption) RUNNING and active
        again; a ModelTailorError when it is not in this store's experiment (or was deleted)."""
        with _mlflow_errors(self.tracking_uri):
            info = self._client.get_run(run_id).info
            if info.experiment_id != self.experiment_id or info.lifecycle_stage == "deleted":
                raise ModelTailorError(
                    f"run '{run_id}' is not a live run of experiment '{self.experiment}' at "
                    f"{self.tracking_uri}: start a new run instead"
                )
            self._client.update_run(run_id, status="RUNNING")
        self._stack.append(run_id)
        return run_id

    def end_run(self, status: str = "FINISHED") -> None:
        """Terminate the active run with FINISHED, FAILED or KILLED; no-op without one."""
        if status not in RUN_STATUSES:
            raise ModelTailorError(f"run status '{status}' is unknown; use one of {RUN_STATUSES}")
        if not self._stack:
            return
        run_id = self._stack.pop()
        with _mlflow_errors(self.tracking_uri):
            self._client.set_terminated(run_id, status=status)

    def terminate(self, run_id: str, status: str) -> None:
        """End a run that is not on this tracker's stack (e.g. another process's, left RUNNING)."""
        if status not in RUN_STATUSES:
            raise ModelTailorError(f"run status '{status}' is unknown; use one of {RUN_STATUSES}")
        with _mlflow_errors(self.tracking_uri):
            if self._client.get_run(run_id).info.status == "RUNNING":
                self._client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def run(
        self,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[str]:
        """``with tracker.run(...) as run_id:`` ends FINISHED, FAILED on error, KILLED on Ctrl-C."""
        run_id = self.start_run(run_name, params, tags, parent_run_id)
        try:
            yield run_id
        except KeyboardInterrupt:
            self._end_through(run_id, "KILLED")
            raise
        except BaseException:
            self._end_through(run_id, "FAILED")
            raise
        self._end_through(run_id, "FINISHED")

    def _end_through(self, run_id: str, status: str) -> None:
        """End run_id and any run started inside it that is still open; no-op if already ended."""
        while run_id in self._stack:
            self.end_run(status)

    # -- logging ----------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        """Log metrics in one batch; keys may be slash-grouped ("episode/accuracy"); None/NaN skipped."""
        entities = _metric_entities(metrics, step)
        if not entities:
            return
        with _mlflow_errors(self.tracking_uri):
            self._client.log_batch(self._active(), metrics=entities)

    def log_episode(self, episode: int, metrics: Mapping[str, float | None]) -> None:
        """Log one episode's metrics at step=episode."""
        self.log_metrics(metrics, step=episode)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under artifact_path."""
        path = Path(path)
        if not path.exists():
            raise ModelTailorError(f"artifact '{path}' does not exist; write it before logging it")
        with _mlflow_errors(self.tracking_uri):
            if path.is_dir():
                self._client.log_artifacts(self._active(), str(path), artifact_path)
            else:
                self._client.log_artifact(self._active(), str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], filename: str) -> None:
        """Store data as JSON (or YAML for .yaml/.yml) at artifact path filename."""
        with _mlflow_errors(self.tracking_uri):
            self._client.log_text(self._active(), _serialize(data, filename), filename)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the active run in one batch."""
        entities = [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        if entities:
            with _mlflow_errors(self.tracking_uri):
                self._client.log_batch(self._active(), tags=entities)

    def finished_runs(self, tags: Mapping[str, str], max_results: int = 500) -> list[Any]:
        """FINISHED runs of this experiment carrying every tag in `tags`, newest first."""
        clauses = [f"tags.`{k}` = '{v.replace(chr(39), '')}'" for k, v in tags.items()]
        clauses.append("attributes.status = 'FINISHED'")
        with _mlflow_errors(self.tracking_uri):
            return list(self._client.search_runs(
                [self.experiment_id], " and ".join(clauses), max_results=max_results,
                order_by=["attributes.start_time DESC"],
            ))

    def get_run(self, run_id: str) -> Any:
        """The run `run_id` of this store; a ModelTailorError naming it when there is none."""
        try:
            return self._client.get_run(run_id)
        except MlflowException:
            raise ModelTailorError(f"run '{run_id}' is not in the tracking store {self.tracking_uri}") from None

    def download_artifact(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Download one artifact of a run into the folder `dst`; its local path."""
        dst.mkdir(parents=True, exist_ok=True)
        with _mlflow_errors(self.tracking_uri):
            return Path(self._client.download_artifacts(run_id, artifact_path, str(dst)))

    def set_description(self, markdown: str) -> None:
        """The active run's description in the MLflow UI (markdown)."""
        with _mlflow_errors(self.tracking_uri):
            self._client.set_tag(self._active(), NOTE_TAG, markdown)

    def ui_hint(self) -> str:
        """A line telling users how to look at the runs."""
        if _is_http(self.tracking_uri):
            return f"open {experiment_url(self.tracking_uri, self.experiment_id)} in a browser to see the runs"
        return (f"mlflow ui --backend-store-uri {self.tracking_uri}, then open "
                f"{experiment_url('http://127.0.0.1:5000', self.experiment_id)}")


def experiment_url(server: str, experiment_id: str) -> str:
    """The experiment's page on an MLflow server, in the model-training view."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}{TRAINING_VIEW}"


def open_tracker(config: DeploymentConfig) -> Tracker | None:
    """The tracker a deployment's `tracking` section asks for (None when tracking is off)."""
    tracking = config.tracking
    return Tracker(tracking.uri, tracking.experiment) if tracking.enabled else None


def _artifact_files(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files: list[str] = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            files.extend(_artifact_files(client, run_id, info.path))
        else:
            files.append(info.path)
    return files


def get_run_summary(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """Read a run back: name, status, params, tags, latest metrics and artifact file paths."""
    quiet_mlflow_logging()
    uri = normalize_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    with _mlflow_errors(uri):
        run = client.get_run(run_id)
        artifacts = sorted(_artifact_files(client, run_id))
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "artifact_uri": run.info.artifact_uri,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "artifacts": artifacts,
    }


def read_artifact_json(tracking_uri: str, run_id: str, path: str) -> dict[str, Any]:
    """A JSON artifact of a run (e.g. summary.json), parsed; one-line error if it is missing."""
    quiet_mlflow_logging()
    uri = normalize_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    with _mlflow_errors(uri):
        try:
            local = client.download_artifacts(run_id, path)
        except MlflowException as exc:
            raise ModelTailorError(
                f"run '{run_id}' has no artifact '{path}' in {uri}: pass a finished search's run id"
            ) from exc
    return json.loads(Path(local).read_text())
