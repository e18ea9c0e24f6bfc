"""A real MLflow tracking server with PostgreSQL behind it, for the tests that need one.

`postgres_server()` runs a throw-away PostgreSQL cluster: ``initdb`` into a fresh directory under
/tmp, then ``pg_ctl start`` listening on 127.0.0.1 only, on a free port, with its unix socket in
that directory, and a database and password-less (trust) role for MLflow. As root the server
binaries run as the ``postgres`` system user (initdb refuses root), so the directory is chowned
to it; it is not under pytest's tmp dirs, which are 0700 and root's. `mlflow_server()` runs
``mlflow server`` on a backend URI (uvicorn, one worker, artifacts proxied into a temp folder) in a
session of its own, and waits until ``GET /health`` answers 200. Both stop what they started on the
way out, also when the body or the start-up failed: the server's whole process group, then
``pg_ctl stop -m fast``.

`skip_reason()` says why this machine cannot run them (no PostgreSQL binaries, no user to run
them as); `required()` is true in CI (``CI`` set, or ``MODELTAILOR_REQUIRE_POSTGRES=1``), where
a missing server must fail the tests instead of skipping them. SQLite stays the embedded default.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_SYSTEM_USER = "postgres"  # the user the server runs as when we are root
SUPERUSER = "postgres"
DB_USER = "mlflow"
DB_NAME = "mlflow"
DRIVER = "psycopg2"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 4000
# a disposable cluster: durability off, so MLflow's schema migrations commit fast
PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
}
SERVER_ENV_DROP = ("MLFLOW_TRACKING_URI", "MODELTAILOR_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def required() -> bool:
    """In CI a missing PostgreSQL is a failure, not a reason to skip."""
    return bool(os.environ.get("CI")) or os.environ.get("MODELTAILOR_REQUIRE_POSTGRES") == "1"


def _version_key(path: str) -> tuple[int, ...]:
    found = re.search(r"/postgresql/([\d.]+)/bin", path)
    return tuple(int(p) for p in found.group(1).split(".") if p) if found else (0,)


def pg_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb, else the one holding initdb on PATH."""
    dirs = [d for d in glob.glob(PG_BIN_GLOB) if os.access(os.path.join(d, "initdb"), os.X_OK)]
    if dirs:
        return Path(max(dirs, key=_version_key))
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _run_as_prefix() -> list[str]:
    """What to put before a server binary so it does not run as root (empty when we are not)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", PG_SYSTEM_USER, "--"]
    return ["setpriv", f"--reuid={PG_SYSTEM_USER}", f"--regid={PG_SYSTEM_USER}", "--init-groups"]


def skip_reason() -> str | None:
    """Why PostgreSQL cannot run here, or None when it can."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        return (
            f"no PostgreSQL server binaries (initdb in {PG_BIN_GLOB} or on PATH): "
            "install Debian's `postgresql` package (.ci/run does)"
        )
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (bin_dir / name).exists()]
    if missing:
        return f"PostgreSQL in {bin_dir} lacks {', '.join(missing)}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no '{PG_SYSTEM_USER}' user to run PostgreSQL as"
        if not (shutil.which("runuser") or shutil.which("setpriv")):
            return "running as root and neither runuser nor setpriv is there to drop privileges"
    try:
        import psycopg2  # noqa: F401  (the driver of postgresql:// URIs)
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return text[-chars:]


# -- PostgreSQL --------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A running cluster: where it listens and how MLflow reaches it."""

    bin_dir: Path
    root: Path  # data/, the unix socket and postgres.log; owned by the server's user
    port: int
    host: str = "127.0.0.1"
    user: str = DB_USER
    database: str = DB_NAME

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def backend_uri(self) -> str:
        """The SQLAlchemy URI MLflow stores into. The driver is named: SQLAlchemy 2.1 maps a bare
        ``postgresql://`` to psycopg 3, while the dev extra installs psycopg2(-binary)."""
        return f"postgresql+{DRIVER}://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The libpq URI of the MLflow database (what psycopg2.connect and psql take)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (first line of postmaster.pid)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def connect(self, database: str | None = None, user: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=user or self.user,
            dbname=database or self.database, connect_timeout=5,
        )  # fmt: skip


def _pg(prefix: list[str], root: Path, argv: list[str], timeout_s: float = START_TIMEOUT_S):
    """Run a server binary (as the server's user), cwd in its own directory (it must be able to
    read the cwd); raise with its output when it fails."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)
    done = subprocess.run(
        prefix + argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:2])} failed with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl start on a free loopback port; a trust-auth role and database for MLflow.
    Stops the cluster (``pg_ctl stop -m fast``) and deletes its directory on the way out."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(f"cannot run PostgreSQL: {reason}")
    bin_dir = pg_bin_dir()
    assert bin_dir is not None
    prefix = _run_as_prefix()
    root = Path(tempfile.mkdtemp(prefix="mt-pg-"))  # short: unix socket paths are limited
    pg = Postgres(bin_dir=bin_dir, root=root, port=free_port())
    started = False
    try:
        if prefix:
            owner = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(root, owner.pw_uid, owner.pw_gid)
        _pg(prefix, root, [
            str(bin_dir / "initdb"), "-D", str(pg.data_dir), "--username", SUPERUSER,
            "--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync", "--no-instructions",
        ])  # fmt: skip
        # only loopback TCP and the private socket, no password: this cluster lives for one test run
        (pg.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        options = {
            "listen_addresses": pg.host,
            "port": str(pg.port),
            "unix_socket_directories": str(root),
            **PG_SETTINGS,
        }
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        started = True  # from here on, a half-started server must be stopped too
        try:
            _pg(prefix, root, [
                str(bin_dir / "pg_ctl"), "start", "-D", str(pg.data_dir), "-l", str(pg.log_path),
                "-w", "-t", str(int(START_TIMEOUT_S)), "-o", opts,
            ])  # fmt: skip
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\npostgres.log:\n{log_tail(pg.log_path)}") from exc
        admin = pg.connect(database="postgres", user=SUPERUSER)
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f"CREATE ROLE {DB_USER} LOGIN")
                cur.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        finally:
            admin.close()
        yield pg
    finally:
        try:
            if started:
                _stop_postgres(prefix, pg)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(prefix: list[str], pg: Postgres) -> None:
    """pg_ctl stop -m fast; if that fails, -m immediate; as a last resort SIGKILL the postmaster."""
    pid = pg.pid()
    for mode in ("fast", "immediate"):
        try:
            _pg(prefix, pg.root, [
                str(pg.bin_dir / "pg_ctl"), "stop", "-D", str(pg.data_dir), "-m", mode,
                "-w", "-t", str(int(STOP_TIMEOUT_S)),
            ], timeout_s=STOP_TIMEOUT_S + 5)  # fmt: skip
            return
        except (RuntimeError, subprocess.TimeoutExpired):
            if pg.pid() is None and (pid is None or not _alive(pid)):
                return  # it was not running (e.g. pg_ctl start failed)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- MLflow ----------------------------------------------------------------------------------


@dataclass
class MlflowServer:
    """A running ``mlflow server``: its tracking URI, backend store, log and process."""

    uri: str
    backend_uri: str
    log_path: Path
    artifacts: Path
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server on {server.backend_uri} exited with {server.proc.returncode} "
                f"before answering /health; log tail:\n{log_tail(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.25)
    raise TimeoutError(
        f"mlflow server at {server.uri} on {server.backend_uri} did not answer /health with 200 "
        f"in {timeout_s:.0f}s (last: {last}); log tail:\n{log_tail(server.log_path)}"
    )


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow, uvicorn and its worker), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; a worker it left behind still belongs to the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, root: Path, timeout_s: float = START_TIMEOUT_S
) -> Iterator[MlflowServer]:
    """``mlflow server`` on backend_uri, on a free loopback port, artifacts served from
    root/artifacts, log in root/mlflow-server.log; stopped (its process group) on the way out."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    artifacts = root / "artifacts"
    log_path = root / "mlflow-server.log"
    cmd = _mlflow_command() + [
        "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
        "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROP}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job runner processes
    with log_path.open("w") as log:
        # a session of its own, so stopping it takes its uvicorn worker along (the process group)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=root, env=env, start_new_session=True,
        )  # fmt: skip
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}", backend_uri=backend_uri, log_path=log_path,
        artifacts=artifacts, proc=proc,
    )  # fmt: skip
    try:
        _wait_healthy(server, timeout_s)
        yield server
    finally:
        _stop_group(proc)


# -- both ------------------------------------------------------------------------------------


@dataclass
class MlflowOnPostgres:
    """What the ``mlflow_postgres`` fixture yields."""

    postgres: Postgres
    server: MlflowServer

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def backend_uri(self) -> str:
        return self.postgres.backend_uri

    @property
    def log_path(self) -> Path:
        return self.server.log_path


@contextlib.contextmanager
def mlflow_on_postgres(root: Path) -> Iterator[MlflowOnPostgres]:
    """PostgreSQL, then an MLflow server on it; stopped in the reverse order."""
    with postgres_server() as pg, mlflow_server(pg.backend_uri, root) as server:
        yield MlflowOnPostgres(postgres=pg, server=server)
