"""Connecting a campaign to Ray: a local instance by default, or an existing cluster by address.

Addresses: none (start a local Ray on this machine's cores), ``auto`` (the cluster this machine
belongs to, found through ``ray start``'s files), ``HOST:PORT`` (a head node's GCS) or
``ray://HOST:PORT`` (Ray Client). Remote addresses are probed with a plain TCP connection first,
so a wrong or unreachable address fails in seconds with one line instead of Ray's long retries.

Token authentication (Ray 2.60), as tested on a real two-node cluster
(tests/test_campaign_cluster.py):

* a local ``ray.init`` turns it on by itself and writes a token to ``~/.ray/auth_token``;
* ``ray start --head`` turns it on when ``RAY_AUTH_MODE=token`` is set, and also (with a logged
  warning) when ``RAY_AUTH_MODE`` is unset but ``~/.ray/auth_token`` exists, left there by any
  earlier local ``ray.init``; ``ray start --address`` (a worker node) and a client connecting with
  an explicit address (``HOST:PORT``, ``RAY_ADDRESS``) never turn it on by themselves: they need
  ``RAY_AUTH_MODE=token`` in their environment, whatever token they have;
* the token itself comes from ``RAY_AUTH_TOKEN`` (which wins), ``RAY_AUTH_TOKEN_PATH`` or
  ``~/.ray/auth_token``; it must be the same on every node and on the client. Nothing else is
  needed (no TLS, no extra flag to ``ray start``).

A client with a missing or wrong token makes ``ray.init`` retry for about 20 s, log a line per try
and give up with "Failed to connect to Ray cluster", which does not mention the token; so a
``HOST:PORT`` address is first asked for the cluster's id with the client's token (milliseconds),
and a refusal is one line that says which variables to set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from modeltailor.errors import ConfigError, first_line

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # trials pass small data; keep /dev/shm use modest


@dataclass(frozen=True)
class Cluster:
    """What the campaign connected to."""

    address: str | None
    node_ip: str
    nodes: int
    cpus: float
    gpus: float
    node_cpus: float
    node_gpus: float

    @property
    def local(self) -> bool:
        return self.address is None


def _host_port(address: str) -> tuple[str, int] | None:
    """('10.0.0.1', 6379) for 'HOST:PORT' or 'ray://HOST:PORT'; None for 'auto'."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address '{address}' is not auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """ConfigError unless something listens at a HOST:PORT address ('auto' is left to Ray)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(
            f"--address '{address}': no Ray head answers there ({reason}): start the cluster "
            "(`ray start --head`) or fix the address"
        ) from None


def check_address(address: str) -> None:
    """ConfigError in seconds unless a Ray head answers at `address` and accepts our token."""
    probe(address)
    if _host_port(address) is not None and not address.startswith("ray://"):
        check_token(address)


@contextmanager
def connected(
    address: str | None, env_vars: Mapping[str, str], num_cpus: int | None = None
) -> Iterator[Cluster]:
    """Ray for the block: a local instance (address None) or the cluster at `address`."""
    import ray

    if address is not None:
        probe(address)
    runtime_env = {"env_vars": dict(env_vars)}
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "runtime_env": runtime_env}
    if address is None:
        kwargs |= {
            "num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False,
            "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
        }
    if address is not None:
        check_token(address)
    handler = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        # RayError: AuthenticationError ("token authentication is enabled but no token was found")
        where = f"--address '{address}'" if address else "a local Ray instance"
        raise ConfigError(f"cannot connect to {where}: {first_line(exc)}{_auth_hint(exc)}") from None
    if handler is not None:  # ray.init installs its own SIGTERM handler (it aborts): keep the caller's
        signal.signal(signal.SIGTERM, handler)
    try:
        yield _describe(address)
    finally:
        ray.shutdown()


def _auth_hint(exc: BaseException) -> str:
    text = str(exc).lower()
    if "token" in text or "auth" in text or "unauthenticated" in text:
        return f" ({_AUTH_ADVICE})"
    return ""


_AUTH_ADVICE = (
    "token auth: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the cluster's token> for this client, "
    "the same token as on every node"
)


def check_token(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """ConfigError at once when the head at a HOST:PORT address refuses this client's token.

    ``ray.init`` would retry for ~20 s, logging a line per try, and then fail without naming the
    token. Asks the GCS for the cluster id the way ``ray.init`` does (Ray's own GCS client, with
    this process's RAY_AUTH_* settings); anything but an authentication refusal is left to
    ``ray.init``. 'auto' and ``ray://`` (Ray Client) addresses are not checked.
    """
    if address == "auto" or address.startswith("ray://"):
        return
    import ray._raylet
    from ray.exceptions import AuthenticationError

    try:  # private, like the GCS client: no check if a Ray release drops them
        from ray._private.authentication.authentication_token_setup import (
            ensure_token_if_auth_enabled,
        )
    except ImportError:
        return
    gcs_client = getattr(ray._raylet, "InnerGcsClient", None)
    if gcs_client is None:
        return
    try:  # RAY_AUTH_MODE=token without any token: the native client would abort the process
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError as exc:
        raise ConfigError(f"--address '{address}': {_first_sentence(exc)}; {_AUTH_ADVICE}") from None
    refused: BaseException | None = None
    with _native_stderr_dropped():  # the C++ client logs its failed try on fd 2
        try:
            gcs_client.standalone(address, None, int(timeout_s * 1000))
        except AuthenticationError as exc:
            refused = exc
        except Exception as exc:  # noqa: BLE001 - anything else is ray.init's to report
            log.debug("token check of %s inconclusive: %s", address, exc)
    if refused is not None:
        mode = os.environ.get("RAY_AUTH_MODE", "").lower()
        why = ("the cluster requires a token and RAY_AUTH_MODE is not 'token' here "
               "(an explicit address never turns token auth on by itself)") if mode != "token" else (
               "the cluster refused this client's token")
        raise ConfigError(f"--address '{address}': {why} ({_first_sentence(refused)}); {_AUTH_ADVICE}")


def _first_sentence(exc: BaseException) -> str:
    """Ray's auth errors run on for several sentences of generic advice: the first one."""
    line = first_line(exc)
    return line.split(". ", 1)[0].rstrip(".")


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """File descriptor 2 goes to a scratch file for the block (native code bypasses sys.stderr)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def node_ip_toward(address: str | None) -> str:
    """This machine's IP address as seen from the cluster at `address` (where to bind a service
    the cluster's nodes must reach): the source address of a route to the head for HOST:PORT,
    Ray's own guess (the route to 8.8.8.8, else the hostname's address) for 'auto', loopback for
    a local Ray. Unlike ``ray.util.get_node_ip_address()`` before ``ray.init``, it is right on a
    host with several interfaces or without a default route."""
    if address is None:
        return "127.0.0.1"
    target = _host_port(address)
    if target is not None:
        with contextlib.suppress(OSError):
            family, kind, proto, _, sockaddr = socket.getaddrinfo(*target, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, kind, proto) as udp:
                udp.connect(sockaddr)  # UDP: picks the route and source address, sends nothing
                return str(udp.getsockname()[0])
    import ray

    return str(ray.util.get_node_ip_address())


def _describe(address: str | None) -> Cluster:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    per_node = [n.get("Resources", {}) for n in alive]
    total = ray.cluster_resources()
    return Cluster(
        address=address,
        node_ip=ray.util.get_node_ip_address(),
        nodes=len(alive),
        cpus=float(total.get("CPU", 0)),
        gpus=float(total.get("GPU", 0)),
        node_cpus=max((float(r.get("CPU", 0)) for r in per_node), default=0.0),
        node_gpus=max((float(r.get("GPU", 0)) for r in per_node), default=0.0),
    )


def check_fits(cluster: Cluster, cpus: float, gpus: float) -> None:
    """ConfigError when one deployment's resources fit on no node of the cluster."""
    where = "this machine" if cluster.local else f"the cluster ({cluster.nodes} nodes)"
    if cpus > cluster.node_cpus:
        raise ConfigError(
            f"resources.cpus={cpus:g} per deployment, but the largest node of {where} has "
            f"{cluster.node_cpus:g} CPUs: lower resources.cpus"
        )
    if gpus > cluster.node_gpus:
        have = f"{cluster.node_gpus:g} GPUs" if cluster.node_gpus else "no GPU"
        raise ConfigError(f"resources.gpus={gpus:g} per deployment, but {where} has {have}: lower resources.gpus")
