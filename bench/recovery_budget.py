"""Benchmark: does a search's short per-episode recovery rank policies the way the long one does?

A search scores every policy after a short distillation (`recovery.episode_steps`) on a sample of
the validation split (`recovery.val_samples`); its finalists get the long distillation
(`recovery.final_steps`). The short score only has to *rank* candidates like the long one. This
draws distinct policies the way a search's episodes do (random actions through the deployment's
env, under its latency budget), recovers each with every short budget and with the long one, and
prints Spearman's rho and Kendall's tau between each short score and the long score (on the whole
val split), whether each short budget's top pick is among the long recovery's top 3, and the time
per episode of each budget (distillation + scoring), measured here.
Usage: python bench/recovery_budget.py [--config examples/cifar10-resnet20.yaml] [--policies 12]
[--steps 0 20 40 80] [--val-samples 1000 2000 0] (0 = the whole val split)
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from _cli import one_line_errors
from scipy.stats import kendalltau, spearmanr

from modeltailor.compressors.distill import distill, predict_logits, recalibrate_batchnorm
from modeltailor.compressors.policy import Policy
from modeltailor.env.evaluator import PolicyEvaluator, architecture_key
from modeltailor.env.records import Outcome
from modeltailor.env.reward import Resources
from modeltailor.experiments.search.objective import build_env, make_reward
from modeltailor.experiments.search.workbench import (
    build_workbench,
    recovery_config,
    scoring_sample,
)
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Recorder:
    """An evaluator that keeps each distinct policy and measures it without recovery (latency only
    matters here: it steers the env's budget limiter as in a search)."""

    inner: PolicyEvaluator
    policies: list[Policy] = field(default_factory=list)
    seen: dict[tuple, Outcome] = field(default_factory=dict)

    def __call__(self, policy: Policy) -> Outcome:
        model = self.inner.compress(policy)
        key = architecture_key(model)
        if key in self.seen:
            return replace(self.seen[key], cached=True, seconds=0.0)
        self.policies.append(policy)
        self.seen[key] = self.inner.measure(model, policy=policy)
        return self.seen[key]


def sample_policies(env, recorder: Recorder, count: int, seed: int) -> list[Policy]:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    episode = 0
    while len(recorder.policies) < count and episode < 20 * count:
        env.reset(seed=seed + episode)
        for _ in env.units:
            env.step(rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32))
        episode += 1
    return recorder.policies[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "cifar10-resnet20.yaml")
    parser.add_argument("--policies", type=int, default=12)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 20, 40, 80])
    parser.add_argument("--val-samples", type=int, nargs="+", default=[1000, 2000, 0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, {"tracking.enabled": False, "recovery.val_samples": None})
    bench = build_workbench(cfg, report=lambda message: print(message, flush=True))
    base = Resources(bench.baseline.accuracy, bench.baseline.latency_ms, bench.baseline.memory_bytes)
    recorder = Recorder(bench.evaluator)
    env = build_env(bench, make_reward(cfg, base), base)
    env.evaluator = recorder  # type: ignore[assignment]
    policies = sample_policies(env, recorder, args.policies, args.seed)
    val_x, val_y = bench.evaluator.data.score_x, bench.evaluator.data.score_y
    short, long = recovery_config(cfg), recovery_config(cfg, final=True)
    print(
        f"{len(policies)} distinct policies under the {cfg.objective.max_latency_ratio} latency budget; "
        f"baseline val accuracy {base.accuracy:.4f} on {len(val_y)} images; short lr {short.lr}, "
        f"long {long.steps} steps at lr {long.lr}, batch {short.batch_size}, {short.precision} on {short.device}",
        flush=True,
    )
    samples = [n if n > 0 else len(val_y) for n in args.val_samples]
    subsets = {n: scoring_sample(val_x, val_y, n, cfg.data.seed) for n in samples}
    scores: dict[tuple[int, int], list[float]] = {(s, n): [] for s in args.steps for n in samples}
    seconds: dict[tuple[int, int], list[float]] = {(s, n): [] for s in args.steps for n in samples}
    final: list[float] = []
    for i, policy in enumerate(policies):
        compressed = bench.evaluator.compress(policy)
        for steps in args.steps:
            started = time.perf_counter()
            student = copy.deepcopy(compressed)
            recalibrate_batchnorm(student, bench.evaluator.data.train_x)
            distill(student, bench.evaluator.teacher_logits, bench.evaluator.data.train_y, replace(short, steps=steps))
            trained = time.perf_counter() - started
            for n, (x, y) in subsets.items():
                started = time.perf_counter()
                predicted = predict_logits(student, x).argmax(1)
                scores[(steps, n)].append(float((predicted == y).float().mean()))
                seconds[(steps, n)].append(trained + time.perf_counter() - started)
        student = copy.deepcopy(compressed)
        recalibrate_batchnorm(student, bench.evaluator.data.train_x)
        distill(student, bench.evaluator.teacher_logits, bench.evaluator.data.train_y, long)
        final.append(float((predict_logits(student, val_x).argmax(1) == val_y).float().mean()))
        print(
            f"policy {i + 1}/{len(policies)}: long {final[-1]:.4f}; short "
            + " ".join(f"{s}:{scores[(s, samples[-1])][-1]:.4f}" for s in args.steps)
            + f"; {len(policy.skipped())} blocks skipped",
            flush=True,
        )
    top3 = set(np.argsort(final)[-3:])
    print(f"\n{'steps':>5} {'val imgs':>8} {'spearman':>8} {'kendall':>8} {'top in long top3':>16} {'s/episode':>9}")
    for (steps, n), values in scores.items():
        rho = spearmanr(values, final).statistic
        tau = kendalltau(values, final).statistic
        hit = "yes" if int(np.argmax(values)) in top3 else "no"
        print(f"{steps:>5} {n:>8} {rho:>8.3f} {tau:>8.3f} {hit:>16} {np.median(seconds[(steps, n)]):>9.2f}")
    print(f"long recovery val accuracy: min {min(final):.4f}, median {np.median(final):.4f}, max {max(final):.4f}")


if __name__ == "__main__":
    one_line_errors(main)
