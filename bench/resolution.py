"""Benchmark: feature-map resolution (search.downsample 2) against channel pruning, at the speed each reaches.

On a deployment's teacher (default: examples/digits-resnet20.yaml, cpu-1t) builds each model at
full and at half resolution (the first convolution at twice its stride): the teacher, uniform
pruning at each of --keeps, and the most compressed model a search can reach (every unit at
search.min_keep, every skippable block removed). Each is recovered with the same --steps of
distillation from the full-resolution teacher (0: none), scored on the deployment's validation
sample, and every model is timed in --repeats alternating rounds on the device (past the latency
cache). Prints per model: MACs, parameters, latency, speedup over the teacher, accuracy and its
drop, so a lower resolution can be compared with pruning at equal speed. The teacher's row is the
teacher itself (no distillation).
Usage: python bench/resolution.py [--config examples/digits-resnet20.yaml] [--keeps 0.75,0.5,0.25]
       [--steps 400] [--repeats 10] [--set KEY=VALUE ...] [--out runs/bench-resolution]
Writes results.json (the settings: arguments and resolved config; every row) into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from _cli import one_line_errors

from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import count_params
from modeltailor.compressors.units import analyze_model
from modeltailor.experiments.search.objective import fastest_policy
from modeltailor.experiments.search.workbench import Workbench, build_workbench
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Built:
    label: str
    downsample: int
    macs: int
    params: int
    accuracy: float
    onnx: bytes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml")
    parser.add_argument("--keeps", default="0.75,0.5,0.25", help="uniform channel keep ratios (none: no uniform rows)")
    parser.add_argument("--most-compressed", action=argparse.BooleanOptionalAction, default=True,
                        help="the most compressed model a search can reach, at both resolutions")
    parser.add_argument("--steps", type=int, default=400, help="distillation steps for every model (0: none)")
    parser.add_argument("--repeats", type=int, default=10, help="alternating timing rounds")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-resolution")
    args = parser.parse_args()
    if args.steps < 0 or args.repeats < 1:
        raise SystemExit("--steps must be 0 or more and --repeats at least 1")
    try:
        args.keep_ratios = [] if args.keeps == "none" else [float(k) for k in args.keeps.split(",")]
    except ValueError:
        raise SystemExit(f"--keeps {args.keeps!r}: give comma-separated ratios in (0, 1], e.g. 0.75,0.5") from None
    if not all(0 < k <= 1 for k in args.keep_ratios):
        raise SystemExit(f"--keeps {args.keeps!r}: every ratio must be in (0, 1]")
    return args


def build(bench: Workbench, label: str, policy: Policy, steps: int) -> Built:
    """`policy`'s model recovered with `steps` of distillation (the teacher itself: none), scored on
    the validation sample."""
    evaluator = bench.evaluator
    teacher = policy.downsample == 1 and all(a.method == "prune" and a.keep == 1.0 for a in policy.actions)
    recover = steps > 0 and not teacher
    model = evaluator.build(policy, replace(evaluator.recovery, steps=steps)) if recover else evaluator.compress(policy)
    onnx = evaluator.export(model, None)
    accuracy = evaluator.score(model, onnx, quantized=False)
    macs = analyze_model(model, evaluator.example).total_macs
    return Built(label, policy.downsample, macs, count_params(model), accuracy, onnx)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    overrides = {"tracking.enabled": False, "search.downsample": 1}
    overrides.update({k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)})
    config = load_config(args.config, overrides)
    bench = build_workbench(config, report=lambda m: print(m, flush=True))
    units = [u.name for u in bench.analysis.units]
    policies = {"teacher": Policy.uniform(units, 1.0)}
    policies.update({f"uniform {k:g}": Policy(tuple(UnitAction(u, keep=k) for u in units)) for k in args.keep_ratios})
    if args.most_compressed:
        policies["most compressed"] = fastest_policy(bench, config.search.min_keep, config.search.skip_blocks)
    built: list[Built] = []
    for label, policy in policies.items():
        for factor in (1, 2):
            print(f"building {label}, downsample {factor} ({args.steps} distillation steps) ...", flush=True)
            built.append(build(bench, label, replace(policy, downsample=factor), args.steps))
    print(f"timing {len(built)} models in {args.repeats} alternating rounds ...", flush=True)
    measured = bench.device.measure_alternately({i: b.onnx for i, b in enumerate(built)}, repeats=args.repeats)
    teacher = built[0]
    base_ms = measured[0].latency.median_ms
    classes = f"classes {config.classes}" if config.classes else "all classes"
    print(f"\n{config.model.name} on {config.data.name} ({classes}), device {config.device.name}, {args.steps} "
          f"distillation steps each (the teacher none), accuracy on {len(bench.evaluator.data.score_y)} validation images, {args.repeats} "
          f"alternating rounds; {time.perf_counter() - started:.0f} s in all\n")
    print("| model | downsample | MMACs | params k | latency ms | speedup | accuracy | drop (pt) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for i, b in enumerate(built):
        ms = measured[i].latency.median_ms
        print(f"| {b.label} | {b.downsample} | {b.macs / 1e6:.2f} | {b.params / 1e3:.1f} | {ms:.3f} | "
              f"{base_ms / ms:.2f}x | {100 * b.accuracy:.2f} | {100 * (teacher.accuracy - b.accuracy):+.2f} |")
        rows.append({"model": b.label, "downsample": b.downsample, "macs": b.macs, "params": b.params,
                     "latency_ms": ms, "speedup": base_ms / ms, "accuracy": b.accuracy})
    settings = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "config": config.model_dump(mode="json")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(f"\nwritten: {args.out / 'results.json'}")


if __name__ == "__main__":
    one_line_errors(main)
