"""`modeltailor best` and `modeltailor registry ...`: the best policy per device, from MLflow's registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modeltailor.errors import ModelTailorError, NoMatchError
from modeltailor.experiments.spec import files

console = Console()
registry_app = typer.Typer(no_args_is_help=True, help="The model registry: devices, champions, registering.")

TrackingOpt = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow store (default: MODELTAILOR_TRACKING_URI, ./mlflow.db)")
]


def parse_class_ids(text: str | None) -> list[int] | None:
    """'0,3,7' -> [0, 3, 7]; a one-line error naming --classes otherwise."""
    if text is None or not text.strip():
        return None
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ModelTailorError(f"--classes '{text}' is not a list of class ids: use e.g. '0,3,7'") from None
    if not ids or any(i < 0 for i in ids):
        raise ModelTailorError(f"--classes '{text}' is not a list of class ids: use e.g. '0,3,7'")
    return ids


def _uri(tracking_uri: str | None) -> str:
    from modeltailor.experiments.tracking.tracker import (
        default_tracking_uri,
        normalize_tracking_uri,
    )

    return normalize_tracking_uri(tracking_uri) if tracking_uri else default_tracking_uri()


def _versions_table(title: str, versions: list[Any], chosen: int | None = None) -> Table:
    table = Table(title=title)
    for col in ("version", "deployment", "classes", "accuracy", "ms", "speedup", "memory", "objective", "campaign"):
        table.add_column(col, justify="right" if col in ("version", "accuracy", "ms", "speedup", "memory") else "left")
    for v in versions:
        mark = "[bold green]*[/bold green]" if v.version == chosen else ""
        table.add_row(
            f"{mark}{v.version}", v.deployment, ",".join(map(str, v.classes)), f"{v.accuracy:.4f}",
            f"{v.latency_ms:.3f}", f"{v.speedup:.2f}x", f"{v.memory_bytes:,}",
            f"{v.objective} ({'met' if v.objective_met else 'not met'})", v.campaign or "-",
        )
    return table


def best_command(
    device: Annotated[str, typer.Option("--device", "-d", help="device profile, e.g. cpu-1t")],
    classes: Annotated[str | None, typer.Option(help="class ids the deployment needs, e.g. '0,3,7' (default: all)")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="latency limit on the device (ms)")] = None,
    max_memory_bytes: Annotated[float | None, typer.Option(help="memory limit (bytes)")] = None,
    min_accuracy: Annotated[float | None, typer.Option(help="accuracy floor, a fraction (e.g. 0.98)")] = None,
    download: Annotated[Path | None, typer.Option(help="write model.onnx, policy.json, summary.json here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON (what the HTTP API returns)")] = False,
    tracking_uri: TrackingOpt = None,
) -> None:
    """The registered model to ship to a device: its metrics, its policy and the other fitting versions."""
    from modeltailor.experiments.tracking.registry import download_version, query_best

    uri = _uri(tracking_uri)
    try:
        answer = query_best(uri, device, parse_class_ids(classes), max_latency_ms, max_memory_bytes, min_accuracy)
    except NoMatchError as exc:
        if as_json:
            print(json.dumps({"error": str(exc), "closest": exc.closest}, indent=2))
        raise
    written = download_version(uri, device, answer.chosen.version, download) if download else {}
    if as_json:
        print(json.dumps({**answer.model_dump(mode="json"), "downloaded": {k: str(v) for k, v in written.items()}},
                         indent=2))
        return
    c = answer.chosen
    console.print(
        f"[bold]{answer.registered_model} version {c.version}[/bold] ({answer.rule})\n"
        f"  deployment {c.deployment}: {c.model} on {c.dataset}, classes {','.join(map(str, c.classes))}, "
        f"objective {c.objective} ({'met' if c.objective_met else 'not met'})"
        + (f", campaign {c.campaign}" if c.campaign else "") + "\n"
        f"  accuracy {c.accuracy:.4f} (baseline {c.baseline_accuracy:.4f}), latency {c.latency_ms:.3f} ms "
        f"({c.speedup:.2f}x faster than {c.baseline_latency_ms:.3f} ms), memory {c.memory_bytes:,} bytes "
        f"({c.memory_reduction:.2f}x less)\n"
        f"  aliases: {', '.join(c.aliases) or 'none'}; run {c.run_id}"
    )
    console.print(_policy_table(answer.policy))
    if answer.runners_up:
        console.print(_versions_table("other versions that fit (Pareto front)", answer.runners_up))
    for name, path in written.items():
        console.print(f"wrote {name}: {path}")


def _policy_table(policy: dict[str, Any]) -> Table:
    table = Table(title="policy (per unit)")
    for col in ("unit", "method", "keep / rank", "bits"):
        table.add_column(col)
    for unit in policy.get("units", []):
        table.add_row(str(unit.get("unit")), str(unit.get("method")), f"{unit.get('keep', 1.0):.3f}",
                      str(unit.get("bits", 32)))
    return table


@registry_app.command("list")
def list_command(tracking_uri: TrackingOpt = None) -> None:
    """Devices in the registry and each deployment's champion."""
    from modeltailor.experiments.tracking.registry import registered_devices

    entries = registered_devices(_uri(tracking_uri))
    if not entries:
        console.print("the registry holds no models yet: run `modeltailor search` or `modeltailor campaign`")
        return
    table = Table(title="registry: each deployment's champion, per device")
    for col in ("device", "v", "deployment", "classes", "acc", "ms", "speedup", "MB"):
        table.add_column(col, no_wrap=col != "classes", justify="left" if col in ("device", "deployment", "classes")
                         else "right")
    aliases = []
    for entry in entries:
        widest = max((len(v.classes) for v in entry.champions), default=0)
        for v in entry.champions:
            classes = "all" if len(v.classes) == widest and widest > 3 else ",".join(map(str, v.classes))
            table.add_row(entry.device, str(v.version), v.deployment, classes, f"{v.accuracy:.4f}",
                          f"{v.latency_ms:.3f}", f"{v.speedup:.2f}x", f"{v.memory_bytes / 1e6:.3f}")
            aliases += [f"  {entry.registered_model}@{a}" for a in v.aliases]
        table.add_section()
    console.print(table)
    console.print("aliases (models:/NAME@ALIAS):\n" + "\n".join(aliases))


@registry_app.command("versions")
def versions_command(
    device: Annotated[str, typer.Option("--device", "-d", help="device profile, e.g. cpu-1t")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Every registered version of a device."""
    from modeltailor.experiments.tracking.registry import device_versions

    versions = device_versions(_uri(tracking_uri), device)
    console.print(_versions_table(f"modeltailor-{device}", versions))


@registry_app.command("add")
def add_command(
    out: Annotated[Path, typer.Argument(help="a finished search's output folder (summary.json, model.onnx, ...)")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Register a finished search (again): idempotent, the champion moves only if it wins."""
    from modeltailor.experiments.tracking.registry import register_search
    from modeltailor.experiments.tracking.tracker import normalize_tracking_uri

    if not out.is_dir():
        raise ModelTailorError(f"'{out}' is not a folder: pass a finished search's output folder")
    uri = tracking_uri or _run_store(out) or _uri(None)
    v = register_search(normalize_tracking_uri(uri), out)
    console.print(f"modeltailor-{v.device} version {v.version}; aliases: {', '.join(v.aliases) or 'none'}")


def _run_store(out: Path) -> str | None:
    """The tracking store the search logged to (OUT/run.json), if it says."""
    try:
        return json.loads((out / files.RUN).read_text()).get("tracking_uri")
    except (OSError, ValueError, AttributeError):
        return None


@registry_app.command("revalidate")
def revalidate_command(
    device: Annotated[str, typer.Option("--device", "-d", help="device profile to measure on, e.g. cpu-1t")],
    challengers: Annotated[int, typer.Option(
        min=1, help="other versions per deployment measured beside its champion (the best by recorded ranking)")] = 3,
    repeats: Annotated[int, typer.Option(
        min=1, help="each model timed this many times the device's usual runs, in alternating rounds")] = 5,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the verdicts; move no alias, record nothing")] = False,
    profiles: Annotated[Path | None, typer.Option(
        "--profiles", help="extra device profiles YAML, merged over the built-in and user ones")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Measure each deployment's champion again beside its challengers; move the alias only past the noise."""
    from modeltailor.experiments.tracking.revalidate import revalidate

    with console.status(f"revalidating {device}") as status:
        report = revalidate(_uri(tracking_uri), device, challengers=challengers, repeats=repeats, dry_run=dry_run,
                            profiles=profiles, progress=status.update)
    if not report.deployments:
        console.print(f"{report.registered_model} has no deployment champions to revalidate")
        return
    for check in report.deployments:
        console.print(_revalidation_table(check, report.dry_run))
    moved = sum(check.moves for check in report.deployments)
    console.print(
        f"{len(report.deployments)} deployment(s) measured again on {report.device} (profile {report.profile}); "
        + (f"dry run: {moved} alias(es) would move, nothing recorded" if report.dry_run
           else f"{moved} alias(es) moved; versions tagged revalidated_* at {report.at}"), highlight=False, soft_wrap=True,
    )


def _revalidation_table(check: Any, dry_run: bool) -> Table:
    if not check.moves:
        outcome = f"v{check.champion} keeps it"
    else:
        outcome = f"{'would move' if dry_run else 'moved'} from v{check.champion} to v{check.winner}"
    table = Table(title=f"{check.deployment}: {check.alias}\n{outcome}")
    for col in ("version", "role", "recorded ms", "measured ms", "spread ms", "verdict"):
        table.add_column(col, justify="left" if col in ("role", "verdict") else "right")
    for row in check.rows:
        table.add_row(str(row.version), row.role, f"{row.recorded_latency_ms:.4f}", f"{row.latency_ms:.4f}",
                      f"{row.spread_ms:.4f}", row.verdict)
    return table
