"""Connecting a campaign to Ray: a local instance by default, or an existing cluster by address.

Addresses: none (start a local Ray on this machine's cores), ``auto`` (the cluster this machine
belongs to, found through ``ray start``'s files), ``HOST:PORT`` (a head node's GCS) or
``ray://HOST:PORT`` (Ray Client). Remote addresses are probed with a plain TCP connection first,
so a wrong or unreachable address fails in seconds with one line instead of Ray's long retries.

Ray 2.60 turns token authentication on: a local ``ray.init`` writes a token to
``~/.ray/auth_token`` and uses it; a cluster needs the same token on every node and on the
client (``RAY_AUTH_TOKEN``, or the same token file) and ``RAY_AUTH_MODE=token`` everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
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
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--address '{address}'" if address else "a local Ray instance"
        raise ConfigError(f"cannot connect to {where}: {first_line(exc)}{_auth_hint(exc)}") from None
    try:
        yield _describe(address)
    finally:
        ray.shutdown()


def _auth_hint(exc: BaseException) -> str:
    text = str(exc).lower()
    if "token" in text or "auth" in text or "unauthenticated" in text:
        return " (token auth: give this client the cluster's RAY_AUTH_TOKEN, the same on every node)"
    return ""


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
