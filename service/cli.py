"""The `modeltailor` command line: search, train, apply, show-config.

User mistakes (ModelTailorError) print one line on stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modeltailor.env.records import EpisodeRecord
from modeltailor.errors import ModelTailorError, SearchInterrupted
from modeltailor.experiments.spec.deployment import DeploymentConfig, load_config
from modeltailor.experiments.spec.summary import SearchSummary
from modeltailor.service.campaign_cli import campaign_command
from modeltailor.service.devices_cli import device_server_command, devices_app
from modeltailor.service.registry_cli import best_command, registry_app
from modeltailor.service.serve_cli import serve_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL auto-compression of CNNs, per deployment.")
app.add_typer(devices_app, name="devices")
app.command("device-server")(device_server_command)
app.command("campaign")(campaign_command)
app.command("serve")(serve_command)
app.command("best")(best_command)
app.add_typer(registry_app, name="registry")
app.command("device-agent", hidden=True, help="alias of device-server")(device_server_command)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="deployment YAML")]


class RichReporter:
    """Progress bar with the best result so far."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[best]}"), console=console,
        )
        self.task: Any = None

    def message(self, text: str) -> None:
        console.log(text)

    def start(self, episodes: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("real episodes", total=episodes, best="")

    def episode(self, record: EpisodeRecord, best: EpisodeRecord | None) -> None:
        text = ""
        if best is not None:
            text = f"best: acc {best.accuracy:.3f}, {best.latency_ms:.3f} ms (ep {best.episode})"
        self.progress.update(self.task, advance=1, best=text)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


@app.command()
def search(
    config: ConfigOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("runs/search"),
    episodes: Annotated[int | None, typer.Option(help="override search.episodes")] = None,
    searcher: Annotated[
        str | None, typer.Option("--searcher", "--agent", help="override search.searcher: ppo, ppo-real, evolution-surrogate, random, uniform, greedy, evolution, ddpg")
    ] = None,
    warm_start: Annotated[
        str | None, typer.Option(help="override search.warm_start: a PPO search's --out folder, its MLflow run id, or auto")
    ] = None,
    device: Annotated[str | None, typer.Option(help="override device.name")] = None,
    classes: Annotated[str | None, typer.Option(help="override classes: ids or names, e.g. '0,3,7'")] = None,
    seed: Annotated[int | None, typer.Option(help="override search.seed")] = None,
    methods: Annotated[str | None, typer.Option(help="override search.methods, e.g. 'prune,lowrank,int8'")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="override tracking.uri")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="do not log to MLflow")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="keep the episodes already in OUT and run the rest")] = False,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="measure every architecture anew: no latency from earlier runs (device.cache: false); "
            "repeats within this search are still reused",
        ),
    ] = False,
) -> None:
    """Search a compression policy for one deployment and write OUT/summary.json, model.onnx, policy.json."""
    from modeltailor.experiments.search.run import run_search

    overrides = {
        "search.episodes": episodes, "search.searcher": searcher, "device.name": device,
        "classes": _parse_classes(classes), "search.seed": seed, "tracking.uri": tracking_uri,
        "search.methods": [m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        "tracking.enabled": False if no_tracking else None, "search.warm_start": warm_start,
        "device.cache": False if no_cache else None,
    }
    cfg = load_config(config, overrides)
    reporter = RichReporter()
    try:
        run = run_search(cfg, out, reporter, resume=resume)
    finally:
        reporter.stop()
    _print_summary(run.summary, out)
    if run.result.interrupted:
        console.print(
            f"[yellow]interrupted after {len(run.result.episodes)} of {cfg.search.episodes} episodes: "
            f"the outputs hold the best so far; rerun with --resume --out {out} to run the rest[/yellow]"
        )


@app.command()
def train(config: ConfigOpt = None) -> None:
    """Train the configured model (zoo or factory) on its data set and cache it as the teacher."""
    from modeltailor.compressors.distill import accuracy
    from modeltailor.experiments.search.teacher import load_teacher
    from modeltailor.experiments.search.workbench import load_deployment_data

    cfg = load_config(config)
    full, _, _ = load_deployment_data(cfg)
    start = time.perf_counter()
    teacher, source = load_teacher(
        cfg, full, lambda e, n, loss: console.log(f"epoch {e}/{n} loss {loss:.3f}"), train=True
    )
    seconds = time.perf_counter() - start
    val, test = (accuracy(teacher, split.tensors[0], split.tensors[1]) for split in (full.val, full.test))
    console.print(
        f"teacher: {source} ({seconds:.0f} s)\n"
        f"accuracy (all classes): validation {val:.4f}, test {test:.4f}"
    )


@app.command("check-model")
def check_model_command(
    config: ConfigOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report here as JSON")] = None,
) -> None:
    """Before a long search: the units, their kind, channels, MACs, the methods that work on each,
    the units a search would freeze and why, and the output layer."""
    from modeltailor.experiments.tools.check_model import check_model

    cfg = load_config(config)
    report = check_model(cfg)
    table = Table(title=f"{report.model}: {len(report.units)} units, input {report.input_shape}")
    for col in ("unit", "kind", "res.", "in->out", "MMACs", "params", "methods", "frozen / off"):
        left = col in ("unit", "kind", "methods", "frozen / off")
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "unit")
    for row in report.units:
        note = "frozen" if row.frozen else ("off: " + ", ".join(row.failed) if row.failed else "")
        table.add_row(
            row.unit, row.kind, "yes" if row.residual else "", f"{row.in_channels}->{row.channels}",
            f"{row.macs / 1e6:.2f}", f"{row.params:,}", ", ".join(row.methods), note,
        )
    console.print(table)
    for row in (r for r in report.units if r.failed):
        what = "frozen" if row.frozen else "off"
        for method, why in row.failed.items():
            console.print(f"{what}: unit '{row.unit}', {method}: {why}", highlight=False, soft_wrap=True)
    head = report.output_layer or "none found (no conv/linear layer produces the output)"
    subset = "yes" if report.narrowable else "no (its channels do not map one-to-one to the outputs)"
    console.print(
        f"teacher: {report.teacher}\noutput layer: {head}; class subsets: {subset}\n"
        f"checked: {', '.join(report.methods_checked)}; {len(report.units) - len(report.frozen)} of "
        f"{len(report.units)} units compressible, {len(report.frozen)} frozen; "
        f"{report.total_macs / 1e6:.2f} MMACs, {report.total_params:,} parameters",
        highlight=False,
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


@app.command()
def apply(
    policy: Annotated[Path, typer.Option("--policy", "-p", help="policy.json written by a search")],
    config: ConfigOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("runs/apply"),
    weights: Annotated[Path | None, typer.Option(help="model.pt of the search, for the exact weights")] = None,
    distill_steps: Annotated[int, typer.Option(help="distillation steps when no --weights")] = 0,
) -> None:
    """Rebuild the compressed model from the original model and a policy; write OUT/model.onnx."""
    from modeltailor.experiments.tools.apply import rebuild

    cfg = load_config(config)
    result = rebuild(cfg, policy, out, weights, distill_steps)
    console.print(
        f"rebuilt: {result['params']:,} parameters (original {result['original_params']:,}), "
        f"validation accuracy {result['val_accuracy']:.4f} -> {out / 'model.onnx'}"
    )


@app.command()
def pick(
    run: Annotated[str, typer.Option("--run", "-r", help="a search's output folder or MLflow run id")],
    max_latency_ms: Annotated[float | None, typer.Option(help="latency limit (ms)")] = None,
    max_memory_bytes: Annotated[float | None, typer.Option(help="memory limit (bytes)")] = None,
    min_accuracy: Annotated[float | None, typer.Option(help="accuracy floor (fraction)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the picked policy.json here")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store of --run (default: ./mlflow.db)")] = None,
) -> None:
    """Pick another trade-off from a finished search's Pareto set, without searching again."""
    from modeltailor.experiments.tools.pick import load_search_summary, picked_policy
    from modeltailor.experiments.tools.pick import pick as pick_point

    summary = load_search_summary(run, tracking_uri)
    point = pick_point(summary, max_latency_ms, max_memory_bytes, min_accuracy)
    console.print(
        f"episode {point.episode}: accuracy {point.accuracy:.4f} (validation, search-time recovery), "
        f"{point.latency_ms:.3f} ms, {point.memory_bytes / 1e6:.2f} MB, {point.params:,} params"
    )
    if out is not None:
        picked_policy(summary, point).save(out)
        console.print(f"policy written to {out}: rebuild with `modeltailor apply --policy {out} --distill-steps 800`")


@app.command("fold-report")
def fold_report_command(
    config: ConfigOpt = None,
    runs: Annotated[int, typer.Option(help="timed runs per graph and optimization level")] = 200,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the full report here")] = None,
) -> None:
    """Measure what layer folding changes on the deployment's teacher (DeepRebirth-style merges)."""
    from modeltailor.experiments.search.teacher import load_teacher
    from modeltailor.experiments.search.workbench import load_deployment_data
    from modeltailor.experiments.tools.fold_report import fold_report, local_device

    cfg = load_config(config)
    device = local_device(cfg.device.name, cfg.device.profiles, runs=runs)
    full, splits, _ = load_deployment_data(cfg)
    teacher, _ = load_teacher(cfg, full)
    shape = (splits.in_channels, splits.input_size, splits.input_size)
    report = fold_report(teacher, shape, device)
    table = Table(title=f"layer folding on {report['device']} ({report['threads']} thread)")
    for col in ("graph", "ORT optimization", "nodes run", "latency ms (median)"):
        table.add_column(col, justify="right")
    for graph in ("unfolded", "exported"):
        for level, entry in report[graph]["ort"].items():
            table.add_row(graph, level, str(entry["nodes"]), f"{entry.get('latency_ms', float('nan')):.3f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")


@app.command("show-config")
def show_config(config: ConfigOpt = None) -> None:
    """Print the effective deployment config (defaults filled in) as YAML."""
    cfg = load_config(config)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON schema of deployment configs (every key with its description)."""
    console.print_json(json.dumps(DeploymentConfig.model_json_schema()))


@app.command("summary-schema")
def summary_schema() -> None:
    """Print the JSON schema of a search's summary.json (every key with its description)."""
    console.print_json(json.dumps(SearchSummary.model_json_schema()))


def _parse_classes(text: str | None) -> list[int | str] | None:
    """'0,3,7' -> [0, 3, 7]; 'cat,dog' -> names; an empty list is left for validation to reject."""
    if text is None:
        return None
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    return [int(t) if t.lstrip("-").isdigit() else t for t in tokens]


def _print_summary(summary: SearchSummary, out: Path) -> None:
    table = Table(title=f"deployment '{summary.deployment}' on {summary.device['name']}")
    for col in ("", "accuracy (test)", "latency ms (median)", "p90 ms", "memory", "params"):
        table.add_column(col, justify="right")
    for name, row in (("baseline", summary.baseline), ("best", summary.best)):
        table.add_row(
            name, f"{row.accuracy:.4f}", f"{row.latency_ms:.3f}", f"{row.latency_p90_ms:.3f}",
            f"{row.memory_bytes / 1e6:.2f} MB", f"{row.params:,}",
        )
    console.print(table)
    console.print(
        f"speedup {summary.speedup:.2f}x, memory {summary.memory_reduction:.2f}x smaller, "
        f"accuracy drop {summary.accuracy_drop:.2f} points, {summary.episodes} episodes in "
        f"{summary.search_seconds:.0f} s; outputs in {out}"
    )
    if not summary.objective.met_at_final_measurement:
        limits = ", ".join(f"{k} {v:.4g}" for k, v in summary.objective.limits().items())
        console.print(
            f"[yellow]the final measurement misses the objective ({limits}): the search measured it within; "
            f"see summary.json's pareto, or `modeltailor pick --run {out}` a tighter point[/yellow]"
        )
    if summary.mlflow_run_id:
        console.print(f"MLflow run {summary.mlflow_run_id}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _stop_signals_as_interrupt() -> Iterator[None]:
    """`kill <pid>` (SIGTERM) is handled like Ctrl-C while the block runs in the main thread, and
    SIGINT is Ctrl-C even where it was inherited ignored: a non-interactive shell starts `cmd &`
    with SIGINT ignored, and the API cancels a job (`experiments/fleet/jobs.py`) with SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _forget_caught_interrupt() -> None:
    """A KeyboardInterrupt raised inside exec() of a string (dataclasses and namedtuple build their
    methods that way) sets CPython's "unhandled KeyboardInterrupt" flag even when it is caught, and
    the interpreter then kills itself with SIGINT at exit instead of exiting with our status;
    evaluating any string resets the flag."""
    exec("pass")


def _exit_interrupted(text: str) -> NoReturn:
    err_console.print(text, highlight=False, soft_wrap=True)
    sys.exit(130)


def _exit_unexpected(exc: BaseException) -> NoReturn:
    """A failure no check anticipated (a bug, or an idiom of a user's model nothing caught): one
    line on stderr, the traceback kept in a file for the bug report, exit status 1."""
    import traceback

    from modeltailor.common.storage import cache_dir
    from modeltailor.errors import first_line

    text = "".join(traceback.format_exception(exc))
    try:
        folder = cache_dir() / "errors"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{type(exc).__name__}.txt"
        path.write_text(text)
        where = f"traceback in {path}"
    except OSError:
        where = "traceback could not be saved"
    err_console.print(
        f"[red]error:[/red] unexpected {type(exc).__name__}: {first_line(exc, 300)} ({where}; please report it)",
        highlight=False, soft_wrap=True,
    )
    sys.exit(1)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        with _stop_signals_as_interrupt():
            code = app(standalone_mode=False)  # Ctrl-C outside a search: typer returns 130
    except SearchInterrupted as exc:
        _exit_interrupted(str(exc))
    except ModelTailorError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _exit_interrupted("interrupted")
    except (typer.Abort, typer.Exit) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # usage errors (a bad flag value): click's, or typer's own vendored click's
        import click

        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        _exit_unexpected(exc)
    finally:
        _forget_caught_interrupt()  # whatever status we exit with, not death by SIGINT
    if code == 130:
        _exit_interrupted("interrupted")
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
