"""`modeltailor campaign`: many deployments at once on Ray Tune, with a live table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from modeltailor.experiments.spec.campaign import load_campaign

console = Console()

STATE_STYLE = {"pending": "dim", "running": "cyan", "finished": "green", "failed": "red", "interrupted": "yellow"}


def status_table(statuses: list[Any], title: str = "campaign") -> Table:
    """The live table: deployment, device, classes, state, episodes done, best so far."""
    table = Table(title=title)
    for col in ("deployment", "device", "classes", "state", "episodes", "best so far / error"):
        table.add_column(col, overflow="fold")
    for s in statuses:
        style = STATE_STYLE.get(s.state, "")
        note = s.error if s.state == "failed" and s.error else s.best
        table.add_row(
            s.name, s.device, s.classes, f"[{style}]{s.state}[/{style}]", f"{s.episodes_done}/{s.episodes}", note or ""
        )
    return table


def result_table(statuses: list[Any]) -> Table:
    """The closing table: every deployment's chosen model against its baseline."""
    table = Table(title="campaign results: test accuracy, drop in points, latency (ms) measured on each device")
    widths = {"deployment": max((len(s.name) for s in statuses), default=4),
              "classes": min(12, max((len(s.classes) for s in statuses), default=3))}
    for col in ("deployment", "device", "classes", "acc", "drop", "ms", "speedup", "memory", "met"):
        table.add_column(col, justify="right", no_wrap=col != "classes", min_width=widths.get(col))
    for s in statuses:
        r = s.result
        if r is None:
            style = STATE_STYLE.get(s.state, "")
            table.add_row(s.name, s.device, s.classes, *["-"] * 5, f"[{style}]{s.state}[/{style}]")
            continue
        table.add_row(
            s.name, s.device, s.classes, f"{r['accuracy']:.3f}", f"{r['accuracy_drop']:.2f}",
            f"{r['latency_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['memory_bytes'] / 1e6:.2f}MB",
            "yes" if r["objective_met"] else "[yellow]no[/yellow]",
        )
    return table


class LiveReporter:
    """The campaign's live table in the terminal (refreshed as trials report)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.live = Live(console=console, refresh_per_second=2, transient=False)
        self.started = False

    def message(self, text: str) -> None:
        console.log(text)

    def update(self, statuses: list[Any]) -> None:
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(status_table(statuses, self.title))

    def stop(self) -> None:
        if self.started:
            self.live.stop()
            console.print()


def campaign_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="campaign YAML (see examples/campaign-digits.yaml)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder: campaign.json and one folder per deployment")] = Path("runs/campaign"),
    address: Annotated[
        str | None, typer.Option(help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: local Ray)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="keep finished deployments, continue the others")] = False,
    max_concurrent: Annotated[int | None, typer.Option(help="override max_concurrent (deployments at once)")] = None,
    cpus: Annotated[float | None, typer.Option(help="override resources.cpus (per deployment)")] = None,
    gpus: Annotated[float | None, typer.Option(help="override resources.gpus (per deployment)")] = None,
    episodes: Annotated[int | None, typer.Option(help="override search.episodes of every deployment")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="override tracking.uri (campaign and deployments)")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="do not log to MLflow")] = False,
) -> None:
    """Search many deployments in parallel (Ray Tune): OUT/campaign.json, OUT/<deployment>/summary.json, ..."""
    overrides: dict[str, Any] = {
        "max_concurrent": max_concurrent, "resources.cpus": cpus, "resources.gpus": gpus,
        "deployment.search.episodes": episodes,
    }
    if tracking_uri is not None or no_tracking:
        base = load_campaign(config).tracking.model_dump(mode="json")
        overrides["tracking"] = {**base, **({"uri": tracking_uri} if tracking_uri else {}),
                                 **({"enabled": False} if no_tracking else {})}
    campaign = load_campaign(config, overrides)  # a bad spec fails here, before Ray is imported
    from modeltailor.experiments.fleet.campaign import run_campaign

    reporter = LiveReporter(f"campaign '{campaign.spec.name}' -> {out}")
    try:
        run = run_campaign(campaign, out, address=address, resume=resume, reporter=reporter)
    finally:
        reporter.stop()
    console.print(result_table(run.statuses))
    console.print(
        f"{sum(s.state == 'finished' for s in run.statuses)} of {len(run.statuses)} deployments finished in "
        f"{run.wall_seconds:.0f} s; {out / 'campaign.json'}"
        + (f"; MLflow parent run {run.mlflow_run_id}" if run.mlflow_run_id else "")
    )
    if run.failed:
        for s in run.failed:
            console.print(f"[red]{s.name} failed:[/red] {s.error}", highlight=False)
        console.print(f"fix them and rerun with --resume --out {out} (finished deployments are kept)")
        raise typer.Exit(1)
