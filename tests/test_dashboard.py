"""What a person sees in the MLflow UI, checked in a real browser.

A store is built the way a campaign builds it, without searching: the campaign's parent run is
opened and closed by the campaign's own code (`_ParentRun`, `_finish`: campaign.json,
campaign.png, its description), and each deployment's run gets what `run_search` gives it once
its search is over: its final metrics and artifacts, a real (tiny) ONNX model registered through
`registry.register_search` (tests/test_registry.py `make_out`), and its description from
`run_description`. Then a real ``mlflow server`` serves that store and headless Chromium
(Debian's, driven by Playwright) opens the pages a person opens:

* a first-time visitor (a fresh browser context: no localStorage) opening the experiment through
  its link lands in the model-training view (its runs table), not the GenAI one, and so do the
  experiment and run pages the descriptions link to;
* a deployment's run shows its description (the result table, the Pareto plot, loaded, a link to
  its registered version and one to its logged model, both of which resolve) and lists its logged
  model with the version it became;
* the campaign's parent run compares its deployments, linking their runs and versions;
* the Models page and a version's page (the registry) show `modeltailor-cpu-1t`, its versions and
  their champion aliases to a first-time visitor.

The view. The MLflow UI ignores the experiment's `mlflow.experimentKind` tag: the GenAI or
model-training view follows the ``workflowType`` query parameter of the page's (hash) URL, else
the browser's last choice of the sidebar toggle (localStorage ``mlflow.workflowType``), else
GenAI (upstream: mlflow/mlflow#24498, closed; its fix, PR #24493, was closed unmerged). Checked
on 3.17.2 and on 3.18.0, whose WorkflowTypeProvider is the same code: a first-time visitor
opening ``#/experiments/<id>`` without the query is sent on to the GenAI overview
(``.../overview?workflowType=genai``, "send your first trace"), and a run page without it shows
the GenAI sidebar too. So a link that opens an experiment page in the model-training view carries
``?workflowType=machine_learning`` (`ml_link`), the links in the runs' descriptions included
(they open in a new tab, where only the link's own query counts); the tag stays, for UIs that
read it. The first test also opens the experiment and a run without the query and expects the
GenAI view: that shows the view check tells the views apart, and fails once an MLflow opens the
experiment's own view by itself (then the query can go). The registry pages (``#/models...``)
have no experiment sidebar; their content is the same in either view.

Skips without Chromium or Playwright, except in CI (``CI`` set), where that fails. The module
takes 40-60 s, most of it the store's schema and the server's start (they overlap).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pytest

from modeltailor.experiments.fleet.campaign import (
    LogCampaignReporter,
    _finish,
    _ParentRun,
    result_row,
)
from modeltailor.experiments.search.outputs import final_metrics, run_description
from modeltailor.experiments.search.plots import plot_pareto
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.campaign import load_campaign
from modeltailor.experiments.spec.summary import SearchSummary
from modeltailor.experiments.tracking import registry
from modeltailor.experiments.tracking.tracker import KIND, KIND_TAG, PARENT_TAG, Tracker

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CAMPAIGN = REPO / "examples" / "campaign-digits.yaml"
EXPERIMENT = "modeltailor"
DEVICE_MODEL = "modeltailor-cpu-1t"
ML_VIEW = "workflowType=machine_learning"  # the query that opens the model-training view (3.17, 3.18)
BROWSER_ARGS = ["--no-sandbox", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}
UI_TIMEOUT_MS = 20_000
GENAI_LINK = (
    "a description's link opened the GenAI view: MLflow (3.17, 3.18) picks the view from the link's "
    f"`?{ML_VIEW}`, not from the experiment's kind tag"
)
UPSTREAM_FIXED = (
    "this MLflow opens the experiment in the model-training view without `?workflowType=...`: "
    "it reads the experiment's kind tag now (mlflow/mlflow#24498), so `ml_link` and TRAINING_VIEW "
    "(experiments/tracking/tracker.py) can go, with a lower bound on mlflow in pyproject.toml"
)
NO_VERSION_LINK = (
    "the logged model shows no registered version: registering must also set the logged model's "
    "`mlflow.modelVersions` tag (what mlflow.register_model does; create_model_version does not)"
)


def ml_link(base: str, route: str) -> str:
    """A UI link that opens `route` (e.g. ``#/experiments/1``) in the model-training view."""
    return f"{base}/{route}{'&' if '?' in route else '?'}{ML_VIEW}"


# -- the store -----------------------------------------------------------------------------------


@dataclass
class DashboardStore:
    """What `build_store` made: the tracking URI and the ids the pages are opened with."""

    uri: str
    experiment_id: str
    parent_run_id: str
    runs: dict[str, str] = field(default_factory=dict)  # deployment -> run id
    versions: dict[str, registry.VersionInfo] = field(default_factory=dict)  # deployment -> version


def _pareto_png(summary: SearchSummary, path: Path) -> None:
    """The search's Pareto plot, drawn like outputs.write_outputs draws it (a few made-up episodes)."""
    best = summary.best.model_dump()
    episodes = [
        {"accuracy": best["accuracy"] - 0.02 * i, "latency_ms": best["latency_ms"] * (1 + 0.3 * i),
         "memory_bytes": best["memory_bytes"] * (1 + 0.5 * i)}
        for i in range(6)
    ]  # fmt: skip
    plot_pareto(
        episodes, [p.model_dump() for p in summary.pareto],
        {**summary.baseline.model_dump(), "accuracy": summary.baseline.val_accuracy}, best, path,
    )  # fmt: skip


def store_uri(root: Path) -> str:
    """The SQLite store in root (made when missing)."""
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root.resolve()}/mlflow.db"


def build_store(root: Path) -> DashboardStore:
    """A SQLite store with a campaign (examples/campaign-digits.yaml) whose two cpu-1t deployments
    finished (versions 1 and 2 of modeltailor-cpu-1t), one cpu-2t deployment failed and one never
    ran; the campaign's folder is root/campaign."""
    from tests.test_registry import make_out

    uri = store_uri(root)
    campaign = load_campaign(CAMPAIGN)
    out_dir = root / "campaign"
    out_dir.mkdir()
    record: dict[str, Any] = {}
    started = time.perf_counter()
    parent = _ParentRun(uri, EXPERIMENT, campaign, record)  # the campaign's run, as run_campaign opens it
    tracker = Tracker(uri, EXPERIMENT)
    client = mlflow.MlflowClient(uri)
    store = DashboardStore(uri, tracker.experiment_id, parent.run_id)
    finished = {"c037-cpu1t": (0.97, 0.21, 900), "all-cpu1t": (0.95, 0.24, 1200)}
    for name, (accuracy, latency, memory) in finished.items():
        classes = tuple(campaign.deployments[name].classes or range(10))
        out = make_out(out_dir, tracker, name, accuracy=accuracy, latency_ms=latency, memory=memory,
                       classes=classes, deployment=name)  # fmt: skip
        summary = SearchSummary.model_validate_json((out / "summary.json").read_text())
        run_id = summary.mlflow_run_id
        assert run_id is not None
        client.set_tag(run_id, PARENT_TAG, parent.run_id)  # a trial's run is nested in the campaign's
        # what run_search does once the search is over: outputs, registration, description
        tracker.resume_run(run_id)
        _pareto_png(summary, out / "pareto.png")
        tracker.log_metrics(final_metrics(summary))
        for artifact in ("summary.json", "policy.json", "model.onnx", "pareto.png"):
            tracker.log_artifact(out / artifact)
        version = registry.register_search(uri, out, summary)
        tracker.set_description(run_description(summary, run_id, tracker.experiment_id, version))
        tracker.end_run()
        # what the trial records for the campaign (campaign._search_deployment)
        row = {**result_row(summary), "registered_version": version.version}
        trial = {"state": "finished", "episodes_done": summary.episodes, "mlflow_run_id": run_id,
                 "node": "local", "seconds": 12.5, "result": row}  # fmt: skip
        (out / files.TRIAL).write_text(json.dumps(trial))
        store.runs[name], store.versions[name] = run_id, version
    failed = out_dir / "all-cpu2t"
    failed.mkdir()
    (failed / files.TRIAL).write_text(json.dumps({"state": "failed", "error": "device cpu-2t unreachable"}))
    _finish(out_dir, campaign, record, parent, False, started, LogCampaignReporter())
    return store


# -- the browser ---------------------------------------------------------------------------------


def browser_skip_reason() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the dev extra installs it; it drives the system chromium)"
    if not shutil.which("chromium"):
        return "no chromium on PATH: install Debian's `chromium` package (.ci/run does)"
    return None


@dataclass
class Dashboard:
    store: DashboardStore
    base: str  # http://127.0.0.1:PORT
    browser: Any

    def page(self, url: str) -> Any:
        """A new visitor (fresh context: no localStorage) opening url."""
        context = self.browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(url)
        return page


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    reason = browser_skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the MLflow UI tests need a browser in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from tests.pg_mlflow import mlflow_server

    root = tmp_path_factory.mktemp("dashboard")
    uri = store_uri(root / "store")
    Tracker(uri, EXPERIMENT)  # the schema, so the server can start while the store fills
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        serving = mlflow_server(uri, root / "server")
        starting = pool.submit(serving.__enter__)
        stack.callback(lambda: starting.exception() or serving.__exit__(None, None, None))
        store = build_store(root / "store")
        server = starting.result()
        pw = stack.enter_context(sync_playwright())
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
        stack.callback(browser.close)
        yield Dashboard(store, server.uri, browser)


def workflow_view(page: Any) -> str:
    """Which view the experiment's sidebar shows: 'model training' (Runs, Models, Traces, Model
    registry) or 'genai' (Overview, Traces, Judges, ..., Agent versions)."""
    from playwright.sync_api import expect

    nav = page.locator("aside").filter(has_text="Model training").first
    training, genai = nav.get_by_text("Model registry", exact=True), nav.get_by_text("Agent versions", exact=True)
    expect(training.or_(genai).first).to_be_visible()
    return "genai" if genai.count() else "model training"


def follow(page: Any, link: Any) -> Any:
    """Click a link of a run's description (shown in full first): the tab it opens, loaded."""
    more = page.get_by_role("button", name="Expand description")
    if more.count():
        more.click()
    with page.context.expect_page() as opened:  # description links open a new tab
        link.click()
    tab = opened.value
    tab.set_default_timeout(UI_TIMEOUT_MS)
    tab.wait_for_load_state()
    return tab


def loaded(page: Any, image: Any) -> bool:
    """Wait until the image has loaded; True when it has pixels."""
    image.wait_for(state="attached")
    page.wait_for_function("img => img.complete", arg=image.element_handle())
    return image.evaluate("img => img.naturalWidth > 0 && img.naturalHeight > 0")


# -- what a person sees --------------------------------------------------------------------------


def test_the_experiment_opens_in_the_model_training_view(dashboard):
    from playwright.sync_api import expect

    store, exp = dashboard.store, dashboard.store.experiment_id
    assert mlflow.MlflowClient(store.uri).get_experiment(exp).tags[KIND_TAG] == KIND
    page = dashboard.page(ml_link(dashboard.base, f"#/experiments/{exp}"))
    page.wait_for_url(re.compile(rf"#/experiments/{exp}/runs\b"))  # the runs table, not Overview
    assert workflow_view(page) == "model training"
    expect(page.get_by_role("link", name="digits-fleet")).to_be_visible()  # the campaign's run, listed
    # without the query a first-time visitor gets the GenAI view (mlflow/mlflow#24498): what the
    # query is for, and proof that the check tells the views apart
    bare = dashboard.page(f"{dashboard.base}/#/experiments/{exp}")
    bare.wait_for_url(re.compile(rf"#/experiments/{exp}/(overview|traces)"))
    assert workflow_view(bare) == "genai", UPSTREAM_FIXED
    bare_run = dashboard.page(f"{dashboard.base}/#/experiments/{exp}/runs/{store.runs['c037-cpu1t']}")
    assert workflow_view(bare_run) == "genai", UPSTREAM_FIXED


def test_a_search_run_shows_its_description_plot_and_model(dashboard):
    from playwright.sync_api import expect

    store, base = dashboard.store, dashboard.base
    exp, run_id, version = store.experiment_id, store.runs["c037-cpu1t"], store.versions["c037-cpu1t"]
    page = dashboard.page(ml_link(base, f"#/experiments/{exp}/runs/{run_id}"))
    assert workflow_view(page) == "model training"
    note = page.get_by_test_id("note-editor-preview-content")
    expect(note).to_contain_text("c037-cpu1t: resnet20 on digits, classes 0,3,7, device cpu-1t")
    table = note.locator("table")
    expect(table).to_contain_text("test accuracy")
    expect(table.locator("tr", has_text="chosen")).to_contain_text("0.9700")
    expect(table.locator("tr", has_text="baseline")).to_contain_text("0.9500")
    assert loaded(page, note.locator("img[src*='pareto.png']")), "the Pareto plot did not load"
    version_link = note.locator(f"a[href^='#/models/{DEVICE_MODEL}/versions/{version.version}']")
    model_link = note.locator(f"a[href^='#/experiments/{exp}/models/{version.model_id}']")
    expect(version_link).to_have_count(1)
    expect(model_link).to_have_count(1)
    # the run lists its logged model, and the version the model became
    logged = page.get_by_role("grid").filter(has_text="Model attributes")
    expect(page.get_by_text("Logged models (1)")).to_be_visible()
    expect(logged).to_contain_text("Ready")
    expect(logged.get_by_role("link", name=DEVICE_MODEL), NO_VERSION_LINK).to_be_visible()
    # both links resolve: the version's page, and the logged model's page in the same view
    version_page = follow(page, version_link)
    expect(version_page.get_by_text(f"Version {version.version}", exact=True).first).to_be_visible()
    expect(version_page.get_by_text(version.aliases[0]).first).to_be_visible()
    expect(version_page.get_by_role("link", name="c037-cpu1t").first).to_be_visible()  # its source run
    model_page = follow(page, model_link)
    expect(model_page.get_by_text(version.model_id, exact=True).first).to_be_visible()  # "Model ID"
    expect(model_page.get_by_role("link", name="c037-cpu1t").first).to_be_visible()  # "Source run"
    expect(model_page.get_by_text("Model versions").locator("xpath=..")).to_contain_text(DEVICE_MODEL)
    assert workflow_view(model_page) == "model training", GENAI_LINK


def test_the_campaign_run_compares_its_deployments(dashboard):
    from playwright.sync_api import expect

    store, base, exp = dashboard.store, dashboard.base, dashboard.store.experiment_id
    page = dashboard.page(ml_link(base, f"#/experiments/{exp}/runs/{store.parent_run_id}"))
    assert workflow_view(page) == "model training"
    note = page.get_by_test_id("note-editor-preview-content")
    expect(note).to_contain_text("campaign digits-fleet: 2 of 4 deployments finished")
    table = note.locator("table")
    expect(table.locator("tr", has_text="all-cpu2t")).to_contain_text("failed")
    expect(table.locator("tr", has_text="c037-cpu2t")).to_contain_text("pending")
    for name, version in store.versions.items():
        row = table.locator("tr", has_text=name)
        expect(row).to_contain_text("finished")
        expect(row).to_contain_text(f"{version.accuracy:.4f}")
        expect(row.locator(f"a[href^='#/experiments/{exp}/runs/{store.runs[name]}']")).to_have_count(1)
        expect(row.locator(f"a[href^='#/models/{DEVICE_MODEL}/versions/{version.version}']")).to_have_count(1)
    assert loaded(page, note.locator("img[src*='campaign.png']")), "the campaign plot did not load"
    # a deployment's link opens its run, in the same view
    run_page = follow(page, table.locator("tr", has_text="c037-cpu1t").locator("a").first)
    expect(run_page.get_by_test_id("note-editor-preview-content")).to_contain_text("c037-cpu1t: resnet20 on digits")
    assert workflow_view(run_page) == "model training", GENAI_LINK


def test_the_models_page_lists_the_device_model_and_its_champions(dashboard):
    from playwright.sync_api import expect

    store, base = dashboard.store, dashboard.base
    page = dashboard.page(f"{base}/#/models")
    row = page.get_by_role("row").filter(has_text=DEVICE_MODEL)
    expect(row).to_be_visible()
    expect(row).to_contain_text("Version 2")
    expect(row).to_contain_text(store.versions["all-cpu1t"].aliases[0])  # the latest version's alias
    expect(row.locator(f"a[href='#/models/{DEVICE_MODEL}']")).to_have_count(1)
    page.goto(f"{base}/#/models/{DEVICE_MODEL}")
    for version in store.versions.values():
        versions_row = page.get_by_role("row").filter(has_text=f"Version {version.version}")
        expect(versions_row.first).to_contain_text(version.aliases[0])
    # a version's page, opened by a first-time visitor as the descriptions link it
    latest = store.versions["all-cpu1t"]
    page = dashboard.page(f"{base}/#/models/{DEVICE_MODEL}/versions/{latest.version}")
    expect(page.get_by_text(f"Version {latest.version}", exact=True).first).to_be_visible()
    expect(page.get_by_text(latest.aliases[0]).first).to_be_visible()
    expect(page.get_by_role("link", name="all-cpu1t").first).to_be_visible()  # its source run
    # the experiment's Models tab lists both logged models (named after their deployments), with their source runs
    page = dashboard.page(ml_link(base, f"#/experiments/{store.experiment_id}/models"))
    grid = page.get_by_role("grid").filter(has_text="Source run")
    for name, version in store.versions.items():
        expect(grid.locator(f"a[href*='/models/{version.model_id}']")).to_have_text(name)
        expect(grid.locator("a[href*='/runs/']").filter(has_text=name)).to_be_visible()
