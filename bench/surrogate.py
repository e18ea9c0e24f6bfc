"""Benchmark: how well the surrogate ranks policies it never saw, against the real episodes it saw.

Real episodes of the default deployment (ResNet-20 on digits, cpu-1t, all classes): random
policies from mild to aggressive (each unit's keep ratio drawn below a per-policy ceiling, a
skippable block removed with probability 0.2), compressed, recovered (--episode-steps), exported
and measured, as a search measures them. A fixed held-out set (--held-out policies) is set aside;
each regressor kind (Gaussian process, extremely randomized trees, MLP ensemble, additive) and the automatic
choice (`select_kind`, by cross-validated Kendall tau on the training samples alone) is fitted on
the first n of the rest, for n in --sizes, and scored on the held-out set: Kendall tau of the
predicted against the measured accuracy, and of the predicted against the measured latency, and
the median relative error of the latency. Repeated for each --seeds shuffle of the training pool;
mean ± sd over shuffles.

The measured episodes are written to --out (JSON, with the settings); nothing is read back from an
earlier run.

Usage: python bench/surrogate.py [--episodes 240] [--held-out 40] [--sizes 12,24,48,96,200]
       [--seeds 0,1,2] [--episode-steps 40] [--config YAML] [--out runs/bench/surrogate.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
from _cli import one_line_errors
from searchers import DEFAULT_CONFIG, ROOT, build_deployment

from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.env.surrogate import KINDS, PolicyEncoder, fit_surrogate, kendall_tau, sample_of


def random_policies(units, count: int, seed: int) -> list[Policy]:
    rng = np.random.default_rng(seed)
    policies = []
    for _ in range(count):
        top = rng.uniform(0.3, 1.0)
        actions = []
        for unit in units:
            if unit.block is not None and rng.random() < 0.2:
                actions.append(UnitAction(unit.name, method="skip", keep=0.0))
            else:
                actions.append(UnitAction(unit.name, keep=round(float(rng.uniform(0.2, top)), 4)))
        policies.append(Policy(tuple(actions)))
    return policies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=240, help="real episodes measured (held-out ones included)")
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--sizes", default="12,24,48,96,200")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episode-steps", type=int, default=None, help="distillation steps per episode (default 40)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the deployment measured (default: examples/digits-resnet20.yaml)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "surrogate.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    d = build_deployment("all", {}, args.episode_steps, args.config)
    units = d.bench.analysis.units
    policies = random_policies(units, args.episodes, seed=0)
    outcomes = []
    for i, policy in enumerate(policies):
        outcomes.append(d.bench.evaluator(policy))
        if (i + 1) % 20 == 0:
            print(f"  measured {i + 1}/{len(policies)} real episodes ({time.perf_counter() - started:.0f} s)", flush=True)
    samples = [sample_of(p, o.accuracy, o.latency_ms, o.memory_bytes, d.baseline, None, "cpu-1t")
               for p, o in zip(policies, outcomes, strict=True)]
    held, pool = samples[: args.held_out], samples[args.held_out :]
    truth_acc = np.array([d.baseline.accuracy - s.accuracy_drop for s in held])
    truth_lat = np.array([s.latency_ratio for s in held])
    encoder = PolicyEncoder(d.bench.analysis, d.bench.splits.num_classes, d.config.search.round_to)
    sizes = [int(n) for n in args.sizes.split(",") if int(n) <= len(pool)]
    rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    chosen: dict[int, list[str]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        order = np.random.default_rng(seed).permutation(len(pool))
        for n in sizes:
            train = [pool[i] for i in order[:n]]
            for kind in (*KINDS, "auto"):
                surrogate = fit_surrogate(train, encoder, kind=None if kind == "auto" else kind, seed=seed)
                if kind == "auto":
                    chosen.setdefault(n, []).append(surrogate.kind)
                predicted = surrogate.predict([s.policy for s in held], None, "cpu-1t", d.baseline)
                lat = predicted.latency_ms / d.baseline.latency_ms
                rows.setdefault((kind, n), []).append((
                    kendall_tau(truth_acc, predicted.accuracy), kendall_tau(truth_lat, lat),
                    float(np.median(np.abs(lat / truth_lat - 1))),
                ))
    print()
    print("| predictor | real episodes fitted on | accuracy Kendall tau (held out) | latency Kendall tau | latency median error |")
    print("| --- | --- | --- | --- | --- |")
    for (kind, n), values in rows.items():
        acc, lat, err = zip(*values, strict=True)
        label = f"auto (chose {', '.join(chosen[n])})" if kind == "auto" else kind
        print(f"| {label} | {n} | {_ms(acc)} | {_ms(lat)} | {100 * statistics.fmean(err):.1f}% |")
    print(f"\n{len(held)} held-out policies; ResNet-20 on digits, cpu-1t, all classes, "
          f"{d.config.recovery.episode_steps} distillation steps per episode; shuffles {args.seeds}; "
          f"{time.perf_counter() - started:.0f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "settings": {"episodes": args.episodes, "held_out": args.held_out, "sizes": sizes, "seeds": args.seeds,
                     "episode_steps": d.config.recovery.episode_steps},
        "episodes": [{"policy": p.to_dict(), "accuracy": o.accuracy, "latency_ms": o.latency_ms,
                      "memory_bytes": o.memory_bytes} for p, o in zip(policies, outcomes, strict=True)],
        "rows": [{"kind": k, "n": n, "tau_accuracy": [v[0] for v in vs], "tau_latency": [v[1] for v in vs]}
                 for (k, n), vs in rows.items()],
    }, indent=1))


def _ms(values: tuple[float, ...]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"


if __name__ == "__main__":
    one_line_errors(main)
