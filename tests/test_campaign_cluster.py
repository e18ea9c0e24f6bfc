"""`modeltailor campaign --address` on a real two-node Ray cluster with token authentication.

The cluster (tests/ray_nodes.py) is two `ray start` processes of one CPU each, so the campaign's
two deployments must run one on each node: a head and a worker, each in a network namespace of its
own (10.213.0.1 and 10.213.0.2, two hosts on one link) where this process may create them (root /
CAP_NET_ADMIN), else side by side on loopback (MODELTAILOR_TEST_RAY_NODES=netns|loopback forces
one); the mode is printed when the cluster starts, and warned about when it is loopback. In CI
(`CI` or MODELTAILOR_REQUIRE_POSTGRES=1) the two hosts are required: no namespaces fails the tests
that need the cluster, unless MODELTAILOR_TEST_RAY_NODES=loopback asks for one host. The
campaign runs on the head's host and connects by HOST:PORT.

Token auth in Ray 2.60, as these tests found it (see also experiments/fleet/ray_cluster.py):
  * every node (`ray start --head` and `ray start --address`) and every client needs
    RAY_AUTH_MODE=token and the same token; RAY_AUTH_TOKEN (tried first), RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token. Nothing else: no flag to `ray start`, no TLS;
  * a worker node or a client connecting with an explicit address never turns token auth on by
    itself (a token file in ~/.ray is not enough: RAY_AUTH_MODE must say "token"), while
    `ray start --head` and a local `ray.init()` turn it on when ~/.ray/auth_token exists;
  * a missing or wrong token makes `ray.init` retry ~20 s and fail with a message that does not
    name the token, and RAY_AUTH_MODE=token with no token anywhere aborts the process inside
    Ray's native client: ray_cluster.check_token turns both into one line at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_mlflow import required
from tests.ray_nodes import RayNodes, _reason, ray_cluster

pytestmark = pytest.mark.slow

MODELTAILOR = Path(sys.executable).parent / "modeltailor"

TINY = """\
name: tiny
base:
  model: {name: resnet20, kwargs: {width: 0.5}}
  data: {input_size: 16}
  train: {epochs: 3}  # enough to pass the near-chance guard; accuracy does not matter beyond it
  search: {episodes: 3, round_to: 2, searcher: random}
  recovery: {episode_steps: 5, final_steps: 10, finalists: 1}
  device: {runs: 10, warmup: 2}
deployments:
  - {name: a, device: {name: cpu-1t}}
  - {name: b, classes: [0,3,7], device: {name: cpu-1t}}
max_concurrent: 2
resources: {cpus: 1}
"""


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[RayNodes]:
    """The two-node cluster. In CI (`CI` or MODELTAILOR_REQUIRE_POSTGRES=1, as tests/pg_mlflow.py
    decides) its nodes must be two hosts: where network namespaces cannot be made, the tests that
    use it fail in one line instead of running on loopback (unless MODELTAILOR_TEST_RAY_NODES=loopback
    asks for that); elsewhere they fall back to loopback with a warning."""
    if not sys.platform.startswith("linux"):
        if required():
            pytest.fail("the two-host test cluster needs Linux (network namespaces, /proc)", pytrace=False)
        pytest.skip("the test cluster needs Linux (network namespaces, /proc)")
    mode = os.environ.get("MODELTAILOR_TEST_RAY_NODES", "auto")
    if mode == "auto" and required():
        mode = "netns"  # in CI: two hosts, or a failure
    with contextlib.ExitStack() as stack:
        no_hosts = ""
        try:
            nodes = stack.enter_context(ray_cluster(workers=1, cpus=1, mode=mode))
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            if not (mode == "netns" and required()):
                raise
            no_hosts = _reason(exc)
        if no_hosts:
            pytest.fail(f"the two-host test cluster is required here (CI) but no network namespaces could be "
                        f"made: {no_hosts} (needs root or CAP_NET_ADMIN and iproute2; "
                        "MODELTAILOR_TEST_RAY_NODES=loopback runs it on one host)", pytrace=False)
        _say(request, nodes.describe())
        if nodes.mode != "netns":
            warnings.warn(f"{nodes.describe()}: the nodes share one IP address", stacklevel=1)
        yield nodes


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """`line` in pytest's output, also under -q and output capture (which mode the cluster is in)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(f"\n{line}")


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MODELTAILOR_CACHE for the module: the quick failure tests reuse the campaign's teacher."""
    return tmp_path_factory.mktemp("cluster-cache")


def campaign(
    nodes: RayNodes | None, workdir: Path, cache: Path, *args: str, auth: dict[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, str, str]:
    """`modeltailor campaign --config tiny.yaml ARGS` on the head's host (or here, without
    `nodes`), in `workdir`; (exit code, stdout, stderr)."""
    config = workdir / "tiny.yaml"
    config.write_text(TINY)
    argv = [str(MODELTAILOR), "campaign", "--config", str(config), *args]
    extra = {"MODELTAILOR_CACHE": str(cache), "COLUMNS": "200"}
    if nodes is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | extra
    else:
        env = nodes.env(extra, auth=auth is None) | (auth or {})
        argv = nodes.command(argv)
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_campaign_spreads_over_both_nodes_and_logs_to_mlflow(
    cluster: RayNodes, tmp_path: Path, teacher_cache: Path
) -> None:
    from mlflow import MlflowClient

    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    code, stdout, stderr = campaign(
        cluster, tmp_path, teacher_cache, "--out", str(out), "--address", cluster.address,
        "--tracking-uri", f"sqlite:///{db}",
    )
    assert code == 0, f"{cluster.describe()}\nstdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}"

    record = json.loads((out / "campaign.json").read_text())
    assert record["ray"]["nodes"] == 2 and record["ray"]["node_cpus"] == 1
    assert [(d["name"], d["state"]) for d in record["deployments"]] == [("a", "finished"), ("b", "finished")]
    trials = {name: json.loads((out / name / "trial.json").read_text()) for name in ("a", "b")}
    for name in ("a", "b"):
        assert json.loads((out / name / "summary.json").read_text())["episodes"] == 3
        assert (out / name / "model.onnx").stat().st_size > 0
    nodes = {trial["node"] for trial in trials.values()}
    assert len({node.split("/")[1] for node in nodes}) == 2, nodes  # two node ids: one trial per node
    if cluster.mode == "netns":  # ... on two hosts, logging to the mlflow server on the head's
        assert {node.split("/")[0] for node in nodes} == set(cluster.node_ips), nodes
        assert record["logged_through"].startswith(f"http://{cluster.node_ips[0]}:")

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    parent = client.get_run(record["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("modeltailor.kind") == "campaign"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(run.info.run_id for run in children) == sorted(t["mlflow_run_id"] for t in trials.values())
    for run in children:
        assert run.info.status == "FINISHED"
        assert "summary.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_unreachable_address_is_one_line(tmp_path: Path, teacher_cache: Path) -> None:
    started = time.monotonic()
    code, stdout, stderr = campaign(
        None, tmp_path, teacher_cache, "--out", str(tmp_path / "out"), "--address", "127.0.0.1:1",
        "--no-tracking",
    )
    assert code == 2, stdout + stderr
    assert len(_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert "127.0.0.1:1" in stderr
    assert time.monotonic() - started < 60  # the TCP probe answers at once, no Ray retries


def test_resources_beyond_every_node_is_one_line(cluster: RayNodes, tmp_path: Path, teacher_cache: Path) -> None:
    code, stdout, stderr = campaign(
        cluster, tmp_path, teacher_cache, "--out", str(tmp_path / "out"), "--address", cluster.address,
        "--cpus", "4", "--no-tracking",
    )
    assert code == 2, stdout + stderr
    assert len(_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert "resources.cpus" in stderr and "2 nodes" in stderr


@pytest.mark.parametrize("auth", ["wrong-token", "token-without-auth-mode"])
def test_client_without_the_token_is_refused_at_once(
    cluster: RayNodes, tmp_path: Path, teacher_cache: Path, auth: str
) -> None:
    """The nodes really enforce the token, and a client needs RAY_AUTH_MODE=token besides the
    token: otherwise one line naming both variables, in seconds (not after ~20 s of retries)."""
    token = cluster.auth_env["RAY_AUTH_TOKEN"]
    client = {"wrong-token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * len(token)},
              "token-without-auth-mode": {"RAY_AUTH_TOKEN": token}}[auth]
    started = time.monotonic()
    code, stdout, stderr = campaign(
        cluster, tmp_path, teacher_cache, "--out", str(tmp_path / "out"), "--address", cluster.address,
        "--no-tracking", auth=client,
    )
    assert code == 2, stdout + stderr
    assert len(_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert "RAY_AUTH_MODE=token" in stderr and "RAY_AUTH_TOKEN" in stderr
    assert time.monotonic() - started < 60
