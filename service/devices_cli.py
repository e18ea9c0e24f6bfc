"""CLI pieces for devices: ``modeltailor devices list|describe|calibrate`` and ``device-server``.

``cli.py`` registers them: ``app.add_typer(devices_app, name="devices")`` and
``app.command("device-server")(device_server_command)`` (``device-agent`` is kept as an alias).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from modeltailor.devices.base import TOKEN_ENV
from modeltailor.devices.profiles import get_device, list_devices

if TYPE_CHECKING:
    from modeltailor.experiments.tools.calibrate import CalibrationReport

devices_app = typer.Typer(help="device profiles", no_args_is_help=True)
console = Console()

ProfilesOpt = Annotated[
    Path | None,
    typer.Option(
        "--profiles", "--registry", help="extra device profiles YAML, merged over the built-in and user ones"
    ),
]


@devices_app.command("list")
def list_command(profiles: ProfilesOpt = None) -> None:
    """Every device profile: built-in, user ($MODELTAILOR_DEVICES) and --profiles."""
    table = Table("name", "kind", "threads / url / table", "int8", "description")
    for name, spec in list_devices(profiles):
        table.add_row(name, spec.kind, spec.where, "yes" if spec.int8 else "no", spec.description)
    console.print(table)


@devices_app.command("describe")
def describe_command(
    name: Annotated[str, typer.Argument(help="device name (modeltailor devices list)")],
    profiles: ProfilesOpt = None,
) -> None:
    """Build the device and print what it says about itself (a remote one asks its server)."""
    device = get_device(name, profiles=profiles)
    console.print_json(json.dumps(device.describe(), default=str))


def device_server_command(
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8765,
    token: Annotated[
        str | None, typer.Option(envvar=TOKEN_ENV, help="bearer token clients must send", show_default=False)
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads")] = 1,
    max_model_mb: Annotated[float, typer.Option(min=0.001, help="largest model accepted (MiB)")] = 64,
    timeout_s: Annotated[float, typer.Option(min=0.1, help="longest measurement (seconds)")] = 60,
) -> None:
    """Serve ONNX latency measurements on this machine over HTTP (run it on the target device)."""
    from modeltailor.devices.server import serve

    serve(host, port, token, threads, max_model_mb, timeout_s)


def rows_table(report: CalibrationReport) -> Table:
    """A rich table of the held-out rows."""
    table = Table(title="held-out architectures")
    for column in ("arch", "params", "measured ms", "predicted ms", "error %", "estimated nodes"):
        table.add_column(column, justify="right")
    for row in report.rows:
        table.add_row(
            str(row.index), f"{row.params:,}", f"{row.measured_ms:.4f}",
            f"{row.predicted_ms:.4f}", f"{row.error_pct:.1f}", str(row.estimated_nodes),
        )
    return table


@devices_app.command("calibrate")
def calibrate_command(
    device: Annotated[str, typer.Argument(help="device to calibrate, e.g. cpu-1t")],
    model: Annotated[str, typer.Option(help="zoo model whose pruned variants calibrate")] = "resnet20",
    in_channels: Annotated[int, typer.Option(help="input channels")] = 1,
    input_size: Annotated[int, typer.Option(help="input height and width")] = 32,
    num_classes: Annotated[int, typer.Option(help="classifier outputs")] = 10,
    architectures: Annotated[int, typer.Option(help="architectures in all (unpruned included)")] = 16,
    held_out: Annotated[int, typer.Option(help="architectures only predicted, for the MAPE")] = 4,
    seed: Annotated[int, typer.Option(help="seed of the random keep ratios")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="table JSON [default: ~/.cache/modeltailor/tables/<device>.json]")] = None,
    profiles: ProfilesOpt = None,
) -> None:
    """Time a device's per-node latencies into a table and report its held-out MAPE."""
    from modeltailor.experiments.tools.calibrate import calibrate, default_table_path

    path = out.expanduser() if out is not None else default_table_path(device)
    resolved = get_device(device, profiles=profiles)
    with console.status(f"calibrating {device}") as status:
        report = calibrate(
            resolved, model=model, in_channels=in_channels, input_size=input_size,
            num_classes=num_classes, architectures=architectures, held_out=held_out,
            seed=seed, table_path=path, progress=lambda text: status.update(text),
        )
    console.print(rows_table(report))
    console.print(
        f"fit: latency = {report.intercept:.4f} ms + {report.scale:.3f} x node sum; "
        f"{report.nodes_measured} nodes timed, {report.estimated_keys} held-out keys estimated, "
        f"training MAPE {report.train_mape:.1f}%, {report.seconds:.1f} s"
    )
    console.print(
        f"held-out MAPE: {report.mape:.1f}% over {len(report.rows)} architectures "
        f"(table: {report.table_path})", highlight=False, soft_wrap=True,
    )
