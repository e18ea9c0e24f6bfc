"""Jobs of the HTTP API: a campaign (or a single search) launched as a `modeltailor campaign` process.

A single search is run as a one-deployment campaign, so every launch goes through the same
campaign machinery as the CLI (Ray Tune, trial.json, MLflow, the registry) and no second path.
A job is a folder ``ROOT/<id>/``:

    job.json        id, kind, name, created, pid, deployments, cancel_requested, exit_code
    campaign.yaml   the validated campaign the process runs
    campaign.log    the process's stdout and stderr
    out/            the campaign's outputs: campaign.json, <deployment>/trial.json, summary.json, ...

Everything lives on disk, so a job outlives the API process (its process runs in a session of its
own) and an API restart finds it again: alive, finished, or ``interrupted`` when its process died
without an exit status anyone recorded. Cancelling sends SIGINT to the job's process group, what
Ctrl-C in a terminal sends (the campaign stops its trials, marks their MLflow runs KILLED and
exits 130); after a grace period the job's whole session is killed.

Torch-free and Ray-free: the API imports this module (file names below mirror
experiments/fleet/campaign.py, which imports Ray).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from modeltailor.common.storage import atomic_write, read_json_object
from modeltailor.common.validation import error_text, first_error, key_path
from modeltailor.errors import ConfigError, DeviceError, ModelTailorError, NotFoundError
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.campaign import PATH_KEYS, Campaign, CampaignSpec, build_campaign
from modeltailor.experiments.spec.deployment import DeploymentConfig

log = logging.getLogger(__name__)

LOG_FILE = "campaign.log"
OUT_DIR = "out"
TOKEN_ENV = "MODELTAILOR_API_TOKEN"
"""The API's token: never handed to the job processes."""

JOB_ID = re.compile(r"^[0-9a-f]{12}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_DEPLOYMENTS = 64
CANCEL_GRACE_S = 60.0
LOG_TAIL_LINES = 20
ACTIVE = ("queued", "running")

JobKind = Literal["search", "campaign"]
JobState = Literal["queued", "running", "finished", "failed", "cancelled", "interrupted"]


class BodyError(ConfigError):
    """A launch body the API refuses; ``field`` names the key (dotted, ``deployments[1].file``)."""

    def __init__(self, field: str | None, message: str, named: bool = False) -> None:
        super().__init__(f"{field}: {message}" if field and not named else message)
        self.field = field


class JobConflict(ModelTailorError):
    """The job is not in a state that allows the request (cancel a finished job)."""


class TooManyJobs(ModelTailorError):
    """The server runs as many jobs as it allows at once."""


class DeploymentProgress(BaseModel):
    name: str
    device: str
    classes: str = Field(description="'all' or the class ids, comma-separated")
    episodes: int = Field(description="episodes the search runs")
    state: str = Field("pending", description="pending, running, finished, failed or interrupted")
    episodes_done: int = 0
    error: str | None = None
    mlflow_run_id: str | None = None
    seconds: float | None = None
    result: dict[str, Any] | None = Field(None, description="accuracy, latency_ms, speedup, ... once finished")


class JobStatus(BaseModel):
    id: str
    kind: JobKind
    name: str
    state: JobState
    created: float = Field(description="seconds since the epoch")
    ended: float | None = None
    exit_code: int | None = Field(None, description="the campaign process's exit status (130: interrupted)")
    cancel_requested: bool = False
    resumed: int = Field(0, description="times the job was resumed")
    deployments: list[DeploymentProgress]
    log_tail: list[str] | None = Field(None, description="the last lines of the job's log, when it failed")


# -- validating a launch body ---------------------------------------------------------------------


def campaign_data(kind: JobKind, body: dict[str, Any]) -> dict[str, Any]:
    """The campaign mapping a launch body runs as (a search: a one-deployment campaign)."""
    if kind == "search":
        _check_deployment(body, "")
        name = str(body.get("name") or "search")
        _check_name(name, "name")
        return {"name": name, "base": body, "deployments": [{"name": name}], "max_concurrent": 1}
    _check_campaign(body)
    return body


FACTORIES_ENV = "MODELTAILOR_API_ALLOW_FACTORIES"


def validate(kind: JobKind, body: dict[str, Any]) -> Campaign:
    """The campaign a body launches, validated with the CLI's models; BodyError names the field.
    API bodies may not name files (the server's): `base` and deployments are inline, paths absolute."""
    if not isinstance(body, dict):
        raise BodyError("body", "send a JSON object")
    data = campaign_data(kind, body)
    if kind == "search":
        try:
            DeploymentConfig.model_validate(body)
        except ValidationError as exc:
            raise _body_error(exc) from None
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        raise _body_error(exc) from None
    try:
        campaign = build_campaign(spec, Path("/nonexistent-api-root"))
    except ConfigError as exc:
        raise BodyError(_field_of(str(exc), kind), _message_of(str(exc)), named=True) from None
    _check_deployments(campaign, kind)
    return campaign


def _check_campaign(body: dict[str, Any]) -> None:
    name = body.get("name", "campaign")
    if isinstance(name, str):
        _check_name(name, "name")
    base = body.get("base")
    if isinstance(base, str):
        raise BodyError("base", "names a file: files are the server's, inline the deployment (a mapping)")
    if isinstance(base, dict):
        _check_deployment(base, "base.")
    _check_tracking(body.get("tracking"), "tracking.")
    entries = body.get("deployments")
    if isinstance(entries, list):
        if len(entries) > MAX_DEPLOYMENTS:
            raise BodyError("deployments", f"{len(entries)} deployments, over the limit of {MAX_DEPLOYMENTS}: split the campaign")
        for index, entry in enumerate(entries):
            if isinstance(entry, dict):
                _check_entry(entry, f"deployments[{index}].")


def _check_entry(entry: dict[str, Any], where: str) -> None:
    if entry.get("file") is not None:
        raise BodyError(f"{where}file", "names a file: files are the server's, inline the deployment (overrides)")
    _check_paths(entry, where)


def _check_deployment(data: dict[str, Any], where: str) -> None:
    _check_tracking(data.get("tracking"), f"{where}tracking.")
    _check_paths(data, where)


def _check_tracking(tracking: Any, where: str) -> None:
    if isinstance(tracking, dict) and tracking.get("uri") is not None:
        raise BodyError(f"{where}uri", "jobs log to the server's tracking store: remove it")


def _check_paths(data: dict[str, Any], where: str) -> None:
    """Relative paths would resolve against the job's folder: the server's paths must be absolute.
    A model factory imports code on the server: refused unless `serve --allow-factories`."""
    model = data.get("model")
    if isinstance(model, dict) and model.get("factory") and os.environ.get(FACTORIES_ENV) != "1":
        raise BodyError(f"{where}model.factory", "imports code on the server: use a zoo model (model.name), or "
                        "start the server with --allow-factories")
    for section, key in PATH_KEYS:
        node = data.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            raise BodyError(
                f"{where}{section}.{key}", f"'{value}' is relative: give an absolute path on the server or leave it out"
            )


def _check_name(name: str, field: str) -> None:
    if not NAME.match(name):
        raise BodyError(field, f"'{name[:40]}' must be 1-100 letters, digits, '.', '_' or '-' (it names folders)")


def _check_deployments(campaign: Campaign, kind: JobKind) -> None:
    """What can be checked without torch: class lists and device profiles."""
    from modeltailor.devices.profiles import get_spec

    for index, config in enumerate(campaign.deployments.values()):
        at = "" if kind == "search" else f"deployments[{index}]."
        if config.classes is not None and not config.classes:
            raise BodyError(f"{at}classes", "the list is empty: list class ids or names, or leave it out for all")
        negative = [c for c in config.classes or [] if isinstance(c, int) and c < 0]
        if negative:
            raise BodyError(f"{at}classes", f"class ids are 0 or more, got {negative[0]}")
        try:
            get_spec(config.device.name, config.device.profiles)
        except (DeviceError, ConfigError) as exc:
            raise BodyError(f"{at}device.name", str(exc)) from None
        except (OSError, ValueError) as exc:  # an absolute profiles path the server cannot read
            raise BodyError(f"{at}device.profiles", f"cannot be read: {type(exc).__name__}") from None


def _body_error(exc: ValidationError) -> BodyError:
    error = first_error(exc)
    field = key_path(error["loc"])
    if error["type"] == "extra_forbidden":
        return BodyError(field, "unknown key: remove it or check the spelling (GET /openapi.json lists the keys)")
    if error["type"] == "missing":
        return BodyError(field, "required key is missing")
    return BodyError(field or None, error_text(error))


def _field_of(message: str, kind: JobKind) -> str | None:
    """The key a build_campaign error names ('campaign: deployments[0]: search.episodes: ...')."""
    match = re.match(r"campaign: (deployments\[\d+\])(?: \([^)]*\))?: (?:(?:unknown|required) key ')?([\w.\[\]]+)", message)
    if match is not None:
        entry, key = match.groups()
    elif (named := re.match(r"campaign: (deployments\[\d+\])(?:\.name | is named )", message)) is not None:
        entry, key = named.group(1), "name"
    else:
        return None
    return key if kind == "search" else f"{entry}.{key}"


def _message_of(message: str) -> str:
    return re.sub(r"^campaign: ", "", message)


# -- the store --------------------------------------------------------------------------------------


class JobStore:
    """Launches, watches and cancels jobs in ``root``; every fact about a job is read from disk."""

    def __init__(
        self, root: Path, tracking_uri: str | None = None, address: str | None = None, max_jobs: int | None = 4
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.tracking_uri, self.address, self.max_jobs = tracking_uri, address, max_jobs
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # launching

    def launch(self, kind: JobKind, body: dict[str, Any]) -> JobStatus:
        """Validate `body`, then start its campaign process; returns at once (state queued/running)."""
        campaign = validate(kind, body)
        data = campaign_data(kind, body)
        with self._lock:
            self._check_capacity()
            job_id = self._new_id()
            folder = self.root / job_id
            folder.mkdir()
            atomic_write(folder / files.JOB_SPEC, yaml.safe_dump(data, sort_keys=False))
            self._write(job_id, {
                "id": job_id, "kind": kind, "name": campaign.spec.name, "created": time.time(), "pid": None,
                "deployments": [_planned(name, config) for name, config in campaign.deployments.items()],
                "cancel_requested": False, "exit_code": None, "ended": None, "resumed": 0,
            })
            self._start(job_id, resume=False)
        log.info("job %s: %s '%s' launched (%d deployments)", job_id, kind, campaign.spec.name, len(campaign.deployments))
        return self.status(job_id)

    def resume(self, job_id: str) -> JobStatus:
        """Run an interrupted, cancelled or failed job again with --resume (finished deployments kept)."""
        with self._lock:
            record = self._record(job_id)
            state = self._state(job_id, record)
            if state not in ("interrupted", "cancelled", "failed"):
                raise JobConflict(f"job {job_id} is {state}: only an interrupted, cancelled or failed job can be resumed")
            self._check_capacity()
            self._update(job_id, cancel_requested=False, exit_code=None, ended=None, pid=None,
                         resumed=int(record.get("resumed", 0)) + 1)
            self._start(job_id, resume=True)
        return self.status(job_id)

    def _check_capacity(self) -> None:
        if self.max_jobs is None:
            return
        running = self.active()
        if len(running) >= self.max_jobs:
            if self.max_jobs == 0:
                raise TooManyJobs("this server launches no jobs (started with --max-jobs 0): it answers queries only")
            raise TooManyJobs(
                f"{len(running)} jobs are running, the server's limit (--max-jobs {self.max_jobs}): "
                "wait for one to end or cancel one"
            )

    def _new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(6)
            if not (self.root / job_id).exists():
                return job_id

    def _command(self, job_id: str, resume: bool) -> list[str]:
        folder = self.root / job_id
        command = [sys.executable, "-m", "modeltailor.service.cli", "campaign",
                   "--config", str(folder / files.JOB_SPEC), "--out", str(folder / OUT_DIR)]
        if self.tracking_uri:
            command += ["--tracking-uri", self.tracking_uri]
        if self.address:
            command += ["--address", self.address]
        return command + (["--resume"] if resume else [])

    def _start(self, job_id: str, resume: bool) -> None:
        folder = self.root / job_id
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        env.update({"COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
        with (folder / LOG_FILE).open("ab") as log_file:
            process = subprocess.Popen(
                self._command(job_id, resume), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        self._children[job_id] = process
        self._update(job_id, pid=process.pid)
        threading.Thread(target=self._watch, args=(job_id, process), daemon=True, name=f"job-{job_id}").start()

    def _watch(self, job_id: str, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            self._update(job_id, exit_code=code, ended=time.time())
            self._children.pop(job_id, None)
        log.info("job %s: its process exited with status %s", job_id, code)

    # reading

    def status(self, job_id: str, with_log: bool = True) -> JobStatus:
        record = self._record(job_id)
        state = self._state(job_id, record)
        tail = _log_tail(self.root / job_id / LOG_FILE) if with_log and state in ("failed", "interrupted") else None
        return JobStatus(
            id=job_id, kind=record["kind"], name=record["name"], state=state, created=record["created"],
            ended=record.get("ended"), exit_code=record.get("exit_code"),
            cancel_requested=bool(record.get("cancel_requested")), resumed=int(record.get("resumed", 0)),
            deployments=self._progress(job_id, record, state), log_tail=tail,
        )

    def jobs(self) -> list[JobStatus]:
        """Every job, newest first."""
        ids = [p.name for p in self.root.iterdir() if JOB_ID.match(p.name) and (p / files.JOB).is_file()]
        statuses = []
        for job_id in ids:
            try:
                statuses.append(self.status(job_id, with_log=False))
            except (NotFoundError, KeyError, TypeError, ValueError) as exc:  # a job.json edited by hand
                log.warning("job %s is unreadable, left out: %s", job_id, exc)
        return sorted(statuses, key=lambda s: s.created, reverse=True)

    def active(self) -> list[str]:
        return [s.id for s in self.jobs() if s.state in ACTIVE]

    def _state(self, job_id: str, record: dict[str, Any]) -> JobState:
        code = record.get("exit_code")
        child = self._children.get(job_id)
        if code is None and child is not None:
            code = child.poll()
            if code is None:
                return "running"
        cancelled = bool(record.get("cancel_requested"))
        if code is None:  # not this process's child: a job an earlier API process started
            pid = record.get("pid")
            if pid is None:
                return "queued"
            if _is_job_process(pid, self.root / job_id):
                return "running"
            if cancelled:
                return "cancelled"
            return "finished" if _all_finished(self.root / job_id / OUT_DIR) else "interrupted"
        if code == 0:
            return "finished"
        if cancelled:
            return "cancelled"
        return "failed" if code in (1, 2) else "interrupted"

    def _progress(self, job_id: str, record: dict[str, Any], state: JobState) -> list[DeploymentProgress]:
        out = self.root / job_id / OUT_DIR
        final = {d.get("name"): d for d in (read_json_object(out / files.CAMPAIGN) or {}).get("deployments", [])}
        rows = []
        for planned in record.get("deployments", []):
            row = DeploymentProgress.model_validate(planned)
            merged = {**final.get(row.name, {}), **(read_json_object(out / row.name / files.TRIAL) or {})}
            for key in ("state", "error", "mlflow_run_id", "seconds", "result"):
                if merged.get(key) is not None:
                    setattr(row, key, merged[key])
            if row.state != "finished":
                row.episodes_done = _count_lines(out / row.name / files.EPISODES)
            elif merged.get("episodes_done") is not None:
                row.episodes_done = int(merged["episodes_done"])
            if state not in ACTIVE and row.state == "running":
                row.state = "interrupted"
            rows.append(row)
        return rows

    # cancelling

    def cancel(self, job_id: str) -> JobStatus:
        """SIGINT to the job's process group now, its whole session killed after a grace period."""
        with self._lock:
            record = self._record(job_id)
            state = self._state(job_id, record)
            if state not in ACTIVE:
                raise JobConflict(f"job {job_id} is {state}: only a queued or running job can be cancelled")
            self._update(job_id, cancel_requested=True)
            pid = record.get("pid")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGINT)
            threading.Thread(target=self._escalate, args=(job_id, pid), daemon=True).start()
        log.info("job %s: cancel requested", job_id)
        return self.status(job_id)

    def _escalate(self, job_id: str, pid: int, grace_s: float = CANCEL_GRACE_S) -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not self._running(job_id, pid):
                return
            time.sleep(0.5)
        log.warning("job %s did not stop within %.0f s of its cancel: killing it", job_id, grace_s)
        self.kill(job_id)

    def _running(self, job_id: str, pid: int) -> bool:
        child = self._children.get(job_id)
        if child is not None:
            return child.poll() is None
        return _is_job_process(pid, self.root / job_id)

    def kill(self, job_id: str) -> None:
        """SIGKILL to every process of the job's session (Ray's workers run in groups of their own)."""
        pid = self._record(job_id).get("pid")
        if pid is None or not self._running(job_id, pid):
            return
        for member in _session_members(pid) or [pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)

    # job.json

    def _record(self, job_id: str) -> dict[str, Any]:
        if not JOB_ID.match(job_id):
            raise BodyError("job_id", f"'{job_id[:40]}' is not a job id (12 hex digits)")
        record = read_json_object(self.root / job_id / files.JOB)
        if record is None or not {"kind", "name", "created"} <= record.keys():
            raise NotFoundError(f"no job '{job_id}': GET /v1/jobs lists the jobs")
        return record

    def _write(self, job_id: str, record: dict[str, Any]) -> None:
        atomic_write(self.root / job_id / files.JOB, json.dumps(record, indent=2) + "\n")

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._write(job_id, {**self._record(job_id), **changes})


def _planned(name: str, config: DeploymentConfig) -> dict[str, Any]:
    classes = ",".join(map(str, config.classes)) if config.classes else "all"
    return {"name": name, "device": config.device.name, "classes": classes, "episodes": config.search.episodes}


def _count_lines(path: Path) -> int:
    """Complete lines of an episodes.jsonl (a torn last line has no newline yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _all_finished(out: Path) -> bool:
    deployments = (read_json_object(out / files.CAMPAIGN) or {}).get("deployments") or []
    return bool(deployments) and all(d.get("state") == "finished" for d in deployments)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 16_384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def _is_job_process(pid: int, folder: Path) -> bool:
    """Whether `pid` is alive and still the job's campaign process (not a reused pid, not a zombie)."""
    proc = Path(f"/proc/{pid}")
    if not proc.parent.joinpath("self").exists():  # no procfs: the pid alone
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    return str(folder / files.JOB_SPEC) in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _session_members(sid: int) -> list[int]:
    """Every process whose session id is `sid` (Linux procfs), the session leader first."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return sorted(members, key=lambda p: p != sid)
