"""Benchmark: a deployment none of the experience has seen, searched with the experience of others.

Source deployments of the default model (ResNet-20 on digits) are searched first with random
search (every episode real), as a campaign's other deployments would have been; their episodes are
the experience. The held-out deployment differs from every source in class subset, budget and
device profile (--target: by default classes 1, 2, 4, 5, 6, 8, 9 under a 25% latency budget on
cpu-2t, or classes 1, 4, 9 under 40%; the sources: all classes at 30% and classes 0-4 at 50% on
cpu-1t, classes 0, 3, 7 under the accuracy objective on cpu-1t).

On the held-out deployment, per seed: random search for --episodes real episodes sets the target
(the mean over seeds of its best validation accuracy within the budget); then each
surrogate-assisted searcher, given the sources' experience (no seed episodes needed) and, for
comparison, without it (seed episodes out of its budget), runs --assisted-episodes real episodes.
Reported: the best after k = 3, 6, 12 real episodes and the real episodes each needed to reach
random's 48-episode best (mean over seeds), mean ± sd over seeds.

Every deployment has its own evaluator cache; within one, an architecture is measured once and
shared by every search of it (as in bench/searchers.py). Settings are written beside the results
(--out, JSON); nothing is reused from an earlier run.

Usage: python bench/held_out.py [--episodes 48] [--assisted-episodes 12] [--seeds 0,1,2]
       [--sources src-all-30,src-c01234-50,src-c037-accuracy] [--target c1245689-25-cpu2t] [--episode-steps 40]
       [--pretrain-episodes 600] [--round-episodes 60] [--config YAML]
       [--out runs/bench/held_out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from _cli import one_line_errors
from searchers import (
    DEFAULT_CONFIG,
    ROOT,
    Deployment,
    build_deployment,
    fmt,
    run_searcher,
    summarize_run,
)

from modeltailor.agent.surrogate_search import ExperienceView
from modeltailor.env.surrogate import Sample, sample_of
from modeltailor.experiments.search.experience import device_key

ACCURACY = {"objective": {"kind": "accuracy", "max_accuracy_drop": 1.0, "minimize": "latency"}}
SOURCES: dict[str, dict[str, Any]] = {
    "src-all-30": {"objective.max_latency_ratio": 0.30},
    "src-c01234-50": {"objective.max_latency_ratio": 0.50, "classes": [0, 1, 2, 3, 4]},
    "src-c037-accuracy": {"classes": [0, 3, 7], **ACCURACY},
}
TARGETS: dict[str, dict[str, Any]] = {
    "c1245689-25-cpu2t": {"objective.max_latency_ratio": 0.25, "classes": [1, 2, 4, 5, 6, 8, 9], "device.name": "cpu-2t"},
    "c149-40-cpu2t": {"objective.max_latency_ratio": 0.40, "classes": [1, 4, 9], "device.name": "cpu-2t"},
}
"""Held-out deployments, each unlike every source in classes, budget and device profile. The first
(7 classes at 25%) is the default; the second (3 classes at 40%) saturated once episodes measured
their models (random search reached 100% within 12 real episodes)."""
ASSISTED = ("ppo", "evolution-surrogate")
CHECKPOINTS = (3, 6, 12)


def experience_of(d: Deployment, records: list) -> list[Sample]:
    device = device_key(d.bench)
    classes = tuple(d.bench.classes) if d.bench.classes else None
    return [sample_of(r.policy, r.accuracy, r.latency_ms, r.memory_bytes, d.baseline, classes, device)
            for r in records if r.failure is None]


def reach(curve: list[float | None], target: float | None) -> int | None:
    """1-based real episode at which the best so far reached `target` (None: never, or no target)."""
    if target is None:
        return None
    return next((i + 1 for i, v in enumerate(curve) if v is not None and v >= target - 1e-9), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=48, help="real episodes of each source search and of random")
    parser.add_argument("--assisted-episodes", type=int, default=12)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sources", default=",".join(SOURCES), help="source deployments searched first")
    parser.add_argument("--episode-steps", type=int, default=None, help="distillation steps per episode (default 40)")
    parser.add_argument("--pretrain-episodes", type=int, default=None, help="search.surrogate.pretrain_episodes (600)")
    parser.add_argument("--round-episodes", type=int, default=None, help="search.surrogate.round_episodes (60)")
    parser.add_argument("--target", choices=list(TARGETS), default=next(iter(TARGETS)),
                        help="the held-out deployment (default: 7 classes at 25%% on cpu-2t)")
    parser.add_argument("--target-latency-ratio", type=float, default=None,
                        help="the held-out target's latency budget, a fraction of its baseline (default: the target's)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the deployment every deployment here overrides (default: examples/digits-resnet20.yaml)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "held_out.json")
    args = parser.parse_args()
    surrogate = {k: v for k, v in (("pretrain_episodes", args.pretrain_episodes),
                                    ("round_episodes", args.round_episodes)) if v is not None}
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    prior: list[Sample] = []
    for name in args.sources.split(","):
        overrides = SOURCES[name]
        d = build_deployment(name, overrides, args.episode_steps, args.config)
        records = run_searcher(d, "random", 0, args.episodes)
        prior += experience_of(d, records)
        print(f"source {name}: {len(records)} real episodes (random search), baseline {d.baseline.latency_ms:.3f} ms",
              flush=True)
    name, overrides = args.target, TARGETS[args.target]
    if args.target_latency_ratio is not None:
        overrides = {**overrides, "objective.max_latency_ratio": args.target_latency_ratio}
    target = build_deployment(name, overrides, args.episode_steps, args.config)
    classes = tuple(target.bench.classes) if target.bench.classes else None
    view = ExperienceView(tuple(prior), classes, target.bench.splits.num_classes, device_key(target.bench),
                          target.config.search.round_to)
    print(f"held out {name}: baseline val acc {target.baseline.accuracy:.4f}, {target.baseline.latency_ms:.3f} ms; "
          f"experience: {len(prior)} real episodes of the sources", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"random": []}
    for seed in seeds:
        run = summarize_run(target, run_searcher(target, "random", seed, args.episodes))
        runs["random"].append(run)
        print(f"  seed {seed} random best {run['best']}", flush=True)
    found = [r["best"] for r in runs["random"] if r["best"] is not None]
    goal = statistics.fmean(found) if found else None  # None: random found no model within the budget
    for sname in ASSISTED:
        for label, experience in ((f"{sname} + experience", view), (f"{sname} (no experience)", None)):
            runs[label] = []
            for seed in seeds:
                t0 = time.perf_counter()
                run = summarize_run(target, run_searcher(target, sname, seed, args.assisted_episodes, experience=experience,
                                                        surrogate=surrogate))
                run["seed"], run["seconds"], run["reached"] = seed, time.perf_counter() - t0, reach(run["curve"], goal)
                runs[label].append(run)
                print(f"  seed {seed} {label:<32} best {run['best']}  reached random's best at {run['reached']}  "
                      f"({run['seconds']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"sources": args.sources, "episodes": args.episodes, "assisted_episodes": args.assisted_episodes, "seeds": args.seeds,
                "surrogate": surrogate, "config": str(args.config),
                "episode_steps": target.config.recovery.episode_steps, "overrides": SOURCES, "target": [name, overrides]}
    args.out.write_text(json.dumps({"settings": settings, "goal": goal, "runs": runs,
                                    "seconds": time.perf_counter() - started}, indent=1))
    print()
    print(table(runs, goal, args.episodes))
    shown = "none within the budget" if goal is None else f"{100 * goal:.2f}%"
    print(f"\nrandom's {args.episodes}-episode best (mean over seeds {args.seeds}): {shown}; episode recovery "
          f"{target.config.recovery.episode_steps} steps; {time.perf_counter() - started:.0f} s in all")


def table(runs: dict[str, list[dict[str, Any]]], goal: float | None, episodes: int) -> str:
    lines = ["| searcher | " + " | ".join(f"best after {k}" for k in CHECKPOINTS)
             + f" | best after {episodes} | real episodes to random's {episodes}-episode best |",
             "| --- | " + " | ".join("---" for _ in CHECKPOINTS) + " | --- | --- |"]
    for label, group in runs.items():
        after = " | ".join(fmt([r["curve"][min(k, len(r["curve"])) - 1] for r in group], "budget") for k in CHECKPOINTS)
        final = fmt([r["best"] for r in group], "budget") if label == "random" else "-"
        reached = [r.get("reached") for r in group] if label != "random" else []
        shown = ", ".join("never" if x is None else str(x) for x in reached) if reached else "-"
        lines.append(f"| {label} | {after} | {final} | {shown} |")
    return "\n".join(lines)


if __name__ == "__main__":
    one_line_errors(main)
