"""The bench scripts (bench/*.py) run: every one answers --help, and those with a small setting
run it (marked slow) and print their table: its header and at least one row of numbers. The
--help checks run every script in one interpreter (about 10 s).

Smoke runs share one tiny deployment (a width-0.5 ResNet-20 on 16x16 digits, 3 training epochs,
a few episodes) and one MODELTAILOR_CACHE, so the teacher trains once for the module. Scripts
without a smoke run, and why:
  * cifar10: needs the CIFAR-10 archive (--data), which the tests do not have;
  * campaign: even --quick trains the example campaign's teachers and starts a local Ray for a
    sequential and a concurrent arm (minutes on two cores); tests/test_campaign*.py run campaigns;
  * dashboard_screenshot: needs a tracked campaign run and Chromium (tests/test_dashboard.py
    drives the MLflow UI);
  * warm_start: searches three source deployments (one on cpu-2t) with PPO and three held-out
    targets cold and warm, on examples/digits-resnet20.yaml (no smaller config): minutes;
  * fuzz_api: starts the HTTP API and schemathesis over every operation (tests/test_api.py fuzzes it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def _env(cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MODELTAILOR_TRACKING_URI")}
    env["OMP_NUM_THREADS"] = "1"
    if cache is not None:
        env["MODELTAILOR_CACHE"] = str(cache)
    return env


HELP_ALL = """
import contextlib, io, json, os, runpy, sys, traceback
done = {}
for path in sys.argv[1:]:
    if os.path.dirname(path) not in sys.path:  # as `python bench/X.py` does: the script's folder first
        sys.path.insert(0, os.path.dirname(path))
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    done[path] = {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(done))
"""
"""Every script's ``--help`` in one interpreter (runpy, as ``__main__``): the scripts import torch,
ONNX Runtime and Ray, which one process imports once instead of eleven times."""


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """`python bench/X.py --help` of every script, as run by one interpreter."""
    cache = tmp_path_factory.mktemp("help-cache")
    paths = [str(ROOT / "bench" / f"{name}.py") for name in SCRIPTS]
    run = subprocess.run([sys.executable, "-c", HELP_ALL, *paths], cwd=ROOT, env=_env(cache),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    return {name: subprocess.CompletedProcess([path, "--help"], results[path]["returncode"], results[path]["stdout"],
                                              results[path]["stderr"])
            for name, path in zip(SCRIPTS, paths, strict=True)}


def test_every_bench_script_is_covered() -> None:
    assert set(SCRIPTS) == {
        "campaign", "cifar10", "corpus", "dashboard_screenshot", "feasibility", "fuzz_api", "held_out",
        "joint_vs_prune", "recovery_budget", "search_default", "searchers", "surrogate", "warm_start",
    }, "a bench script was added or removed: give it a --help (and smoke) test here"


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(helps: dict[str, subprocess.CompletedProcess[str]], name: str) -> None:
    done = helps[name]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {name}.py") and "--help" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


# -- smoke runs at each script's smallest setting ---------------------------------------------------

TINY = {
    "name": "bench-tiny",
    "model": {"name": "resnet20", "kwargs": {"width": 0.5}},
    "data": {"name": "digits", "input_size": 16, "seed": 0},
    "device": {"name": "cpu-1t", "runs": 10, "warmup": 2},
    "train": {"epochs": 3},
    "objective": {"kind": "budget", "max_latency_ratio": 0.6},
    "search": {"searcher": "random", "episodes": 2, "round_to": 2, "min_keep": 0.3},
    "recovery": {"episode_steps": 2, "final_steps": 5, "finalists": 1},
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny deployment's YAML, a MODELTAILOR_CACHE shared by the smoke runs)."""
    folder = tmp_path_factory.mktemp("bench-smoke")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return config, folder / "cache"


def run_bench(name: str, cache: Path, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args], cwd=ROOT, env=_env(cache),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def table_rows(out: str, header: list[str], first: str | None = None) -> list[str]:
    """The lines after the table's header (the line holding every word of `header`) that start with
    `first` (any, if None) and hold numbers; asserts there is at least one."""
    lines = out.splitlines()
    at = next((i for i, line in enumerate(lines) if all(word in line for word in header)), None)
    assert at is not None, f"no header with {header} in:\n{out[-3000:]}"
    rows = [line for line in lines[at + 1:] if (first is None or line.lstrip("| ").startswith(first))
            and len(NUMBER.findall(line)) >= 2 and not set(line) <= set("|- ")]
    assert rows, f"no row with numbers after the header {header} in:\n{out[-3000:]}"
    return rows


@pytest.mark.slow
def test_search_default_smoke(tiny: tuple[Path, Path]) -> None:
    config, cache = tiny
    out = run_bench("search_default", cache, "--config", str(config), "--episodes", "2", "--searchers", "random")
    (row,) = table_rows(out, ["searcher", "best val acc", "latency ms", "speedup", "feasible", "seconds"], "random")
    assert re.search(r"\d+\.\d+x\s+\d+/2", row), row


@pytest.mark.slow
def test_joint_vs_prune_smoke(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    config, cache = tiny
    out = run_bench("joint_vs_prune", cache, "--config", str(config), "--episodes", "2", "--budgets", "0.6",
                    "--out", str(tmp_path / "out"))
    rows = table_rows(out, ["budget", "variant", "test acc", "latency ms", "speedup", "methods"], "0.60")
    assert {row.split()[1] for row in rows} == {"prune-only", "joint"}, rows


@pytest.mark.slow
def test_feasibility_smoke(tiny: tuple[Path, Path]) -> None:
    config, cache = tiny
    out = run_bench("feasibility", cache, "--config", str(config), "--episodes", "2")
    assert "ratio 0.6: budget" in out, out
    rows = [row for row in table_rows(out, ["within budget", "latency / budget", "pred err"]) if "median" not in row]
    assert [row.split()[0] for row in rows] == ["old", "new"] and all(" /2" not in row and "/2" in row for row in rows), rows


@pytest.mark.slow
def test_recovery_budget_smoke(tiny: tuple[Path, Path]) -> None:
    config, cache = tiny
    out = run_bench("recovery_budget", cache, "--config", str(config), "--policies", "3", "--steps", "0", "2",
                    "--val-samples", "50", "0")
    rows = [row for row in table_rows(out, ["steps", "val imgs", "spearman", "kendall", "s/episode"])
            if row.split()[0].isdigit()]
    assert [row.split()[0] for row in rows] == ["0", "0", "2", "2"] and rows[0].split()[1] == "50", rows  # 2 step budgets x 2 validation samples
    assert "long recovery val accuracy" in out


@pytest.mark.slow
def test_searchers_smoke(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    config, cache = tiny
    out = run_bench("searchers", cache, "--config", str(config), "--episodes", "2", "--seeds", "0",
                    "--searchers", "random,uniform", "--deployments", "all-50", "--episode-steps", "2",
                    "--out", str(tmp_path / "searchers.json"))
    rows = table_rows(out, ["| deployment", "searcher", "best", "within budget"], "all-50")
    assert [row.split("|")[2].strip() for row in rows] == ["random", "uniform"], rows
    assert (tmp_path / "searchers.json").is_file()


@pytest.mark.slow
def test_held_out_smoke(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """One source of 8 random episodes is enough experience: the assisted searchers skip their seed
    episodes and go straight to the surrogate."""
    config, cache = tiny
    out = run_bench("held_out", cache, "--config", str(config), "--sources", "src-all-30", "--episodes", "8",
                    "--assisted-episodes", "3",
                    "--seeds", "0", "--episode-steps", "2", "--pretrain-episodes", "10", "--round-episodes", "4",
                    "--out", str(tmp_path / "held_out.json"))
    rows = [row for row in table_rows(out, ["| searcher", "best after 3", "real episodes to random"]) if row.startswith("|")]
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels[0] == "random" and "ppo + experience" in labels and "evolution-surrogate (no experience)" in labels
    assert json.loads((tmp_path / "held_out.json").read_text())["settings"]["assisted_episodes"] == 3


@pytest.mark.slow
def test_surrogate_smoke(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    config, cache = tiny
    out = run_bench("surrogate", cache, "--config", str(config), "--episodes", "24", "--held-out", "8",
                    "--sizes", "12", "--seeds", "0", "--episode-steps", "0", "--out", str(tmp_path / "s.json"))
    rows = [row for row in table_rows(out, ["| predictor", "real episodes fitted on", "accuracy Kendall tau"])
            if row.startswith("|")]
    assert {row.split("|")[1].strip().split(" ")[0] for row in rows} == {"gp", "trees", "mlp", "auto"}, rows
    assert len(json.loads((tmp_path / "s.json").read_text())["episodes"]) == 24


@pytest.mark.slow
def test_corpus_smoke(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    _, cache = tiny
    out = run_bench("corpus", cache, "--models", "conv_head", "--episodes", "2", "--input-size", "16",
                    "--epochs", "2", "--out", str(tmp_path / "out"))
    (row,) = table_rows(out, ["| model", "units", "frozen", "latency ms", "speedup"], "conv_head")
    assert "refused" not in row and re.search(r"\d+\.\d+x", row), row
    assert (tmp_path / "out" / "results.json").is_file()
