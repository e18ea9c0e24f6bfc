"""CLI pieces for devices: ``modeltailor devices list|describe`` and ``modeltailor device-agent``.

``cli.py`` registers them: ``app.add_typer(devices_app, name="devices")`` and
``app.command("device-agent")(device_agent_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modeltailor.env.registry import get_device, list_devices
from modeltailor.experiments.device_agent import TOKEN_ENV, serve

devices_app = typer.Typer(help="device profiles", no_args_is_help=True)
console = Console()

RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="extra registry YAML, merged over the built-in and user ones"),
]


@devices_app.command("list")
def list_command(registry: RegistryOpt = None) -> None:
    """Every device profile: built-in, user ($MODELTAILOR_DEVICES) and --registry."""
    table = Table("name", "kind", "threads / url / table", "int8", "description")
    for name, spec in list_devices(registry):
        table.add_row(name, spec.kind, spec.where, "yes" if spec.int8 else "no", spec.description)
    console.print(table)


@devices_app.command("describe")
def describe_command(
    name: Annotated[str, typer.Argument(help="device name (modeltailor devices list)")],
    registry: RegistryOpt = None,
) -> None:
    """Build the device and print what it says about itself (a remote one asks its agent)."""
    device = get_device(name, registry=registry)
    console.print_json(json.dumps(device.describe(), default=str))


def device_agent_command(
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
    serve(host, port, token, threads, max_model_mb, timeout_s)
