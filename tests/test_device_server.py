"""The device server (a real process on loopback) and RemoteDevice, plus TestClient unit checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import requests
import torch
import typer
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

from modeltailor.compressors.export import export_onnx
from modeltailor.devices import server as device_agent
from modeltailor.devices.memory import onnx_memory
from modeltailor.devices.profiles import get_device
from modeltailor.devices.remote import RemoteDevice
from modeltailor.devices.server import create_app
from modeltailor.errors import ConfigError, DeviceError
from modeltailor.service.devices_cli import device_server_command

with warnings.catch_warnings():  # starlette >= 1.x warns that httpx will become httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "secret"
MAX_MB = 1.0
TIMEOUT_S = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with status {process.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the agent at {url} did not answer /health within {timeout_s} s")


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory):
    port = free_port()
    log_file = tmp_path_factory.mktemp("agent") / "agent.log"
    command = [
        sys.executable, "-m", "modeltailor.devices.server", "--port", str(port),
        "--token", TOKEN, "--timeout-s", str(TIMEOUT_S), "--max-model-mb", str(MAX_MB),
    ]
    with log_file.open("w") as log:  # the server's log goes to a file: a full pipe would block it
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log: {log_file.read_text()[-2000:]}") from None
        assert process.stdout.readline().strip() == f"device server on {url}, 1 thread"
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def small_onnx() -> bytes:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    return export_onnx(model, (1, 16, 16))


def slow_onnx(channels: int = 32, size: int = 128) -> bytes:
    """One 3x3 conv on a 32x128x128 input: ~1-5 ms a run, so 10,000 runs overrun 3 s."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(
        rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), "w"
    )
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def board(url: str, token: str | None = TOKEN, **kwargs) -> RemoteDevice:
    return RemoteDevice("board", url, token, **{"runs": 50, "warmup": 5, **kwargs})


# --- the real agent, through RemoteDevice -------------------------------------------------


@pytest.mark.slow
def test_remote_devices_compare_models_alternately(agent_url, small_onnx):
    """Two models timed on the server in interleaved rounds, each with repeats x runs, in order."""
    other = slow_onnx(channels=4, size=16)
    both = board(agent_url, runs=20).measure_alternately({"small": small_onnx, "other": other}, repeats=2)
    assert list(both) == ["small", "other"]
    for key, data in (("small", small_onnx), ("other", other)):
        assert both[key].timed == "alternating" and both[key].device == "board"
        assert both[key].latency.runs == 40 and both[key].latency.median_ms > 0
        assert both[key].memory == onnx_memory(data)  # each answer belongs to its own model


class OldServerBoard(RemoteDevice):
    """A device server from before /measure-alternately: that path answers 404."""

    def _request(self, method, path, scale=1, **kwargs):
        if path == "/measure-alternately":
            response = requests.Response()
            response.status_code = 404
            return response
        return super()._request(method, path, scale, **kwargs)


@pytest.mark.slow
def test_an_older_server_is_measured_one_after_the_other_and_says_so(agent_url, small_onnx, caplog):
    device = OldServerBoard("board", agent_url, TOKEN, runs=20, warmup=2)
    with caplog.at_level("WARNING", logger="modeltailor.devices.remote"):
        both = device.measure_alternately({0: small_onnx, 1: small_onnx}, repeats=3)
    assert {m.timed for m in both.values()} == {"sequential"}
    assert {m.latency.runs for m in both.values()} == {60}  # the repeats still buy more runs
    assert "one after the other" in caplog.text


@pytest.mark.slow
def test_remote_measurement_is_sane(agent_url, small_onnx):
    result = board(agent_url, runs=60).measure(small_onnx)
    stats = result.latency
    assert result.device == "board"
    assert stats.runs == 60
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms < 100
    # 60 real timings are never all equal; the agent's pooled statistics agree with each other
    assert stats.std_ms > 0 and 0 < stats.iqr_ms <= stats.p90_ms - stats.min_ms
    assert stats.min_ms < stats.mean_ms
    assert stats.spread == pytest.approx((stats.p90_ms - stats.median_ms) / stats.median_ms)
    assert result.memory == onnx_memory(small_onnx)


@pytest.mark.slow
def test_describe_has_the_agents_health(agent_url):
    info = board(agent_url).describe()
    assert info["kind"] == "remote" and info["url"] == agent_url
    agent = info["server"]
    assert agent["status"] == "ok" and agent["threads"] == 1
    assert agent["max_model_bytes"] == int(MAX_MB * 1024 * 1024)
    assert agent["onnxruntime"] and agent["machine"]["machine"]


@pytest.mark.slow
def test_wrong_token_is_rejected(agent_url, small_onnx):
    for token in ("wrong", None):
        with pytest.raises(DeviceError, match="rejected the token") as err:
            board(agent_url, token=token).measure(small_onnx)
        assert "'board'" in str(err.value) and agent_url in str(err.value)


@pytest.mark.slow
def test_garbage_bytes_give_the_agents_422_message(agent_url):
    with pytest.raises(DeviceError) as err:
        board(agent_url).measure(b"this is not an onnx model")
    message = str(err.value)
    assert "answered 422" in message and "could not load the model" in message
    assert "\n" not in message


@pytest.mark.slow
def test_oversized_model_gives_413(agent_url):
    with pytest.raises(DeviceError, match="answered 413: the model is 2,097,152 bytes"):
        board(agent_url).measure(b"\0" * (2 * 1024 * 1024))


@pytest.mark.slow
def test_timeout_gives_504_and_the_agent_recovers(agent_url, small_onnx):
    start = time.monotonic()
    with pytest.raises(DeviceError, match="answered 504: .*timeout of 3 s"):
        board(agent_url, runs=10_000, warmup=0).measure(slow_onnx())
    assert time.monotonic() - start < TIMEOUT_S + 10
    assert requests.get(f"{agent_url}/health", timeout=5).json()["status"] == "ok"
    assert board(agent_url, runs=20).measure(small_onnx).latency.runs == 20


@pytest.mark.slow
def test_concurrent_requests_queue(agent_url, small_onnx):
    results: list[int] = []

    def measure() -> None:
        results.append(board(agent_url, runs=30).measure(small_onnx).latency.runs)

    threads = [threading.Thread(target=measure) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [30, 30, 30]


def test_unreachable_agent_fails_fast(small_onnx):
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(DeviceError, match="is unreachable .*start `modeltailor device-server`"):
        board(url).measure(small_onnx)
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_registry_remote_device_works(agent_url, small_onnx, tmp_path, monkeypatch):
    registry = tmp_path / "devices.yaml"
    registry.write_text(
        f"devices:\n  lab: {{kind: remote, url: '{agent_url}', token_env: LAB_TOKEN, timeout_s: 30}}\n"
    )
    monkeypatch.setenv("MODELTAILOR_DEVICES", str(registry))
    monkeypatch.setenv("LAB_TOKEN", TOKEN)
    device = get_device("lab", runs=25, warmup=2)
    assert isinstance(device, RemoteDevice)
    result = device.measure(small_onnx)
    assert result.device == "lab" and result.latency.runs == 25


@pytest.mark.slow
def test_search_on_a_device_agent_takes_its_latencies_from_the_agent(agent_url, tmp_path, monkeypatch):
    from modeltailor.experiments.search.run import run_search
    from modeltailor.experiments.spec.deployment import load_config
    from tests.test_search_e2e import TINY

    registry = tmp_path / "devices.yaml"
    registry.write_text(f"devices:\n  lab: {{kind: remote, url: '{agent_url}', token_env: LAB_TOKEN}}\n")
    monkeypatch.setenv("LAB_TOKEN", TOKEN)
    before = requests.get(f"{agent_url}/health", timeout=5).json()["measured"]
    cfg = load_config(None, {**TINY, "device.name": "lab", "device.profiles": str(registry),
                             "objective.kind": "tradeoff", "tracking.enabled": False})
    run = run_search(cfg, tmp_path / "out")
    after = requests.get(f"{agent_url}/health", timeout=5).json()["measured"]
    assert run.summary.device["kind"] == "remote" and run.summary.device["url"] == agent_url
    assert run.summary.final_timing == "alternating"  # the agent timed the baseline and the best in rounds
    # baseline + calibration + each distinct episode architecture + the final pair
    distinct = len({tuple(sorted(r.kept_channels.items())) for r in run.result.episodes})
    assert after - before >= 2 + distinct + 2


@pytest.mark.slow
def test_wrong_token_in_a_search_is_one_clear_error(agent_url, tmp_path, monkeypatch):
    from modeltailor.experiments.search.run import run_search
    from modeltailor.experiments.spec.deployment import load_config
    from tests.test_search_e2e import TINY

    registry = tmp_path / "devices.yaml"
    registry.write_text(f"devices:\n  lab: {{kind: remote, url: '{agent_url}', token_env: LAB_TOKEN}}\n")
    monkeypatch.setenv("LAB_TOKEN", "not-the-token")
    cfg = load_config(None, {**TINY, "device.name": "lab", "device.profiles": str(registry), "tracking.enabled": False})
    with pytest.raises(DeviceError, match="rejected the token"):
        run_search(cfg, tmp_path / "out")
    assert not (tmp_path / "cache" / "teachers").exists(), "a teacher was trained before the device check"


# --- TestClient: status codes and JSON error bodies -------------------------------------------


@pytest.fixture()
def client() -> TestClient:
    return TestClient(create_app(TOKEN, max_model_bytes=1000), raise_server_exceptions=False)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_health_needs_no_token(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["max_model_bytes"] == 1000 and body["threads"] == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}])
def test_401_without_the_right_token(client, headers):
    response = client.post("/measure", content=b"x", headers=headers)
    assert response.status_code == 401
    assert set(response.json()) == {"error"} and "token" in response.json()["error"]


def test_413_when_the_body_is_too_big(client):
    response = client.post("/measure", content=b"x" * 1001, headers=AUTH)
    assert response.status_code == 413
    assert "over the server's limit of 1,000 bytes" in response.json()["error"]


def test_413_when_a_chunked_body_grows_too_big(client):
    chunks = (b"x" * 400 for _ in range(4))
    response = client.post("/measure", content=chunks, headers=AUTH)
    assert response.status_code == 413 and "at least" in response.json()["error"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", "empty body"), ("?runs=0", "runs=0 is out of range"), ("?warmup=x", "not an integer")],
)
def test_422_on_bad_requests(client, query, expected):
    response = client.post(f"/measure{query}", content=b"" if not query else b"x", headers=AUTH)
    assert response.status_code == 422
    assert expected in response.json()["error"]


@pytest.mark.parametrize(
    ("query", "body", "status", "expected"),
    [
        ("", b"xx", 422, "missing query parameter sizes"),
        ("?sizes=1,a", b"xx", 422, "not a comma-separated list"),
        ("?sizes=0,2", b"xx", 422, "1 to 16 models"),
        ("?sizes=1,2", b"xx", 422, "adds up to 3 bytes but the body has 2"),
        ("?sizes=1001,1", b"x", 413, "over the server's limit"),
        ("?sizes=1,1&repeats=0", b"xx", 422, "repeats=0 is out of range"),
    ],
)
def test_measure_alternately_rejects_bad_requests(client, query, body, status, expected):
    response = client.post(f"/measure-alternately{query}", content=body, headers=AUTH)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and expected in response.json()["error"]


def test_unknown_route_is_json(client):
    response = client.get("/nope")
    assert response.status_code == 404 and "error" in response.json()


def test_unexpected_errors_are_a_500_naming_a_request_id(client, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(client.app.state.worker, "measure", boom)
    with caplog.at_level("ERROR", logger="modeltailor.devices.server"):
        response = client.post("/measure", content=b"x", headers=AUTH)
    assert response.status_code == 500
    body = response.json()
    request_id = body["request_id"]
    assert body == {"error": f"internal error (request {request_id}): the server's log has the traceback",
                    "request_id": request_id}
    assert response.headers["X-Request-ID"] == request_id
    assert "kaboom" not in response.text and "RuntimeError" not in response.text  # nothing internal leaks
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "kaboom" in caplog.text  # the traceback stays here
    given = client.post("/measure", content=b"x", headers={**AUTH, "X-Request-ID": "trace-42"})
    assert given.json()["request_id"] == given.headers["X-Request-ID"] == "trace-42"


def test_agent_refuses_to_start_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("MODELTAILOR_DEVICE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        device_agent.main(["--port", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "needs a token" in err and "MODELTAILOR_DEVICE_TOKEN" in err and "\n" not in err


def test_device_server_command_needs_a_token(monkeypatch):
    monkeypatch.delenv("MODELTAILOR_DEVICE_TOKEN", raising=False)
    app = typer.Typer()
    app.command("device-agent")(device_server_command)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["device-agent", "--port", "0"])
    assert isinstance(result.exception, ConfigError) and "needs a token" in str(result.exception)
