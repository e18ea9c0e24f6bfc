"""Benchmark: how often a budgeted search's episodes meet the latency budget, old limiter vs new.

Old: the AMC cap on a line of latency in total MACs seeded by the baseline and the most compressed
model, kept within budget * 0.97. New: `build_limiter`'s (per-stage padded-MACs/activations
predictor with rounded channels, calibrated on random policies, margin from its own leave-one-out
errors). Both play the same random actions (episode i draws from seed + i) through the env,
alternating old/new per episode so that both share the machine's load, each with its own
evaluator that compresses, exports and measures WITHOUT recovery: accuracy does not bear on
feasibility, which depends on the architecture alone. Each limiter refits on its own fresh
measurements, as in a search. Every model, the baseline included, is timed afresh on the
deployment's device, past its latency cache; --cached times through the persistent latency cache
instead, as a search does (timings from earlier runs on this host reused), and the output says so.

Prints, per limiter: episodes within the budget, latency / budget (median, p10, p90), and the
limiter's prediction error on each episode before it refits on it (median |predicted / measured - 1|
and the median signed error).
Usage: python bench/feasibility.py [--config examples/digits-resnet20.yaml] [--episodes 24]
[--ratio 0.45 0.3] [--cached]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from _cli import one_line_errors

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.policy import Policy
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.cost_model import LinearCostModel
from modeltailor.env.evaluator import PolicyEvaluator, architecture_key
from modeltailor.env.limiter import Budget, BudgetLimiter
from modeltailor.env.records import Outcome
from modeltailor.env.reward import Resources
from modeltailor.experiments.search.objective import (
    build_env,
    make_reward,
    measure_fastest,
    objective_budget,
)
from modeltailor.experiments.search.workbench import Workbench, build_workbench
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class UnrecoveredEvaluator:
    """Compress + export + measure, no recovery; remembers the limiter's prediction of each policy
    (taken before the limiter refits on it) and caches outcomes by architecture like a search."""

    inner: PolicyEvaluator
    limiter: BudgetLimiter
    predicted: list[float] = field(default_factory=list)
    cache: dict[tuple, Outcome] = field(default_factory=dict)

    def __call__(self, policy: Policy) -> Outcome:
        analysis = self.inner.analysis
        self.predicted.append(self.limiter.predicted_latency(analysis, policy.keep_ratios(), policy.lowrank_ratios()))
        model = self.inner.compress(policy)
        key = architecture_key(model)
        if key in self.cache:
            return replace(self.cache[key], cached=True, seconds=0.0)
        outcome = self.inner.measure(model, policy=policy)
        self.cache[key] = outcome
        return outcome


def old_limiter(bench: Workbench, budget: Budget) -> BudgetLimiter:
    """The limiter before the stage predictor: MACs lines seeded by the baseline and the fastest model."""
    fastest = measure_fastest(bench)
    latency, memory = LinearCostModel(), LinearCostModel()
    for outcome in (bench.baseline, fastest):
        latency.add(outcome.macs, outcome.latency_ms)
        memory.add(outcome.params, outcome.memory_bytes)
    return BudgetLimiter(budget, latency, memory)


def with_limiter(env: CompressionEnv, limiter: BudgetLimiter, evaluator: UnrecoveredEvaluator) -> CompressionEnv:
    """An env like `env` (same units, range, reward) with another limiter and evaluator."""
    return CompressionEnv(
        analysis=env.analysis, evaluator=evaluator, reward=env.reward_fn, baseline=env.baseline,
        action_range=env.range, limiter=limiter, class_fraction=env.class_fraction,
        lowrank_units=env.lowrank_units, int8=env.int8, context=env.context,
    )


def play(env: CompressionEnv, seed: int) -> float:
    """One episode of uniform random actions drawn from `seed`; the measured latency (ms)."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    info: dict = {}
    for _ in env.units:
        action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        *_, info = env.step(action)
    return float(info["latency_ms"])


def summarize(name: str, latencies: list[float], predicted: list[float], budget: float, cached: int) -> str:
    ratio = np.array(latencies) / budget
    error = np.array(predicted) / np.array(latencies) - 1.0
    within = int(np.sum(ratio <= 1.0))
    p10, p50, p90 = np.quantile(ratio, [0.1, 0.5, 0.9])
    return (
        f"{name:<4} {within:>3}/{len(ratio):<3} ({within / len(ratio):>4.0%})  {p50:>6.3f} {p10:>6.3f} {p90:>6.3f} "
        f"{ratio.max():>6.3f}  "
        f"{np.median(np.abs(error)):>9.1%} {np.median(error):>+9.1%}  {cached:>6}"
    )


def run_ratio(bench: Workbench, config: Path, ratio: float, episodes: int, seed: int) -> None:
    cfg = load_config(config, {"tracking.enabled": False, "objective.max_latency_ratio": ratio})
    bench = replace(bench, config=cfg)
    base = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    budget = objective_budget(cfg, base)
    assert budget is not None and budget.max_latency_ms is not None, "the config's objective must be a latency budget"
    started = time.perf_counter()
    env = build_env(bench, make_reward(cfg, base), base)  # the new limiter, calibrated as a search does
    calibration_s = time.perf_counter() - started
    new = env.limiter
    assert isinstance(new, BudgetLimiter) and new.predictor is not None
    p = new.predictor
    calibrated = (len(p.points), p.pad, p.stages, p.margin)
    limiters = {"old": old_limiter(bench, budget), "new": new}
    evaluators = {name: UnrecoveredEvaluator(bench.evaluator, lim) for name, lim in limiters.items()}
    envs = {name: with_limiter(env, lim, evaluators[name]) for name, lim in limiters.items()}
    latencies: dict[str, list[float]] = {name: [] for name in limiters}
    for episode in range(episodes):
        for name in limiters:  # alternate: old, new, old, new, ...
            latencies[name].append(play(envs[name], seed + episode))
    print(
        f"\nratio {ratio}: budget {budget.max_latency_ms:.4f} ms (baseline {base.latency_ms:.4f} ms); old: "
        f"MACs line on baseline + fastest, safety {limiters['old'].safety}; new: calibrated in "
        f"{calibration_s:.1f} s on {calibrated[0]} points (baseline, fastest, random policies): pad "
        f"{calibrated[1]}, {calibrated[2]} stages, margin {calibrated[3]:.1%}; after the episodes: "
        f"{len(p.points)} points, pad {p.pad}, {p.stages} stages, margin {p.margin:.1%}"
    )
    print(f"{'':<4} {'within budget':>13}  {'latency / budget':>27}  {'|pred err|':>9} {'pred err':>9}  {'cached':>6}")
    print(f"{'':<4} {'':>13}  {'median':>6} {'p10':>6} {'p90':>6} {'max':>6}  {'median':>9} {'median':>9}")
    for name in limiters:
        history = envs[name].history
        print(summarize(name, latencies[name], evaluators[name].predicted, budget.max_latency_ms,
                        sum(r.cached for r in history)))


def uncached(bench: Workbench) -> Workbench:
    """The workbench with its device past the latency cache and its baseline timed again."""
    device = bench.device.uncached()
    evaluator = replace(bench.evaluator, device=device, cache={})
    timed = device.measure(export_onnx(bench.teacher, bench.input_shape[1:]))
    return replace(bench, device=device, evaluator=evaluator, baseline=replace(bench.baseline, measurement=timed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml")
    parser.add_argument("--episodes", type=int, default=24, help="episodes per limiter and ratio")
    parser.add_argument("--ratio", type=float, nargs="*", default=None,
                        help="latency budget ratios to try (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="episode i plays random actions from seed + i")
    parser.add_argument("--cached", action="store_true",
                        help="time through the persistent latency cache, as a search does: timings of earlier runs "
                             "on this host are reused (default: every model timed afresh, the baseline too)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, {"tracking.enabled": False})
    bench = build_workbench(cfg, lambda _message: None)
    if not args.cached:
        bench = uncached(bench)
    ratios = args.ratio or [cfg.objective.max_latency_ratio or 0.45]
    s = cfg.search
    print(
        f"config {args.config.name}: model {cfg.model.name}, data {cfg.data.name}, device {cfg.device.name}; "
        f"min_keep {s.min_keep}, round_to {s.round_to}, skip_blocks {s.skip_blocks}, methods {','.join(s.methods)}; "
        f"{args.episodes} episodes per limiter and ratio, ratios {ratios}, seed {args.seed}; "
        f"latencies {'through the persistent latency cache (--cached: earlier runs reused)' if args.cached else 'timed afresh'}"
    )
    print("evaluator: compress + export + measure, NO recovery (accuracy is irrelevant to feasibility)")
    for ratio in ratios:
        run_ratio(bench, args.config, ratio, args.episodes, args.seed)


if __name__ == "__main__":
    one_line_errors(main)
