"""Fuzz the HTTP API from its own OpenAPI spec with schemathesis; count requests and 5xx answers.

Starts `modeltailor serve` on a free loopback port (tests/api_process.py, with a token), runs
`schemathesis run` over every operation (coverage, fuzzing and stateful phases, the token sent,
check: not_a_server_error), reads every request and answer from its NDJSON report, prints them by
operation and status, and exits 1 on any 5xx. Launches that a valid generated body starts are
cancelled at the end and every process they started is killed.

    python bench/fuzz_api.py                       # empty registry, at most 2 jobs launched
    python bench/fuzz_api.py --tracking-uri sqlite:///$PWD/mlflow.db --max-examples 50
    python bench/fuzz_api.py --max-jobs 0          # launches answered 429 (a query-only server)
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.api_process import ApiProcess, api_server  # noqa: E402

TOKEN = "fuzz-token"
SCHEMATHESIS = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=25, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phases", default="coverage,fuzzing,stateful")
    parser.add_argument("--max-jobs", type=int, default=2, help="the server's --max-jobs (0: no launches)")
    parser.add_argument("--tracking-uri", default=None, help="registry to serve (default: an empty SQLite store)")
    parser.add_argument("--folder", type=Path, default=None, help="server folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the counts here")
    return parser.parse_args(argv)


def run_schemathesis(api: ApiProcess, args: argparse.Namespace, reports: Path) -> int:
    command = [
        *SCHEMATHESIS, "run", f"{api.url}/openapi.json", "--header", f"Authorization: Bearer {api.token}",
        "--checks", "not_a_server_error", "--max-examples", str(args.max_examples), "--seed", str(args.seed),
        "--phases", args.phases, "--report", "ndjson", "--report-ndjson-path", str(reports / "events.ndjson"),
        "--request-timeout", "60", "--no-color", "--warnings", "off",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=reports)  # its .hypothesis/ goes there
    (reports / "schemathesis.txt").write_text(done.stdout + done.stderr)
    return done.returncode


def interactions(events: Path) -> list[tuple[str, str, int | None]]:
    """(operation, method, status) of every request schemathesis sent, from its NDJSON events."""
    seen = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder", {})
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response") or {}
            method = (interaction.get("request") or {}).get("method", "?")
            seen.append((recorder.get("label", "?"), method, response.get("status_code")))
    return seen


def stop_jobs(api: ApiProcess) -> int:
    """Cancel every job a valid body launched; the server's exit kills what outlives the cancel."""
    launched = requests.get(f"{api.url}/v1/jobs", timeout=30).json()
    active = [j["id"] for j in launched if j["state"] in ("queued", "running")]
    for job_id in active:
        requests.post(f"{api.url}/v1/jobs/{job_id}/cancel", headers=api.auth, timeout=30)
    deadline = time.monotonic() + 90
    while active and time.monotonic() < deadline:
        states = {j["id"]: j["state"] for j in requests.get(f"{api.url}/v1/jobs", timeout=30).json()}
        active = [j for j in active if states.get(j) in ("queued", "running")]
        time.sleep(1)
    return len(launched)


def summarize(seen: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    by_status = collections.Counter(str(status) for _, _, status in seen)
    by_operation: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for label, _, status in seen:
        by_operation[label][str(status)] += 1
    errors = [(label, method, status) for label, method, status in seen if status is not None and status >= 500]
    return {"requests": len(seen), "server_errors": len(errors), "no_answer": by_status.get("None", 0),
            "by_status": dict(sorted(by_status.items())),
            "by_operation": {k: dict(sorted(v.items())) for k, v in sorted(by_operation.items())},
            "server_error_requests": errors[:20]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    env = {"MODELTAILOR_CACHE": str(folder / "cache")}
    started = time.perf_counter()
    with api_server(folder, TOKEN, "--max-jobs", str(args.max_jobs), env=env, tracking_uri=args.tracking_uri) as api:
        code = run_schemathesis(api, args, folder)
        launched = stop_jobs(api)
        health = requests.get(f"{api.url}/v1/health", timeout=30).json()
    result = summarize(interactions(folder / "events.ndjson"))
    result.update(schemathesis_exit=code, jobs_launched=launched, torch_loaded=health["torch_loaded"],
                  seconds=round(time.perf_counter() - started, 1), max_examples=args.max_examples, seed=args.seed)
    print(f"{'operation':62s} requests by status")
    for label, counts in result["by_operation"].items():
        print(f"{label:62s} " + ", ".join(f"{status}: {n}" for status, n in counts.items()))
    print(f"{result['requests']} requests sent, {result['server_errors']} answered 5xx, "
          f"{result['no_answer']} without an answer; {launched} jobs launched (cancelled); "
          f"schemathesis exit {code}; {result['seconds']} s; report in {folder}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if code == 0 and result["server_errors"] == 0 and result["no_answer"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
