"""`modeltailor serve`: the HTTP API (service/api.py) under uvicorn. Torch-free at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from modeltailor.errors import ConfigError
from modeltailor.experiments.fleet.jobs import FACTORIES_ENV, TOKEN_ENV


def read_token(token_file: Path | None) -> str:
    """The API token: --token-file's first line, else $MODELTAILOR_API_TOKEN; ConfigError if none."""
    if token_file is not None:
        try:
            lines = token_file.read_text().strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file '{token_file}' cannot be read ({type(exc).__name__}): pass a readable file") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"--token-file '{token_file}' is empty: write the token on its first line")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"the API needs a token: set {TOKEN_ENV} (e.g. export {TOKEN_ENV}=$(openssl rand -hex 24)) "
            "or pass --token-file FILE"
        )
    return token


def serve_command(
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: a free one, printed at start)")] = 8000,
    jobs: Annotated[Path, typer.Option(help="folder of the launched jobs (one folder each)")] = Path("runs/api"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store of the registry and of launched jobs (default: ./mlflow.db)")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster the jobs run on (default: a local Ray per job)")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body accepted")] = 1_000_000,
    max_jobs: Annotated[int, typer.Option(help="jobs running at once; more launches get 429 (0: queries only)")] = 4,
    token_file: Annotated[Path | None, typer.Option(help=f"file holding the token (default: ${TOKEN_ENV})")] = None,
    token_for_reads: Annotated[bool, typer.Option("--token-for-reads", help="require the token on reads too")] = False,
    allow_factories: Annotated[
        bool, typer.Option("--allow-factories", help="let launch bodies name model.factory (imports code on the server)")
    ] = False,
) -> None:
    """Serve the HTTP API: launch searches and campaigns, query the best model per device (/docs)."""
    import uvicorn

    from modeltailor.experiments.tracking.tracker import (
        default_tracking_uri,
        normalize_tracking_uri,
    )
    from modeltailor.service.api import create_app

    token = read_token(token_file)
    if max_jobs < 0:
        raise ConfigError(f"--max-jobs must be 0 or more, got {max_jobs}")
    uri = normalize_tracking_uri(tracking_uri) if tracking_uri else default_tracking_uri()
    if allow_factories:
        os.environ[FACTORIES_ENV] = "1"
    app = create_app(jobs, uri, address, token, max_body_bytes, max_jobs, token_for_reads)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                bound = self.servers[0].sockets[0].getsockname()[1]
                typer.echo(f"modeltailor API on http://{host}:{bound} (OpenAPI: /docs), jobs in {jobs}", err=False)

    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=True)
    _Server(config).run()
