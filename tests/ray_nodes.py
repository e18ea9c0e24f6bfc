"""A real multi-node Ray cluster for tests: one `ray start --block` process per node.

Where this process may create network namespaces (root, or CAP_NET_ADMIN), every node is a host of
its own: a network namespace (10.213.0.1 the head, 10.213.0.2, ... the workers, linked by veth
pairs on a bridge in the head's namespace), so nodes and clients talk over a network between
distinct IP addresses, as on a real cluster; the filesystem stays shared, as a campaign's --out
must be. Clients run on the head's host (`RayNodes.command` wraps them in `ip netns exec`).
Elsewhere (CI without the capability) the nodes share loopback, each on its own ports.

Every node gets its own short ``--temp-dir`` (Ray's socket paths have a length limit, and a local
``ray.init`` elsewhere on the machine must not find these nodes through /tmp/ray). Clean-up never
runs ``ray stop``, which would kill every Ray process of the machine: it ends exactly the processes
started here (each node's process tree and session, and in netns mode everything left in the
namespaces), then deletes the namespaces and temp dirs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
SUBNET = "10.213.0"
OBJECT_STORE_BYTES = 128 * 1024**2
START_TIMEOUT_S = 90.0
DEFAULT_ROUTE = False
"""Give each namespace a default route (through its link), as most real hosts have. Without one,
``ray.util.get_node_ip_address()`` called before ``ray.init`` (experiments/fleet/campaign.py `_node_ip`,
where the campaign binds its mlflow server) falls back to 127.0.0.1, out of the other nodes' reach,
and the worker node's deployment fails. Set it False once the campaign binds the server to
``ray_cluster.node_ip_toward(address)`` (the route to the head), to cover such hosts."""

NODE_ENV_DROP = ("RAY_ADDRESS", "MODELTAILOR_CACHE", "MODELTAILOR_TRACKING_URI", "MLFLOW_TRACKING_URI")


@dataclass
class RayNodes:
    """A running cluster: where its head is, and how to run a client on the head's host."""

    mode: str  # "netns" or "loopback"
    address: str  # the head's GCS, HOST:PORT
    node_ips: list[str]
    auth_env: dict[str, str]  # RAY_AUTH_MODE and RAY_AUTH_TOKEN, as every node has them
    root: Path
    head_netns: str | None = None
    why_loopback: str = ""
    logs: list[Path] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as run on the head's host."""
        return ["ip", "netns", "exec", self.head_netns, *argv] if self.head_netns else list(argv)

    def env(self, extra: Mapping[str, str] | None = None, auth: bool = True) -> dict[str, str]:
        """This process's environment with the cluster's token (unless `auth` is False) and `extra`."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                              "RAY_AUTH_TOKEN_PATH")}
        return {**env, **(self.auth_env if auth else {}), **(extra or {})}

    def describe(self) -> str:
        where = (f"network namespaces {self.head_netns}, ... ({', '.join(self.node_ips)})" if self.mode == "netns"
                 else f"loopback ({self.why_loopback})")
        return f"ray cluster: {len(self.node_ips)} nodes on {where}, head {self.address}, token auth"


@contextlib.contextmanager
def ray_cluster(workers: int = 1, cpus: int = 1, token: str | None = None, mode: str = "auto") -> Iterator[RayNodes]:
    """A head and `workers` worker nodes of `cpus` CPUs each, with token auth, for the block.

    mode: "netns", "loopback" or "auto" (netns where namespaces can be made, else loopback).
    """
    token = token or secrets.token_hex(32)
    root = Path(tempfile.mkdtemp(prefix="mtray-", dir="/tmp"))
    tag = secrets.token_hex(3)
    namespaces: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    why_loopback = "asked for" if mode == "loopback" else ""
    try:
        if mode in ("auto", "netns"):
            try:
                namespaces = _make_namespaces(tag, 1 + workers)
            except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                if mode == "netns":
                    raise
                why_loopback = f"no network namespaces here: {_reason(exc)}"
        nodes = RayNodes(
            mode="netns" if namespaces else "loopback", address="", node_ips=[],
            auth_env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, root=root,
            head_netns=namespaces[0] if namespaces else None, why_loopback=why_loopback,
        )
        for index in range(1 + workers):
            ip = f"{SUBNET}.{index + 1}" if namespaces else "127.0.0.1"
            ns = namespaces[index] if namespaces else None
            if index == 0:
                nodes.address = f"{ip}:{_free_port()}"
            log = root / f"node{index}.log"
            processes.append(_start_node(nodes, index, ip, ns, cpus, log))
            nodes.node_ips.append(ip)
            nodes.logs.append(log)
            _wait_started(processes[-1], log)
        _wait_nodes(nodes, 1 + workers)
        yield nodes
    finally:
        _stop(processes, namespaces)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


# -- namespaces ------------------------------------------------------------------------------------


def _make_namespaces(tag: str, count: int) -> list[str]:
    """`count` namespaces ("hosts") on one link: a bridge in the head's namespace (its address
    SUBNET.1) and one veth pair per worker, its outer end on the bridge, its inner end (SUBNET.2,
    ...) in the worker's namespace."""
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        raise OSError("needs Linux and iproute2's `ip`")
    made: list[str] = []
    try:
        for index in range(count):
            ns = f"mt{tag}n{index}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        head = made[0]
        _ip("-n", head, "link", "add", "br0", "type", "bridge")
        _ip("-n", head, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        _ip("-n", head, "link", "set", "br0", "up")
        if DEFAULT_ROUTE:
            _ip("-n", head, "route", "add", "default", "dev", "br0")
        for index, ns in enumerate(made[1:], start=1):
            outer, inner = f"mt{tag}h{index}", f"mt{tag}w{index}"  # <= 15 characters
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", outer, "netns", head)
            _ip("link", "set", inner, "netns", ns)
            _ip("-n", head, "link", "set", outer, "master", "br0")
            _ip("-n", head, "link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{index + 1}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            if DEFAULT_ROUTE:
                _ip("-n", ns, "route", "add", "default", "dev", inner)
        subprocess.run(["ip", "netns", "exec", head, "true"], check=True, capture_output=True, timeout=30)
        return made
    except BaseException:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        raise


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        text = (exc.stderr or b"").decode(errors="replace").strip()
        return f"`{' '.join(map(str, exc.cmd))}`: {text.splitlines()[0] if text else exc.returncode}"
    return str(exc) or type(exc).__name__


# -- nodes -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_node(
    nodes: RayNodes, index: int, ip: str, ns: str | None, cpus: int, log: Path
) -> subprocess.Popen[bytes]:
    head = index == 0
    temp_dir = nodes.root / f"n{index}"
    ports = {  # picked here so that nodes on one loopback (and other Ray instances) do not collide
        "--node-manager-port": _free_port(), "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port(),
    }
    if head:
        ports["--port"] = int(nodes.address.rpartition(":")[2])
    command = [
        str(RAY), "start", "--block", "--node-ip-address", ip, "--num-cpus", str(cpus), "--num-gpus", "0",
        "--temp-dir", str(temp_dir), "--object-store-memory", str(OBJECT_STORE_BYTES),
        "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats",
        *(["--head", "--include-dashboard=false"] if head else ["--address", nodes.address]),
    ]
    for flag, port in ports.items():
        command += [flag, str(port)]
    if ns is not None:
        command = ["ip", "netns", "exec", ns, *command]
    env = {k: v for k, v in os.environ.items() if k not in NODE_ENV_DROP} | nodes.auth_env
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=nodes.root, start_new_session=True)


def _wait_started(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Ray runtime started" in text:
            return
        if process.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"`ray start` did not start within {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


WAIT_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.5)
print(sum(n["Alive"] for n in ray.nodes()))
"""


def _wait_nodes(nodes: RayNodes, count: int) -> None:
    """Until the head counts `count` alive nodes (as a client with the token would)."""
    argv = nodes.command([sys.executable, "-c", WAIT_NODES, nodes.address, str(count), str(START_TIMEOUT_S)])
    done = subprocess.run(argv, env=nodes.env(), cwd=nodes.root, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S + 60)
    alive = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if alive != [str(count)]:
        raise RuntimeError(f"the cluster at {nodes.address} has {alive or 'no'} alive nodes, not {count}:\n"
                           f"{done.stdout[-1500:]}{done.stderr[-1500:]}")


# -- clean-up --------------------------------------------------------------------------------------


def _stop(processes: list[subprocess.Popen[bytes]], namespaces: list[str]) -> None:
    """End exactly what was started here. SIGTERM to each node's `ray start --block` first: it
    stops its node's processes in order, in ~3 s (SIGTERM to all of them at once leaves the head's
    raylet, GCS and agents waiting on each other for 10 s and more). Then SIGTERM, and SIGKILL
    after a grace period, to whatever is left of the nodes' process trees and sessions and, in
    netns mode, in the namespaces (clients, their workers and servers)."""
    before = _ours(processes, namespaces)
    _end({p.pid for p in processes if p.poll() is None}, processes, others=before, grace_s=15.0)
    _end(_ours(processes, namespaces) | {pid for pid in before if _alive(pid)}, processes, grace_s=3.0)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _end(
    pids: set[int], processes: list[subprocess.Popen[bytes]], others: set[int] | None = None,
    grace_s: float = 8.0,
) -> None:
    """SIGTERM to `pids`, until they and `others` are gone or `grace_s` has passed; then SIGKILL."""
    waiting = pids | (others or set())
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids if signum == signal.SIGTERM else waiting:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + wait_s
        while waiting and time.monotonic() < deadline:
            for process in processes:
                process.poll()  # reap ours, or they stay zombies
            waiting = {pid for pid in waiting if _alive(pid)}
            time.sleep(0.1)
        if not waiting:
            return


def _ours(processes: list[subprocess.Popen[bytes]], namespaces: list[str]) -> set[int]:
    """The live processes of `processes`' trees and sessions, and of `namespaces`."""
    table = _process_table()
    sessions = {p.pid for p in processes}  # start_new_session: each node's `ray start` leads one
    pids = {pid for pid, (_, sid) in table.items() if sid in sessions}
    pids |= {p.pid for p in processes if p.poll() is None}
    for ns in namespaces:
        listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
        pids |= {int(word) for word in listed.stdout.split() if word.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(pids)
    while todo:  # and every descendant (Ray workers may start sessions of their own)
        for child in children.get(todo.pop(), []):
            if child not in pids:
                pids.add(child)
                todo.append(child)
    pids.discard(os.getpid())
    return {pid for pid in pids if _alive(pid)}


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")
