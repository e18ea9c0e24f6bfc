"""Benchmark: PPO vs random vs uniform search on the default deployment, same env and budget.

Prints, per searcher, the best policy found under the latency budget (validation accuracy after the
episode's short recovery, measured latency), how many episodes met the budget, and the wall time.
Usage: python bench/search_default.py [--episodes 48] [--config examples/digits-resnet20.yaml]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from _cli import one_line_errors

from modeltailor.agent import make_searcher
from modeltailor.env.reward import Resources
from modeltailor.experiments.search.objective import build_env, make_reward
from modeltailor.experiments.search.workbench import build_workbench
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--searchers", default="ppo,random,uniform")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, {"tracking.enabled": False})
    bench = build_workbench(cfg, print)
    base = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    reward = make_reward(cfg, base)
    print(f"baseline: val acc {base.accuracy:.4f}, {base.latency_ms:.3f} ms, budget {reward}")
    print(f"{'searcher':<9} {'best val acc':>12} {'latency ms':>10} {'speedup':>8} {'feasible':>9} {'seconds':>8}")
    for name in args.searchers.split(","):
        bench.evaluator.cache.clear()  # each searcher pays for its own evaluations
        env = build_env(bench, reward, base)
        started = time.perf_counter()
        result = make_searcher(name, cfg.search.seed).search(env, args.episodes)
        seconds = time.perf_counter() - started
        best = result.best
        feasible = sum(r.feasible for r in result.episodes)
        print(
            f"{name:<9} {best.accuracy:>12.4f} {best.latency_ms:>10.3f} "
            f"{base.latency_ms / best.latency_ms:>7.2f}x {feasible:>4}/{len(result.episodes):<4} {seconds:>8.0f}"
        )


if __name__ == "__main__":
    one_line_errors(main)
