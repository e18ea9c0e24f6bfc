"""Benchmark: how much an episode's accuracy says about its policy, with and without BatchNorm
statistics re-estimated after the episode's recovery.

Random policies of the deployment (bench/surrogate.py's sampler: each unit's keep ratio drawn below
a per-policy ceiling, a skippable block removed with probability 0.2) are compressed and recovered
as an episode recovers them (--episode-steps distillation steps from the teacher's logits), once
per recovery seed (--seeds), in two arms side by side:

- left by the training: the BatchNorm running statistics the recovery's training left (an average
  over its last steps, of weights that were still moving), as episodes were scored until 2026-12-03;
- re-estimated at the final weights (`DistillConfig.recalibrate`, the default since).

Per arm it prints the mean pairwise Kendall tau of the policies' accuracies between seeds (how
repeatably an episode ranks policies: a surrogate fitted on episodes cannot rank held-out ones
better than this), their mean absolute difference in points, and the mean accuracy. With
--final-steps N (default: the deployment's `recovery.final_steps`; 0 skips it), each policy is also
recovered as a finalist is (N steps at the final learning rate, seed 0) and each arm's episode
accuracy is ranked against that long recovery's: how well an episode predicts what a finalist gets.
Accuracy is on the deployment's scoring split, in torch (no export or timing: nothing here is timed).

Usage: python bench/episode_noise.py [--policies 40] [--seeds 0,1,2] [--episode-steps 20]
       [--final-steps N] [--config YAML] [--out runs/bench/episode-noise.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _cli import one_line_errors
from searchers import DEFAULT_CONFIG, ROOT, build_deployment
from surrogate import random_policies

from modeltailor.compressors.distill import DistillConfig
from modeltailor.env.surrogate import kendall_tau
from modeltailor.experiments.search.workbench import recovery_config

ARMS = {"left by the training": False, "re-estimated at the final weights": True}
"""Arm name -> `DistillConfig.recalibrate`."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2", help="recovery seeds (at least 2)")
    parser.add_argument("--episode-steps", type=int, default=None, help="distillation steps per episode (default: the config's)")
    parser.add_argument("--final-steps", type=int, default=None,
                        help="a finalist's recovery to rank against (default: the config's; 0: none)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the deployment (default: examples/digits-resnet20.yaml)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "episode-noise.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2 or args.policies < 2:
        parser.error("--seeds needs at least 2 seeds and --policies at least 2")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    d = build_deployment("all", {}, args.episode_steps, args.config)
    evaluator = d.bench.evaluator
    policies = random_policies(evaluator.analysis.units, args.policies, seed=0)

    def scored(recovery: DistillConfig) -> np.ndarray:
        return np.array([evaluator.score(evaluator.build(p, recovery), b"", False) for p in policies])

    accuracies: dict[str, list[np.ndarray]] = {}
    for arm, recalibrate in ARMS.items():
        for seed in seeds:
            accuracies.setdefault(arm, []).append(scored(replace(evaluator.recovery, seed=seed, recalibrate=recalibrate)))
            print(f"  {arm}, seed {seed}: {len(policies)} episodes ({time.perf_counter() - started:.0f} s)", flush=True)
    final_steps = d.config.recovery.final_steps if args.final_steps is None else args.final_steps
    final = None
    if final_steps > 0:
        final = scored(replace(recovery_config(d.config, final=True), steps=final_steps, seed=0))
        print(f"  long recovery ({final_steps} steps): {len(policies)} models ({time.perf_counter() - started:.0f} s)")

    rows = {}
    for arm, runs in accuracies.items():
        pairs = list(itertools.combinations(runs, 2))
        rows[arm] = {
            "tau_between_seeds": statistics.fmean(kendall_tau(a, b) for a, b in pairs),
            "mean_abs_diff_points": 100 * statistics.fmean(float(np.abs(a - b).mean()) for a, b in pairs),
            "mean_accuracy": 100 * float(np.mean(runs)),
            "tau_vs_long_recovery": None if final is None else statistics.fmean(kendall_tau(a, final) for a in runs),
        }
    steps = d.config.recovery.episode_steps
    print()
    against = f"a {final_steps}-step recovery" if final_steps > 0 else "a long recovery (not run)"
    print("| BatchNorm statistics | Kendall tau between seeds | mean abs difference | mean accuracy "
          f"| Kendall tau vs {against} |")
    print("| --- | --- | --- | --- | --- |")
    for arm, row in rows.items():
        against = "-" if row["tau_vs_long_recovery"] is None else f"{row['tau_vs_long_recovery']:.3f}"
        print(f"| {arm} | {row['tau_between_seeds']:.3f} | {row['mean_abs_diff_points']:.1f} pts "
              f"| {row['mean_accuracy']:.1f}% | {against} |")
    if final is not None:
        print(f"\nlong recovery: mean accuracy {100 * final.mean():.1f}%")
    print(f"\n{len(policies)} random policies of {d.config.name} ({d.config.model.name} on {d.config.data.name}), "
          f"{steps} distillation steps per episode, recovery seeds {args.seeds}; {time.perf_counter() - started:.0f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "settings": {"config": str(args.config), "policies": len(policies), "seeds": seeds, "episode_steps": steps,
                     "final_steps": final_steps},
        "rows": rows,
        "accuracies": {arm: [a.tolist() for a in runs] for arm, runs in accuracies.items()},
        "long_recovery": None if final is None else final.tolist(),
    }, indent=1))


if __name__ == "__main__":
    one_line_errors(main)
