"""Benchmark: joint policies (prune + skip + low-rank + int8) vs pruning-only, same budgets.

For each latency budget (a fraction of the baseline's), runs the same search twice on the default
deployment (ResNet-20 on digits, cpu-1t) with the same episode budget, once with
`search.methods: [prune]` and once with `[prune, lowrank, int8]` (block skipping on in both), and
prints what each chose: test accuracy after the final distillation, measured latency, memory.
Usage: python bench/joint_vs_prune.py [--episodes 24] [--budgets 0.5,0.3] [--out runs/bench-joint]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from _cli import one_line_errors

from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"prune-only": ["prune"], "joint": ["prune", "lowrank", "int8"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--budgets", default="0.5,0.3")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-joint"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    header = (
        f"{'budget':>6} {'variant':<11} {'test acc':>8} {'base acc':>8} {'latency ms':>10} {'(p90)':>6} "
        f"{'budget ms':>9} {'in':>3} {'speedup':>7} {'memory MB':>9} methods"
    )
    rows = [header]
    for budget in (float(b) for b in args.budgets.split(",")):
        for name, methods in VARIANTS.items():
            overrides = {
                "objective.max_latency_ratio": budget, "search.methods": methods,
                "search.episodes": args.episodes, "recovery.finalists": 2, "tracking.enabled": False,
            }
            cfg = load_config(args.config, overrides)
            s = run_search(cfg, args.out / f"{name}-{budget}").summary
            budget_ms = budget * s.baseline.latency_ms
            within = "yes" if s.best.latency_ms <= budget_ms else "NO"
            rows.append(
                f"{budget:>6.2f} {name:<11} {s.best.accuracy:>8.4f} {s.baseline.accuracy:>8.4f} "
                f"{s.best.latency_ms:>10.3f} {s.best.latency_p90_ms:>6.3f} {budget_ms:>9.3f} {within:>3} "
                f"{s.speedup:>6.2f}x {s.best.memory_bytes / 1e6:>9.3f} {','.join(s.methods)}"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    one_line_errors(main)
