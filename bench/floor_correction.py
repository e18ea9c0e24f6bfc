"""Benchmark: does judging episodes by their predicted long-recovery accuracy find faster models within the floor?

An accuracy-floor deployment (default: examples/digits-resnet20.yaml with classes 0, 3, 7 and the
fastest model within --within points of the restricted teacher). For each seed: a warm-up search
(floor relaxed by search_slack, as every first search is) leaves its finalists in an experience
folder; then each arm's search starts from a copy of that same experience, and the arms differ
only in how the floor is used: learned (`objective.floor_correction: learned`, episodes judged
through the correction fitted on the warm-up's finalists), slack (the floor relaxed by
search_slack), learned-tighten (learned, and `objective.tighten_step: 0.1`: a latency budget the
limiter enforces, 10% below the fastest model judged within the floor so far). Each is finalized
as usual (the finalists' long recovery, the chosen model timed against its baseline in
alternating rounds).

Reports per seed and arm: how the floor was judged (and on how many finalists), the episodes the
search judged within the floor, the chosen model's speedup, test accuracy drop and whether it
meets the floor; then the mean speedup per arm. A search is reused only when its folder's
settings.json equals this run's exactly (marked *), else run afresh.
Usage: python bench/floor_correction.py [--config examples/digits-resnet20.yaml] [--classes 0,3,7]
       [--within 1.0] [--seeds 0,1] [--episodes 48] [--finalists 3] [--arms learned,slack,learned-tighten]
       [--set KEY=VALUE ...]
       [--out runs/bench-floor-correction]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from _cli import one_line_errors
from _settings import MARK, config_settings, legend, prepare_folder

from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.spec.summary import SearchSummary

ROOT = Path(__file__).resolve().parents[1]
ARMS: dict[str, dict[str, Any]] = {
    "learned": {"objective.floor_correction": "learned"},
    "slack": {"objective.floor_correction": "slack"},
    "learned-tighten": {"objective.floor_correction": "learned", "objective.tighten_step": 0.1},
}
DONE = ("summary.json", "model.onnx")


def search(config_values: dict[str, Any], args: argparse.Namespace, folder: Path,
           experience_from: Path | None) -> tuple[SearchSummary, bool]:
    """(the search's summary, whether it was reused): the search runs in folder/out with its
    experience in folder/experience, first copied from `experience_from` (the warm-up's)."""
    out, experience = folder / "out", folder / "experience"
    config = load_config(args.config, {**config_values, "search.experience": str(experience)})
    settings = {"config": config_settings(config), "experience_from": str(experience_from)}
    if experience_from is not None:
        settings["config"]["search"]["experience"] = "copied"  # the path differs per arm, the contents do not
    verdict = prepare_folder(folder, settings, tuple(f"out/{name}" for name in DONE))
    if verdict:
        return SearchSummary.model_validate_json((out / "summary.json").read_text()), True
    print(f"{folder}: {verdict.reason}: searching", flush=True)
    if experience_from is not None:
        shutil.rmtree(experience, ignore_errors=True)
        shutil.copytree(experience_from, experience)
        shutil.rmtree(out, ignore_errors=True)  # the copied experience is the warm-up's alone: start over
    return run_search(config, out, resume=(out / "episodes.jsonl").is_file()).summary, False


def judged_within(folder: Path) -> int:
    """Episodes the search itself judged within the floor (its reward's `feasible`)."""
    path = folder / "out" / "episodes.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("feasible"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml")
    parser.add_argument("--classes", default="0,3,7", help="the deployment's classes (comma-separated ids; 'all')")
    parser.add_argument("--within", type=float, default=1.0, help="accuracy floor: points below the restricted teacher")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--episodes", type=int, default=48, help="episodes of every search")
    parser.add_argument("--finalists", type=int, default=3, help="recovery.finalists of every search")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-floor-correction")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"error: --arms: unknown arm '{unknown[0]}': give some of {', '.join(ARMS)}")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    values: dict[str, Any] = {
        "tracking.enabled": False, "objective.kind": "accuracy", "objective.max_accuracy_drop": args.within,
        "search.episodes": args.episodes, "recovery.finalists": args.finalists,
    }
    if args.classes != "all":
        values["classes"] = [int(c) for c in args.classes.split(",")]
    for item in args.set:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    rows: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        seeded = {**values, "search.seed": seed}
        warmup = args.out / f"seed-{seed}" / "warmup"
        summary, _ = search({**seeded, "objective.floor_correction": "slack"}, args, warmup, None)
        print(f"seed {seed} warm-up: {summary.speedup:.2f}x, {summary.accuracy_drop:+.2f} pts", flush=True)
        for arm in arms:
            folder = args.out / f"seed-{seed}" / arm
            summary, reused = search({**seeded, **ARMS[arm]}, args, folder, warmup / "experience")
            floor = summary.accuracy_floor
            rows.append({
                "seed": seed, "arm": arm, "reused": reused,
                "judged_by": floor.judged_by if floor else "n/a", "finalists": floor.finalists if floor else 0,
                "judged_within": judged_within(folder), "episodes": summary.episodes,
                "speedup": summary.speedup, "accuracy_drop": summary.accuracy_drop,
                "met": summary.objective.met_at_final_measurement, "seconds": summary.total_seconds,
            })
            print(f"seed {seed} {arm}: {summary.speedup:.2f}x, {summary.accuracy_drop:+.2f} pts", flush=True)
    lines = table(rows, args, arms)
    print("\n" + "\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"settings": {**vars(args), "config": str(args.config),
                                                                    "out": str(args.out)}, "rows": rows}, indent=1))
    print(f"\n{time.perf_counter() - started:.0f} s in all; written: {args.out / 'table.md'}, {args.out / 'results.json'}")


def table(rows: list[dict[str, Any]], args: argparse.Namespace, arms: list[str]) -> list[str]:
    lines = [
        f"classes {args.classes}, floor {args.within:g} pt below the restricted teacher, {args.episodes} episodes, "
        f"{args.finalists} finalists per search",
        "",
        "| seed | arm | floor judged by | finalists fitted | episodes judged within | speedup | test acc drop (pts) | floor met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mark = f" {MARK}" if r["reused"] else ""
        lines.append(f"| {r['seed']}{mark} | {r['arm']} | {r['judged_by']} | {r['finalists']} | {r['judged_within']}/{r['episodes']} | "
                     f"{r['speedup']:.2f}x | {r['accuracy_drop']:+.2f} | {'yes' if r['met'] else 'no'} |")
    lines.append("")
    for arm in arms:
        speedups = [r["speedup"] for r in rows if r["arm"] == arm]
        met = sum(r["met"] for r in rows if r["arm"] == arm)
        spread = statistics.stdev(speedups) if len(speedups) > 1 else 0.0
        lines.append(f"- {arm}: mean speedup {statistics.fmean(speedups):.2f}x (sd {spread:.2f}), "
                     f"floor met {met}/{len(speedups)}")
    if any(r["reused"] for r in rows):
        lines.append(legend(str(args.out)))
    return lines


if __name__ == "__main__":
    one_line_errors(main)
