"""Run a campaign: many deployments searched in parallel on Ray Tune. Reads top to bottom:

out folder and state -> teachers -> tracking (parent run; an mlflow server over a SQLite store)
-> Ray (local or a cluster) -> one Tune trial per unfinished deployment -> campaign.json, plot.

Every trial calls the same `run_search` as `modeltailor search`, into ``OUT/<deployment>/``, with
its MLflow run nested under the campaign's parent run. The trial itself records its state in
``OUT/<deployment>/trial.json`` (atomically), so the campaign's record survives the campaign
process: after ``kill -9``, ``--resume`` skips every finished deployment and continues the others
from their ``episodes.jsonl`` (run_search's own resume). A failing deployment is recorded with its
one-line error and the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ray.tune import Callback

from modeltailor.common.storage import atomic_write, locked, read_json_object
from modeltailor.errors import ConfigError, ModelTailorError, SearchInterrupted, first_line
from modeltailor.experiments.fleet.ray_cluster import (
    Cluster,
    check_address,
    check_fits,
    connected,
    node_ip_toward,
)
from modeltailor.experiments.search.episodes import load_episodes
from modeltailor.experiments.search.run import check_out_dir
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.campaign import Campaign
from modeltailor.experiments.spec.deployment import (
    DeploymentConfig,
    changed_settings,
    resume_refusal,
)
from modeltailor.experiments.tracking.server import serving
from modeltailor.experiments.tracking.tracker import TRAINING_VIEW, Tracker

log = logging.getLogger(__name__)

TUNE_DIR = "_tune"
STATES = ("pending", "running", "finished", "failed", "interrupted")
FORWARDED_ENV = ("MODELTAILOR_CACHE", "MODELTAILOR_CORES_LOCK", "MODELTAILOR_DEVICE_TOKEN")
"""Environment the trials need from the campaign process (on a cluster they start elsewhere)."""


@dataclass
class DeploymentStatus:
    """One deployment's place in the campaign (a row of the live table and of campaign.json)."""

    name: str
    device: str
    classes: str
    episodes: int
    state: str = "pending"
    episodes_done: int = 0
    best: str = ""
    error: str | None = None
    node: str | None = None
    mlflow_run_id: str | None = None
    result: dict[str, Any] | None = None
    seconds: float | None = None

    @classmethod
    def of(cls, name: str, config: DeploymentConfig) -> DeploymentStatus:
        classes = ",".join(map(str, config.classes)) if config.classes else "all"
        return cls(name, config.device.name, classes, config.search.episodes)

    def absorb(self, record: dict[str, Any]) -> None:
        """Take over what a trial wrote (trial.json) or reported (tune.report)."""
        for key in ("state", "episodes_done", "best", "error", "node", "mlflow_run_id", "result", "seconds"):
            if key in record and record[key] is not None:
                setattr(self, key, record[key])


class CampaignReporter(Protocol):
    def message(self, text: str) -> None: ...

    def update(self, statuses: list[DeploymentStatus]) -> None: ...


class LogCampaignReporter:
    def message(self, text: str) -> None:
        log.info(text)

    def update(self, statuses: list[DeploymentStatus]) -> None:
        log.debug("campaign: %s", ", ".join(f"{s.name} {s.state} {s.episodes_done}" for s in statuses))


@dataclass
class CampaignRun:
    """What a finished (or interrupted) campaign produced."""

    out_dir: Path
    statuses: list[DeploymentStatus]
    mlflow_run_id: str | None
    wall_seconds: float
    interrupted: bool = False
    cluster: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[DeploymentStatus]:
        return [s for s in self.statuses if s.state == "failed"]


# -- the campaign process ------------------------------------------------------------------------


def run_campaign(
    campaign: Campaign,
    out_dir: Path,
    *,
    address: str | None = None,
    resume: bool = False,
    reporter: CampaignReporter | None = None,
) -> CampaignRun:
    """Search every deployment of `campaign` into `out_dir`/<name>, at most `max_concurrent` at once.

    Nothing is written to `out_dir` until Ray accepted the campaign (address, token, resources),
    so a rejected campaign can be rerun as it is. Raises SearchInterrupted on Ctrl-C (finished
    deployments are kept; --resume runs the rest).
    """
    reporter = reporter or LogCampaignReporter()
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)  # README
    out_dir = out_dir.resolve()
    started = time.perf_counter()
    if address is not None:
        check_address(address)  # a wrong address or token fails in seconds, before any work
    record = _prepare(campaign, out_dir, resume)
    statuses = _statuses(campaign, out_dir)
    todo = [s.name for s in statuses if s.state != "finished"]
    if resume:
        reporter.message(f"resume: {len(statuses) - len(todo)} finished deployments kept, {len(todo)} to run")
    _prepare_teachers(campaign, statuses, reporter)
    tracking = campaign.tracking
    record["tracking_uri"] = Tracker(tracking.uri, tracking.experiment).tracking_uri if tracking.enabled else None
    interrupted = False
    with connected(address, _forwarded_env()) as cluster:
        check_fits(cluster, campaign.spec.resources.cpus, campaign.spec.resources.gpus)
        reporter.message(
            f"Ray: {'local' if cluster.local else cluster.address}, {cluster.nodes} node(s), "
            f"{cluster.cpus:g} CPUs; {len(todo)} deployments, {campaign.spec.max_concurrent} at once"
        )
        record.update(_cluster_record(cluster))
        with _tracking_uri(record["tracking_uri"], address, out_dir) as uri:
            parent = _ParentRun(uri, tracking.experiment, campaign, record) if uri else None
            try:
                _write_record(out_dir, record, statuses)
                if todo:
                    _tune(campaign, out_dir, todo, statuses, uri, parent, reporter)
            except KeyboardInterrupt:
                interrupted = True
                _stop_trials()
            finally:
                statuses = _finish(out_dir, campaign, record, parent, interrupted, started, reporter)
    wall = time.perf_counter() - started
    if interrupted:
        raise SearchInterrupted(
            f"campaign interrupted: {sum(s.state == 'finished' for s in statuses)} of {len(statuses)} "
            f"deployments finished and kept in {out_dir}; rerun with --resume --out {out_dir} to run the rest"
        )
    return CampaignRun(out_dir, statuses, record.get("mlflow_run_id"), wall, interrupted, _cluster_record(cluster))


def _stop_trials() -> None:
    """Disconnect from Ray, which ends this campaign's trials, before the closing record counts
    their episodes: a trial still running (SIGTERM reaches the campaign process alone) or finishing
    its episode would otherwise append one after it was counted."""
    import ray

    ray.shutdown()


def _finish(
    out_dir: Path,
    campaign: Campaign,
    record: dict[str, Any],
    parent: _ParentRun | None,
    interrupted: bool,
    started: float,
    reporter: CampaignReporter,
) -> list[DeploymentStatus]:
    """The closing record: statuses from the trials' files, campaign.json, the plot, the parent run."""
    statuses = _statuses(campaign, out_dir, interrupted=interrupted)
    reporter.update(statuses)
    record["wall_seconds"] = round(record.get("wall_seconds", 0.0) + time.perf_counter() - started, 3)
    _write_record(out_dir, record, statuses)
    _write_plot(out_dir, statuses)
    if parent is not None:
        parent.finish(out_dir, statuses, interrupted)
    return statuses


def _prepare(campaign: Campaign, out_dir: Path, resume: bool) -> dict[str, Any]:
    """The campaign record (campaign.json) to continue or start; refuses to overwrite another."""
    check_out_dir(out_dir)
    path = out_dir / files.CAMPAIGN
    spec = campaign.spec.model_dump(mode="json")
    if path.is_file():
        previous = json.loads(path.read_text())
        if not resume:
            raise ConfigError(
                f"--out '{out_dir}' holds a campaign already: pass --resume to continue it, or another --out"
            )
        _check_resumable(out_dir, previous.get("deployments_config") or {}, _configs(campaign))
        previous["spec"] = spec
        previous["deployments_config"] = _configs(campaign)
        return dict(previous)
    return {
        "name": campaign.spec.name, "spec": spec, "source": str(campaign.source) if campaign.source else None,
        "deployments_config": _configs(campaign), "mlflow_run_id": None, "wall_seconds": 0.0,
    }


def _check_resumable(out_dir: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    """ConfigError unless `now` has the same deployments as `before`, each changed at most in settings
    its episodes do not depend on (run_search's own --resume rule, `deployment.RESUME_KEYS`)."""
    if set(before) != set(now):
        raise ConfigError(
            f"--resume: '{out_dir}' holds a campaign with other deployments: use another --out or drop --resume"
        )
    for name in sorted(now):
        changes = changed_settings(before[name], now[name])
        if changes:
            raise ConfigError(resume_refusal(f"deployment '{name}' of the campaign in '{out_dir}'", changes))


def _configs(campaign: Campaign) -> dict[str, Any]:
    return {name: cfg.model_dump(mode="json", exclude={"tracking"}) for name, cfg in campaign.deployments.items()}


def _statuses(campaign: Campaign, out_dir: Path, interrupted: bool = False) -> list[DeploymentStatus]:
    """Every deployment's status, from what its trial recorded (the source of truth)."""
    statuses = []
    for name, config in campaign.deployments.items():
        status = DeploymentStatus.of(name, config)
        trial = read_json_object(out_dir / name / files.TRIAL)
        if trial is not None:
            status.absorb(trial)
        if status.state != "finished":
            status.episodes_done = len(load_episodes(out_dir / name / files.EPISODES))
            if interrupted and status.state in ("running", "pending") and status.episodes_done:
                status.state = "interrupted"
        statuses.append(status)
    return statuses


def _prepare_teachers(campaign: Campaign, statuses: list[DeploymentStatus], reporter: CampaignReporter) -> None:
    """Train (or load) each distinct teacher once here, so trials find it cached instead of
    training it at once; a deployment whose teacher fails is marked failed, the rest go on."""
    from modeltailor.experiments.search.teacher import load_teacher, teacher_cache_path
    from modeltailor.experiments.search.workbench import load_deployment_data

    done: dict[Path, str | None] = {}
    for status in statuses:
        if status.state == "finished":
            continue
        config = campaign.deployments[status.name]
        key = teacher_cache_path(config)
        if key not in done:
            try:
                full, _, _ = load_deployment_data(config)
                _, source = load_teacher(config, full)
                reporter.message(f"teacher for {status.name}: {source}")
                done[key] = None
            except ModelTailorError as exc:
                done[key] = str(exc)
        if done[key] is not None:
            status.state, status.error = "failed", done[key]


@contextmanager
def _tracking_uri(base_uri: str | None, address: str | None, out_dir: Path) -> Iterator[str | None]:
    """The URI every trial logs to: an mlflow server over a SQLite store for the campaign's length
    (bound where the cluster's nodes reach it), or the configured server itself."""
    if base_uri is None:
        yield None
        return
    host = "127.0.0.1" if address is None else node_ip_toward(address)
    with serving(base_uri, host=host, log_file=out_dir / "mlflow-server.log") as uri:
        yield uri


def _forwarded_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    return env


def _cluster_record(cluster: Cluster | None) -> dict[str, Any]:
    return {"ray": asdict(cluster)} if cluster is not None else {}


def _write_record(out_dir: Path, record: dict[str, Any], statuses: list[DeploymentStatus]) -> None:
    record = {**record, "deployments": [asdict(s) for s in statuses]}
    record["deployments"] = [{**d, "out": str(out_dir / d["name"])} for d in record["deployments"]]
    atomic_write(out_dir / files.CAMPAIGN, json.dumps(record, indent=2, default=str) + "\n")


def _write_plot(out_dir: Path, statuses: list[DeploymentStatus]) -> None:
    from modeltailor.experiments.search.plots import campaign_plot

    points = [(s.name, s.device, s.result) for s in statuses if s.result]
    if points:
        campaign_plot(points, out_dir / files.CAMPAIGN_PLOT)


class _ParentRun:
    """The campaign's MLflow run: started (or continued on --resume), finished with its artifacts."""

    def __init__(self, uri: str, experiment: str, campaign: Campaign, record: dict[str, Any]) -> None:
        self.tracker = Tracker(uri, experiment)
        run_id = record.get("mlflow_run_id")
        if run_id:
            try:
                self.tracker.resume_run(run_id)
            except ModelTailorError as exc:
                log.warning("resume: cannot continue the campaign's MLflow run %s (%s)", run_id, exc)
                run_id = None
        if not run_id:
            params = {"campaign": campaign.spec.model_dump(mode="json", exclude={"deployments"}),
                      "deployments": ",".join(campaign.deployments)}
            run_id = self.tracker.start_run(
                campaign.spec.name, params=params,
                tags={"modeltailor.kind": "campaign", "campaign": campaign.spec.name},
            )
            self.tracker.log_dict(campaign.spec.model_dump(mode="json"), files.CAMPAIGN_SPEC_ARTIFACT)
            record["mlflow_run_id"] = run_id
        record["experiment"], record["logged_through"] = experiment, self.tracker.tracking_uri
        self.run_id, self.name = run_id, campaign.spec.name

    def finish(self, out_dir: Path, statuses: list[DeploymentStatus], interrupted: bool) -> None:
        try:
            counts = {state: sum(s.state == state for s in statuses) for state in STATES}
            self.tracker.log_metrics({f"deployments/{k}": v for k, v in counts.items()})
            for name in (files.CAMPAIGN, files.CAMPAIGN_PLOT):
                if (out_dir / name).is_file():
                    self.tracker.log_artifact(out_dir / name)
            self.tracker.set_description(campaign_description(self.name, statuses, self.tracker.experiment_id, self.run_id))
            if interrupted:
                _kill_open_children(self.tracker, out_dir, statuses)
            status = "KILLED" if interrupted else ("FAILED" if counts["failed"] else "FINISHED")
            self.tracker.end_run(status)
        except ModelTailorError as exc:
            log.warning("campaign run %s could not be closed: %s", self.run_id, exc)


def campaign_description(name: str, statuses: list[DeploymentStatus], experiment_id: str, run_id: str) -> str:
    """The campaign run's description in the MLflow UI: its deployments side by side, each linked
    to its run and registered version, and the campaign plot."""
    rows = [
        f"**campaign {name}**: {sum(s.state == 'finished' for s in statuses)} of {len(statuses)} deployments "
        "finished.",
        "",
        "| deployment | device | classes | state | accuracy | latency (ms) | speedup | memory (bytes) | objective | "
        "version |",
        "|---|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for s in statuses:
        r = s.result or {}
        run = f"[{s.name}](#/experiments/{experiment_id}/runs/{s.mlflow_run_id}{TRAINING_VIEW})" if s.mlflow_run_id else s.name
        version = r.get("registered_version")
        model = f"modeltailor-{s.device}"
        link = f"[{model} v{version}](#/models/{model}/versions/{version}{TRAINING_VIEW})" if version else "-"
        numbers = (
            f"{r['accuracy']:.4f} | {r['latency_ms']:.3f} | {r['speedup']:.2f}x | {r['memory_bytes']:,} | "
            f"{'met' if r.get('objective_met') else 'not met'}" if r else "- | - | - | - | -"
        )
        rows.append(f"| {run} | {s.device} | {s.classes} | {s.state} | {numbers} | {link} |")
    rows += ["", f"![accuracy vs speedup](get-artifact?path={files.CAMPAIGN_PLOT}&run_uuid={run_id})"]
    return "\n".join(rows)


def _kill_open_children(tracker: Tracker, out_dir: Path, statuses: list[DeploymentStatus]) -> None:
    """Mark the MLflow runs of deployments cut off by the interruption KILLED (resume reopens them)."""
    for status in statuses:
        if status.state == "finished":
            continue
        run = read_json_object(out_dir / status.name / files.RUN)
        if run and run.get("mlflow_run_id"):
            tracker.terminate(run["mlflow_run_id"], "KILLED")


# -- Ray Tune --------------------------------------------------------------------------------------


def _tune(
    campaign: Campaign,
    out_dir: Path,
    todo: list[str],
    statuses: list[DeploymentStatus],
    tracking_uri: str | None,
    parent: _ParentRun | None,
    reporter: CampaignReporter,
) -> None:
    from ray import tune

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C reaches run_campaign (no Tuner.restore advice)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables, ours is live
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TensorBoard per trial
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # ...so no metrics files
    spec = campaign.spec
    failed_early = {s.name for s in statuses if s.state == "failed" and s.name in todo and s.error}
    for status in statuses:
        if status.name in failed_early:
            _record_trial(out_dir / status.name, {"state": "failed", "error": status.error})
    jobs = {
        name: {
            "config": campaign.deployments[name].model_dump(mode="json"),
            "out": str(out_dir / name),
            "tracking_uri": tracking_uri,
            "experiment": campaign.tracking.experiment,
            "parent_run_id": parent.run_id if parent else None,
            "cpus": spec.resources.cpus,
        }
        for name in todo if name not in failed_early
    }
    if not jobs:
        return
    trainable = tune.with_resources(
        tune.with_parameters(deployment_trial, jobs=jobs), {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    )
    live = _LiveStatus(statuses, reporter)
    tuner = tune.Tuner(
        trainable,
        param_space={"deployment": tune.grid_search(list(jobs))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.max_concurrent,
            trial_name_creator=lambda t: str(t.config["deployment"]),
            trial_dirname_creator=lambda t: str(t.config["deployment"]),
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{int(time.time())}", storage_path=str(out_dir / TUNE_DIR), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False), callbacks=[live],
        ),
    )
    results = tuner.fit()
    for result in (results[i] for i in range(len(results))):
        if result.error is not None:
            name = (result.config or {}).get("deployment")
            if name:
                _record_trial(out_dir / name, {"state": "failed", "error": f"trial died: {first_line(result.error)}"},
                              only_if_not="finished")


class _LiveStatus(Callback):
    """Tune callback: every reported result updates the live table."""

    def __init__(self, statuses: list[DeploymentStatus], reporter: CampaignReporter) -> None:
        self.statuses = {s.name: s for s in statuses}
        self.reporter = reporter
        reporter.update(list(self.statuses.values()))

    def __getstate__(self) -> dict[str, Any]:
        return {}  # Tune pickles its callbacks with the experiment state: the live table stays here

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.statuses, self.reporter = {}, LogCampaignReporter()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._set(trial, {"state": "running"})

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        self._set(trial, result)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._set(trial, {"state": "failed", "error": "the trial's process died (see the Ray logs)"})

    def _set(self, trial: Any, record: dict[str, Any]) -> None:
        status = self.statuses.get(str(trial.config.get("deployment")))
        if status is not None:
            status.absorb(record)
            self.reporter.update(list(self.statuses.values()))


# -- inside a trial (a Ray worker process) --------------------------------------------------------


def deployment_trial(params: dict[str, Any], jobs: dict[str, dict[str, Any]]) -> None:
    """One Tune trial: search one deployment with `run_search`, reporting every episode to Tune."""
    from ray import tune

    name = params["deployment"]
    job = jobs[name]
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    _pin_threads(job["cpus"])
    with _only_trial_of(out):
        node = _node_name()
        _record_trial(out, {"state": "running", "node": node, "pid": os.getpid(), "error": None})
        final = _search_deployment(name, job, out, node, tune.report)
        _record_trial(out, final)
        tune.report(final)


def _search_deployment(
    name: str, job: dict[str, Any], out: Path, node: str, report: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """run_search on the job; the trial's final record (finished, interrupted or failed)."""
    from modeltailor.experiments.search.run import run_search

    started = time.perf_counter()
    config = DeploymentConfig.model_validate(job["config"])
    resume = bool(load_episodes(out / files.EPISODES)) and (out / files.DEPLOYMENT).is_file()
    reporter = _TrialReporter(out, report, node)
    try:
        tracker = Tracker(job["tracking_uri"], job["experiment"]) if job["tracking_uri"] else None
        run = run_search(config, out, reporter, resume=resume, tracker=tracker, parent_run_id=job["parent_run_id"])
    except ModelTailorError as exc:
        return _failure(out, str(exc), started)
    except Exception as exc:  # a bug, not the user's input: one line here, the traceback in a file
        (out / "error.txt").write_text(traceback.format_exc())
        return _failure(out, f"internal error: {first_line(exc)} (traceback in {out / 'error.txt'})", started)
    finally:
        reporter.close()
    summary, registered = run.summary, run.extra.get("registered")
    row = {**result_row(summary), "registered_version": registered.version if registered else None}
    return {
        "state": "interrupted" if run.result.interrupted else "finished", "error": None,
        "episodes_done": summary.episodes, "mlflow_run_id": summary.mlflow_run_id, "node": node,
        "seconds": round(time.perf_counter() - started, 3), "result": row,
    }


def result_row(summary: Any) -> dict[str, Any]:
    """What the campaign keeps of a deployment's summary.json."""
    return {
        "accuracy": summary.best.accuracy, "baseline_accuracy": summary.baseline.accuracy,
        "accuracy_drop": summary.accuracy_drop, "latency_ms": summary.best.latency_ms,
        "baseline_latency_ms": summary.baseline.latency_ms, "speedup": summary.speedup,
        "memory_bytes": summary.best.memory_bytes, "memory_reduction": summary.memory_reduction,
        "params": summary.best.params, "objective_met": summary.objective.met_at_final_measurement,
    }


def _failure(out: Path, error: str, started: float) -> dict[str, Any]:
    log.warning("deployment in %s failed: %s", out, error)
    return {"state": "failed", "error": error, "episodes_done": len(load_episodes(out / files.EPISODES)),
            "seconds": round(time.perf_counter() - started, 3)}


def _record_trial(out: Path, update: dict[str, Any], only_if_not: str | None = None) -> None:
    """Merge `update` into OUT/<deployment>/trial.json (atomically, under its lock)."""
    path = out / files.TRIAL
    with locked(path):
        current = read_json_object(path) or {}
        if only_if_not is not None and current.get("state") == only_if_not:
            return
        atomic_write(path, json.dumps({**current, **update}, indent=2, default=str) + "\n")


@contextmanager
def _only_trial_of(out: Path) -> Iterator[None]:
    """One process searches a deployment folder at a time (a trial orphaned by a killed campaign
    may still be finishing when --resume starts the next one: wait for it, within reason)."""
    from filelock import Timeout

    try:
        with locked(out / ".search", timeout_s=600):
            yield
    except Timeout:
        raise ModelTailorError(
            f"'{out}' is being searched by another process for 10 minutes: stop it, then --resume"
        ) from None


def _pin_threads(cpus: float) -> None:
    """torch (and OpenMP) threads = the trial's CPUs, so parallel trials do not oversubscribe."""
    import torch

    threads = max(1, int(cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _node_name() -> str:
    try:
        import ray

        return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:  # outside Ray (tests call the trial body directly)
        return "local"


class _TrialReporter:
    """run_search's reporter inside a trial: progress to Tune, messages to OUT/search.log."""

    def __init__(self, out: Path, report: Callable[[dict[str, Any]], None], node: str) -> None:
        self.report, self.node = report, node
        self.log = (out / "search.log").open("a")
        self.done = 0

    def message(self, text: str) -> None:
        self.log.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.log.flush()

    def start(self, episodes: int) -> None:
        self.message(f"searching {episodes} episodes")

    def episode(self, record: Any, best: Any) -> None:
        self.done = record.episode + 1
        text = f"acc {best.accuracy:.3f}, {best.latency_ms:.3f} ms (ep {best.episode})" if best is not None else ""
        self.message(f"episode {record.episode}: acc {record.accuracy:.4f} latency {record.latency_ms:.3f} ms")
        self.report({"state": "running", "episodes_done": self.done, "best": text, "node": self.node,
                     "episode_accuracy": record.accuracy, "episode_latency_ms": record.latency_ms})

    def close(self) -> None:
        self.log.close()
