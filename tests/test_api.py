"""The HTTP API (`modeltailor serve`) as a real uvicorn process: the token on every mutation, a JSON
4xx naming the field for every kind of bad request, state read back from disk, two launches
running at once (two local Rays), a launched search that finishes and becomes queryable through
the registry, a cancelled one, and a schemathesis fuzz of the OpenAPI spec with no 5xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from modeltailor.errors import ConfigError
from modeltailor.experiments.spec import files
from modeltailor.service.serve_cli import read_token
from tests.api_process import (
    MODELTAILOR,
    ApiProcess,
    MlflowProcess,
    api_server,
    mlflow_server,
    session_members,
)
from tests.test_campaign import BASE

TOKEN = "api-test-token"
TINY = BASE  # tests/test_campaign.py's tiny deployment: a width-0.5 ResNet-20 on 16x16 digits
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory) -> MlflowProcess:
    """The registry's store: a real `mlflow server` (as in docker/compose.yaml), so launched
    campaigns log to it instead of each starting one; its ~30 s start overlaps the first tests."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def api(tmp_path_factory, mlflow) -> ApiProcess:
    folder = tmp_path_factory.mktemp("api")
    cache = folder / "cache"
    pretrain_teacher(cache)
    with api_server(folder, TOKEN, "--max-body-bytes", "20000", env={"MODELTAILOR_CACHE": str(cache)},
                    tracking_uri=mlflow.uri) as running:
        yield running


@pytest.fixture()
def registry(api, mlflow) -> ApiProcess:
    """The API once its tracking server answers."""
    mlflow.wait_ready()
    return api


def pretrain_teacher(cache: Path) -> None:
    """Train TINY's teacher here (5 s, one thread) so launched jobs load it from the cache."""
    from modeltailor.experiments.search.teacher import load_teacher
    from modeltailor.experiments.search.workbench import load_deployment_data
    from modeltailor.experiments.spec.deployment import DeploymentConfig

    config = DeploymentConfig.model_validate(TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELTAILOR_CACHE", str(cache))
        load_teacher(config, load_deployment_data(config)[0])


def post(api: ApiProcess, path: str, body: Any = None, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{api.url}{path}", json=body, headers=headers, timeout=30, **kwargs)


def get(api: ApiProcess, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(f"{api.url}{path}", timeout=60, **kwargs)


def wait_until(
    what: str, check: Callable[[], bool], timeout_s: float, api: ApiProcess, more: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    jobs = [diagnose(api, j["id"]) for j in get(api, "/v1/jobs").json()]
    raise AssertionError(f"{what} not within {timeout_s} s; {more()}; jobs: {jobs}")


def diagnose(api: ApiProcess, job_id: str) -> str:
    """A job's status and the end of its log, for assertion messages."""
    log = api.jobs / job_id / "campaign.log"
    tail = log.read_text(errors="replace")[-2500:] if log.is_file() else ""
    return f"{get(api, f'/v1/jobs/{job_id}').text[:2000]}\n--- {job_id} log:\n{tail}"


def process_table(sid: int) -> str:
    rows = subprocess.run(["ps", "-eo", "pid,sid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    return "\n".join(row[:160] for row in rows if row.split()[1] == str(sid))


# -- the token ------------------------------------------------------------------------------------

MUTATIONS = [
    ("/v1/searches", TINY), ("/v1/campaigns", {"base": TINY, "deployments": [{}]}),
    ("/v1/jobs/0123456789ab/cancel", None), ("/v1/jobs/0123456789ab/resume", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("path,body", MUTATIONS, ids=[m[0] for m in MUTATIONS])
@pytest.mark.parametrize("token,said", [(None, "missing token"), ("wrong", "wrong token"), ("", "missing token")])
def test_every_mutation_needs_the_token(api, path, body, token, said):
    response = post(api, path, body, token=token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"].startswith(said)
    assert TOKEN not in api.log() and "wrong" not in api.log()  # tokens are never logged


def test_the_api_modules_import_no_torch():
    code = ("import sys, modeltailor.service.api, modeltailor.service.serve_cli, modeltailor.service.cli; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'torch or ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_serve_refuses_to_start_without_a_token(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "MODELTAILOR_API_TOKEN"}
    done = subprocess.run([*MODELTAILOR, "serve", "--jobs", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "MODELTAILOR_API_TOKEN" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("MODELTAILOR_API_TOKEN", "from-env")
    empty, token = tmp_path / "empty", tmp_path / "token"
    empty.write_text("\n")
    token.write_text("from-file\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(empty)
    assert read_token(token) == "from-file" and read_token(None) == "from-env"


# -- bad requests: a JSON 4xx naming the input, never a 500 ----------------------------------------

CAMPAIGN = {"name": "c", "base": TINY, "deployments": [{"name": "a"}]}
BAD_BODIES = {
    "wrong type": ("/v1/searches", {"search": {"episodes": "many"}}, 422, "search.episodes"),
    "out of range": ("/v1/searches", {"search": {"episodes": 0}}, 422, "search.episodes"),
    "unknown key": ("/v1/searches", {"serch": {"episodes": 3}}, 422, "serch"),
    "unknown nested key": ("/v1/searches", {"search": {"agents": "ppo"}}, 422, "search.agents"),
    "unknown device": ("/v1/searches", {"device": {"name": "pixel9"}}, 422, "device.name"),
    "empty classes": ("/v1/searches", {"classes": []}, 422, "classes"),
    "negative class": ("/v1/campaigns", {**CAMPAIGN, "deployments": [{"classes": [0, -3]}]}, 422,
                       "deployments[0].classes"),
    "a relative path": ("/v1/searches", {"model": {"weights": "w.pt"}}, 422, "model.weights"),
    "the tracking store": ("/v1/searches", {"tracking": {"uri": "file:///tmp/x"}}, 422, "tracking.uri"),
    "code on the server": ("/v1/searches", {"model": {"factory": "os:system"}}, 422, "model.factory"),
    "a name that is a path": ("/v1/searches", {"name": "../escape"}, 422, "name"),
    "not an object": ("/v1/searches", [1, 2], 422, "body"),
    "no body": ("/v1/searches", None, 422, "body"),
    "base is a file": ("/v1/campaigns", {**CAMPAIGN, "base": "digits.yaml"}, 422, "base"),
    "a file entry": ("/v1/campaigns", {**CAMPAIGN, "deployments": [{"file": "d.yaml"}]}, 422, "deployments[0].file"),
    "entry unknown key": ("/v1/campaigns", {**CAMPAIGN, "deployments": [{"serch": {}}]}, 422, "deployments[0].serch"),
    "entry bad value": ("/v1/campaigns", {**CAMPAIGN, "deployments": [{"search": {"episodes": -1}}]}, 422,
                        "deployments[0].search.episodes"),
    "entry unknown device": ("/v1/campaigns", {**CAMPAIGN, "deployments": [{"device": {"name": "zz"}}]}, 422,
                             "deployments[0].device.name"),
    "duplicate names": ("/v1/campaigns", {**CAMPAIGN, "deployments": [{"name": "a"}, {"name": "a"}]}, 422,
                        "deployments[1].name"),
    "no deployments": ("/v1/campaigns", {**CAMPAIGN, "deployments": []}, 422, "deployments"),
    "missing deployments": ("/v1/campaigns", {"base": TINY}, 422, "deployments"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_launch_bodies_name_the_field(api, case):
    path, body, status, field = BAD_BODIES[case]
    response = post(api, path, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and field.split(".")[-1].split("[")[0] in error["error"]
    assert "\n" not in error["error"]


@pytest.mark.slow
def test_reads_are_open_and_health_says_no_torch(registry):
    api = registry
    health = get(api, "/v1/health").json()
    assert health["status"] == "ok" and health["torch_loaded"] is False
    assert get(api, "/v1/jobs").status_code == 200
    assert get(api, "/v1/devices").json() == []
    spec = get(api, "/openapi.json").json()
    assert {"/v1/searches", "/v1/campaigns", "/v1/jobs/{job_id}/cancel", "/v1/devices/{name}/best"} <= set(spec["paths"])
    assert get(api, "/docs").status_code == 200


BAD_GETS = {
    "classes not ids": ("/v1/devices/cpu-1t/best?classes=0,x", 422, "classes"),
    "negative latency": ("/v1/devices/cpu-1t/best?max_latency_ms=-1", 422, "max_latency_ms"),
    "latency not a number": ("/v1/devices/cpu-1t/best?max_latency_ms=fast", 422, "max_latency_ms"),
    "accuracy above 1": ("/v1/devices/cpu-1t/best?min_accuracy=2", 422, "min_accuracy"),
    "malformed device": ("/v1/devices/no%20such!/best", 422, "name"),
    "unknown device": ("/v1/devices/pixel9/best", 404, None),
    "bad filename": ("/v1/devices/cpu-1t/versions/1/files/passwd", 422, "filename"),
    "version zero": ("/v1/devices/cpu-1t/versions/0/files/model.onnx", 422, "version"),
    "unknown version": ("/v1/devices/cpu-1t/versions/7/files/model.onnx", 404, None),
    "malformed job id": ("/v1/jobs/../../etc", 404, None),
    "job id not hex": ("/v1/jobs/zzzzzzzzzzzz", 422, "job_id"),
    "unknown job": ("/v1/jobs/0123456789ab", 404, None),
    "unknown route": ("/v2/anything", 404, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_GETS))
def test_bad_queries_are_json_4xx(registry, case):
    api = registry
    path, status, field = BAD_GETS[case]
    response = get(api, path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json().get("field") == field and response.json()["error"]


@pytest.mark.slow
def test_malformed_json_unsupported_media_and_methods(api):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    broken = requests.post(f"{api.url}/v1/searches", data=b'{"search": ', headers=headers, timeout=10)
    assert broken.status_code == 400 and broken.json()["field"] == "body"
    text = requests.post(f"{api.url}/v1/searches", data=b"episodes=3",
                         headers={**headers, "Content-Type": "text/plain"}, timeout=10)
    assert text.status_code == 415 and "application/json" in text.json()["error"]
    wrong_method = requests.put(f"{api.url}/v1/jobs", headers=headers, timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


@pytest.mark.slow
def test_oversize_bodies_get_413_declared_or_chunked(api):
    big = {"name": "x", "model": {"kwargs": {"pad": "y" * 30_000}}}
    assert post(api, "/v1/searches", big).status_code == 413
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    chunks = (b"x" * 4096 for _ in range(10))  # no Content-Length: counted while read
    response = requests.post(f"{api.url}/v1/searches", data=chunks, headers=headers, timeout=10)
    assert response.status_code == 413 and "limit of 20,000" in response.json()["error"]


def write_job(api: ApiProcess, job_id: str, **record: Any) -> None:
    folder = api.jobs / job_id
    folder.mkdir(parents=True)
    base = {"id": job_id, "kind": "search", "name": "old", "created": time.time(), "pid": None,
            "deployments": [{"name": "old", "device": "cpu-1t", "classes": "all", "episodes": 3}],
            "cancel_requested": False, "exit_code": None, "ended": None, "resumed": 0}
    (folder / "job.json").write_text(json.dumps({**base, **record}))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_jobs_are_read_back_from_disk_and_finished_ones_cannot_be_cancelled(api):
    """State lives in the jobs folder: what an earlier API process left is reported as it is."""
    write_job(api, "aaaaaaaaaaa1", exit_code=0, pid=dead_pid(), ended=time.time())
    write_job(api, "aaaaaaaaaaa2", pid=dead_pid())  # died without an exit status: an API restart, a kill
    finished, gone = get(api, "/v1/jobs/aaaaaaaaaaa1").json(), get(api, "/v1/jobs/aaaaaaaaaaa2").json()
    assert finished["state"] == "finished" and gone["state"] == "interrupted"
    assert gone["deployments"][0]["state"] == "pending" and gone["log_tail"] == []
    conflict = post(api, "/v1/jobs/aaaaaaaaaaa1/cancel")
    assert conflict.status_code == 409 and "finished" in conflict.json()["error"]
    assert post(api, "/v1/jobs/aaaaaaaaaaa1/resume").status_code == 409
    assert {"aaaaaaaaaaa1", "aaaaaaaaaaa2"} <= {j["id"] for j in get(api, "/v1/jobs").json()}


@pytest.mark.slow
def test_a_job_still_running_after_an_api_restart_is_adopted_and_cancelled(api):
    """A job started by an earlier API process (not this one's child) is found running through its
    pid and command line, and a cancel reaches its process group."""
    folder = api.jobs / "bbbbbbbbbbb1"
    # like the CLI, SIGINT is Ctrl-C even if this test runs from a shell's background (SIGINT inherited
    # ignored); it says when its handler is in place, so the cancel cannot arrive before it
    code = ("import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "print('ready', flush=True); time.sleep(60)")
    stand_in = subprocess.Popen([sys.executable, "-c", code, str(folder / "campaign.yaml")], start_new_session=True,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stand_in.stdout is not None and stand_in.stdout.readline().strip() == "ready"
        cmdline = Path(f"/proc/{stand_in.pid}/cmdline")
        wait_until("the stand-in's exec", lambda: b"campaign.yaml" in cmdline.read_bytes(), 10, api)
        write_job(api, "bbbbbbbbbbb1", pid=stand_in.pid)
        assert get(api, "/v1/jobs/bbbbbbbbbbb1").json()["state"] == "running"
        assert post(api, "/v1/jobs/bbbbbbbbbbb1/cancel").status_code == 202
        assert stand_in.wait(30) != 0  # SIGINT: KeyboardInterrupt in the stand-in
        wait_until("cancelled", lambda: get(api, "/v1/jobs/bbbbbbbbbbb1").json()["state"] == "cancelled", 10, api)
    finally:
        stand_in.kill()


def test_in_process_app_reads_token_unexpected_errors_and_a_store_that_is_down(tmp_path, monkeypatch, caplog):
    """create_app under TestClient: --token-for-reads, a bug answered as a JSON 500 without its
    text, an unreachable tracking store as a 503."""
    import urllib.error
    import warnings

    with warnings.catch_warnings():  # starlette >= 1.x warns that httpx will become httpx2
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from modeltailor.errors import ModelTailorError
    from modeltailor.experiments.tracking import registry
    from modeltailor.service.api import create_app

    app = create_app(tmp_path / "jobs", "http://127.0.0.1:9", token=TOKEN, token_for_reads=True)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/health").status_code == 200
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/jobs", headers=auth).json() == []

    def down(uri: str) -> None:
        raise ModelTailorError(f"tracking server '{uri}' is unreachable") from urllib.error.URLError("refused")

    monkeypatch.setattr(registry, "registered_devices", down)
    unavailable = client.get("/v1/devices", headers=auth)
    assert unavailable.status_code == 503 and "unreachable" in unavailable.json()["error"]

    def bug(uri: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(registry, "registered_devices", bug)
    with caplog.at_level("ERROR", logger="modeltailor.service.api"):
        broken = client.get("/v1/devices", headers=auth)
    assert broken.status_code == 500 and "secret" not in broken.text and "RuntimeError" not in broken.text
    request_id = broken.json()["request_id"]
    assert broken.headers["X-Request-ID"] == request_id and f"request {request_id}" in broken.json()["error"]
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret internals" in caplog.text  # the traceback, server-side
    with pytest.raises(ConfigError, match="needs a token"):
        create_app(tmp_path / "jobs", "http://127.0.0.1:9", token="")


def test_the_served_file_type_names_the_registered_files():
    from typing import get_args


    assert get_args(files.RegisteredFile) == files.REGISTERED


# -- launches -------------------------------------------------------------------------------------


def job(api: ApiProcess, job_id: str) -> dict[str, Any]:
    return get(api, f"/v1/jobs/{job_id}").json()


def deployment_state(api: ApiProcess, job_id: str) -> str:
    return job(api, job_id)["deployments"][0]["state"]


@pytest.mark.slow
def test_two_launches_run_at_once_one_is_queried_the_other_cancelled(registry):
    """A search (tracked, registered) and a long campaign (untracked) launched together: both
    trials run at the same moment, each on its own local Ray; the search finishes and the best
    query answers with it; the campaign is cancelled and leaves no process behind."""
    api = registry
    search = post(api, "/v1/searches", {**TINY, "name": "api-c037", "classes": [0, 3, 7]})
    long = post(api, "/v1/campaigns", {"name": "long", "base": {**TINY, "tracking": {"enabled": False}},
                                       "deployments": [{"name": "long-1", "search": {"episodes": 500}}]})
    assert search.status_code == long.status_code == 202, (search.text, long.text)
    search_id, long_id = search.json()["id"], long.json()["id"]
    assert search.json()["status_url"] == f"/v1/jobs/{search_id}"

    def both_trials_running() -> bool:
        states = {deployment_state(api, search_id), deployment_state(api, long_id)}
        assert "failed" not in states, get(api, "/v1/jobs").text
        return states == {"running"}

    wait_until("both trials running at once", both_trials_running, 240, api)
    wait_until("the search finished", lambda: job(api, search_id)["state"] in ("finished", "failed"), 240, api)
    done = job(api, search_id)
    assert done["state"] == "finished" and done["exit_code"] == 0, diagnose(api, search_id)
    row = done["deployments"][0]
    assert row["state"] == "finished" and row["episodes_done"] == 3 and row["result"]["speedup"] > 0, row

    best = get(api, "/v1/devices/cpu-1t/best?classes=0,3,7")
    assert best.status_code == 200, best.text
    chosen = best.json()["chosen"]
    assert chosen["run_id"] == row["mlflow_run_id"] and chosen["classes"] == [0, 3, 7], (chosen, row)
    assert [d["device"] for d in get(api, "/v1/devices").json()] == ["cpu-1t"]
    out = api.jobs / search_id / "out" / "api-c037"
    policy = get(api, f"/v1/devices/cpu-1t/versions/{chosen['version']}/files/policy.json")
    assert policy.status_code == 200 and policy.json() == json.loads((out / "policy.json").read_text())
    model = get(api, f"/v1/devices/cpu-1t/versions/{chosen['version']}/files/model.onnx")
    assert model.status_code == 200 and len(model.content) > 1000
    unmet = get(api, "/v1/devices/cpu-1t/best?classes=0,3,7&max_latency_ms=0.000001")
    assert unmet.status_code == 404 and unmet.json()["closest"], unmet.text

    assert job(api, long_id)["state"] == "running", diagnose(api, long_id)
    cancelled = post(api, f"/v1/jobs/{long_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["cancel_requested"] is True, cancelled.text
    wait_until("the campaign cancelled", lambda: job(api, long_id)["state"] == "cancelled", 120, api)
    pid = json.loads((api.jobs / long_id / "job.json").read_text())["pid"]
    wait_until("its processes gone", lambda: not session_members(pid), 30, api, lambda: process_table(pid))
    assert job(api, long_id)["deployments"][0]["state"] == "interrupted", diagnose(api, long_id)
    assert post(api, f"/v1/jobs/{long_id}/cancel").status_code == 409
    assert get(api, "/v1/health").json()["torch_loaded"] is False


# -- the fuzz -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(tmp_path, mlflow):
    """bench/fuzz_api.py with a small budget on a query-only server (--max-jobs 0: a valid body is
    answered 429, not launched) over the module's tracking server: no request gets a 5xx."""
    report = tmp_path / "fuzz.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz_api.py"), "--max-examples", "8", "--max-jobs", "0",
         "--tracking-uri", mlflow.wait_ready(), "--folder", str(tmp_path / "api"), "--json", str(report)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["requests"] > 300 and result["server_errors"] == 0 and result["no_answer"] == 0
