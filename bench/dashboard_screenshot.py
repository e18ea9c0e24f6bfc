"""Screenshot of what a person sees in the MLflow UI: a run's page with its description.

Opens the run in headless Chromium (Debian's `chromium`, driven by Playwright; no `playwright
install`) in a 1400x1000 window (--height: a taller one; MLflow's page scrolls inside its own
panes, so a taller window, not a "full page" shot, shows more), in MLflow's model-training view, with the description shown in full and
the assistant panel closed, waits for the description's images (the Pareto or campaign plot), and
saves a PNG. The run: --run-id, else the experiment's most recent campaign (parent) run, else its
most recent run with a description.

A SQLite store is served for the length of the script by `mlflow server` (the one a campaign
starts, experiments/tracking/server.py: loopback, a free port, stopped on the way out); an
http(s) URI is used as it is.

MLflow 3.17's UI ignores the experiment's `mlflow.experimentKind` tag and opens experiments in its
GenAI view unless the page's URL says ``?workflowType=machine_learning`` (or the browser's toggle
was set), so the page is opened with it; --view genai shows what a link without it shows.

Usage:
  python bench/dashboard_screenshot.py --tracking-uri sqlite:////ABS/mlflow.db --out docs/dashboard.png
  python bench/dashboard_screenshot.py --tracking-uri http://127.0.0.1:5000 --run-id RUN --height 1400
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from modeltailor.errors import ModelTailorError
from modeltailor.experiments.tracking.server import serving
from modeltailor.experiments.tracking.tracker import (
    NOTE_TAG,
    normalize_tracking_uri,
    quiet_mlflow_logging,
    sqlite_path,
)

VIEWPORT = {"width": 1400, "height": 1000}
BROWSER_ARGS = ["--no-sandbox", "--disable-background-networking"]
TIMEOUT_MS = 30_000
CAMPAIGN_KIND = ("modeltailor.kind", "campaign")  # the tag of a campaign's parent run
VIEWS = {"training": "machine_learning", "genai": "genai"}


def pick_run(client: mlflow.MlflowClient, experiment: str, run_id: str | None) -> Any:
    """--run-id, else the latest campaign run of the experiment, else its latest described run."""
    if run_id:
        return client.get_run(run_id)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment '{experiment}' in this store: pass --experiment or --run-id")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=500)
    described = [r for r in runs if r.data.tags.get(NOTE_TAG)]
    campaigns = [r for r in described if r.data.tags.get(CAMPAIGN_KIND[0]) == CAMPAIGN_KIND[1]]
    if not (campaigns or described):
        raise SystemExit(f"experiment '{experiment}' has no run with a description: pass --run-id")
    return (campaigns or described)[0]


@contextlib.contextmanager
def ui_base(tracking_uri: str) -> Iterator[str]:
    """The UI's base URL: the server itself, or an `mlflow server` on the SQLite file meanwhile."""
    if sqlite_path(tracking_uri) is None:
        yield tracking_uri.rstrip("/")
        return
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job-runner processes
    with serving(tracking_uri) as uri:
        yield uri


def capture(url: str, out: Path, height: int) -> dict[str, Any]:
    """Open url, show the run's description in full, wait for its images, save the PNG."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if not chromium:
        raise SystemExit("no chromium on PATH: install Debian's `chromium` package (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_context(viewport={**VIEWPORT, "height": height}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            note = page.get_by_test_id("note-editor-preview-content")
            note.wait_for()
            more = page.get_by_role("button", name="Expand description")
            if more.count():
                more.click()
            close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
            if close.count():
                close.first.click()
            images = note.locator("img")
            for i in range(images.count()):
                page.wait_for_function("img => img.complete", arg=images.nth(i).element_handle())
            loaded = images.evaluate_all(
                "imgs => imgs.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth, height: i.naturalHeight}))"
            )
            page.wait_for_timeout(500)  # let the layout settle after the panel closed
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            title = page.get_by_role("heading", level=2).first.inner_text()
            return {"title": title, "images": loaded, "description": note.inner_text().splitlines()[0]}
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="sqlite:////ABS/mlflow.db, a .db path, or http(s)://HOST:PORT")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"), help="the PNG to write")
    parser.add_argument("--run-id", help="the run to show (default: the latest campaign run, else the latest described run)")
    parser.add_argument("--experiment", default="modeltailor", help="the experiment to look in (default: modeltailor)")
    parser.add_argument("--view", choices=sorted(VIEWS), default="training", help="the UI's view (default: training)")
    parser.add_argument("--height", type=int, default=VIEWPORT["height"], help="window height in pixels (default: 1000)")
    args = parser.parse_args(argv)
    quiet_mlflow_logging()
    uri = normalize_tracking_uri(args.tracking_uri)
    started = time.perf_counter()
    try:
        run = pick_run(mlflow.MlflowClient(uri), args.experiment, args.run_id)
        with ui_base(uri) as base:
            route = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            url = f"{base}/{route}?workflowType={VIEWS[args.view]}"
            shown = capture(url, args.out, args.height)
    except ModelTailorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    broken = [i["src"] for i in shown["images"] if not i["width"]]
    print(json.dumps({
        "out": str(args.out), "bytes": args.out.stat().st_size, "page": route, "view": args.view,
        "run": run.info.run_name, "run_id": run.info.run_id, "heading": shown["title"],
        "description": shown["description"], "images": shown["images"],
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=2))
    if broken:
        print(f"warning: images that did not load: {', '.join(broken)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
