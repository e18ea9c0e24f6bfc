"""Benchmark: class-aware compression against class-agnostic, on one class subset.

For a class-subset deployment (default: automobile/ship/truck on examples/cifar10-resnet20.yaml),
the teacher is pruned to the same widths (each unit to --keeps, uniform) in several ways, each
pruned model gets the same recovery (--steps distillation steps, once per seed), and each is
scored on the subset's test images, predicting among the subset's classes only:

- class-agnostic: channels ranked by the activation criterion (mean post-activation) on training
  images of every class; distilled on every class's training images against all the teacher's
  logits; the head narrowed to the subset afterwards;
- ranked on the subset: the ranking on the subset's images, the recovery class-agnostic;
- distilled on the subset: the ranking on every class, the recovery on the subset's images
  against the teacher's logits restricted to its columns (what a search's recovery does);
- class-aware: both on the subset (a search with `search.importance: activation`);
- l2: weight magnitude (no data: the default `search.importance`), distilled on the subset.

Every variant of one keep ratio has the same number of channels per layer, so the same MACs,
parameters and latency: only which channels survive and what the recovery sees differ. The table
gives each variant's test accuracy (mean ± sd over seeds) and its difference from class-agnostic.
Usage: python bench/class_aware.py [--config examples/cifar10-resnet20.yaml] [--data PATH]
       [--subset auto-ship-truck] [--keeps 0.5,0.3] [--seeds 0,1] [--steps 500] [--set KEY=VALUE ...]
       [--out runs/bench-class-aware]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from _cli import one_line_errors
from _settings import deployment_settings
from cifar10 import cifar10_parser, deployment  # bench/cifar10.py, beside this file
from subsets import SUBSETS
from torch import nn

from modeltailor.compressors.distill import TeacherLogits, accuracy, distill, recalibrate_batchnorm
from modeltailor.compressors.head import narrow_classifier
from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import ChannelPruningCompressor, count_params
from modeltailor.compressors.units import analyze_model
from modeltailor.experiments.search.workbench import (
    IMPORTANCE_SAMPLES,
    Workbench,
    build_workbench,
    load_deployment_data,
    recovery_config,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    name: str
    importance: str
    ranked_on: str  # "all", "subset" or "-" (l2: no data)
    distilled_on: str  # "all" or "subset"


VARIANTS = (
    Variant("class-agnostic", "activation", "all", "all"),
    Variant("ranked on the subset", "activation", "subset", "all"),
    Variant("distilled on the subset", "activation", "all", "subset"),
    Variant("class-aware", "activation", "subset", "subset"),
    Variant("l2, distilled on the subset", "l2", "-", "subset"),
)


def parse_args() -> argparse.Namespace:
    parser = cifar10_parser(__doc__)
    parser.add_argument("--subset", default="auto-ship-truck",
                        help=f"one of {', '.join(s for s in SUBSETS if s != 'all')}")
    parser.add_argument("--keeps", default="0.5,0.3", help="uniform keep ratios, comma-separated, each in (0, 1)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=500, help="distillation steps of every recovery")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. recovery.batch_size=64")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-class-aware")
    args = parser.parse_args()
    args.episodes = None  # cifar10.deployment reads it: no search here
    if SUBSETS.get(args.subset) is None:
        raise SystemExit(f"--subset: '{args.subset}' is not a class subset: choose from "
                         f"{', '.join(s for s in SUBSETS if s != 'all')}")
    try:
        args.keep_list = [float(k) for k in args.keeps.split(",")]
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--keeps/--seeds: '{args.keeps}' / '{args.seeds}' are not comma-separated numbers") from None
    if not all(0.0 < k < 1.0 for k in args.keep_list):
        raise SystemExit(f"--keeps: each keep ratio must be in (0, 1), got {args.keeps}")
    if args.steps < 1:
        raise SystemExit(f"--steps: must be at least 1, got {args.steps}")
    return args


@dataclass
class Recovery:
    """One side of the recovery: the images, their labels in the model's output space, the
    teacher's logits on them."""

    x: torch.Tensor
    y: torch.Tensor
    logits: TeacherLogits


def recover_and_score(student: nn.Module, side: Recovery, bench: Workbench, narrow: bool, steps: int,
                      seed: int) -> float:
    recovery = replace(recovery_config(bench.config, final=True), steps=steps, seed=seed)
    recalibrate_batchnorm(student, side.x)
    distill(student, side.logits, side.y, recovery)
    if narrow:  # recovered with every class's outputs: narrow the head to the subset, as shipped
        student = narrow_classifier(student, bench.output_classes, bench.example)
    return accuracy(student.eval(), *bench.labels("test"))


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    config = deployment(args, classes=SUBSETS[args.subset])
    bench = build_workbench(config, report=lambda m: print(m, flush=True))
    full, _, _ = load_deployment_data(config)
    all_x, all_y = full.train.tensors
    sub_x, sub_y = bench.evaluator.data.train_x, bench.evaluator.data.train_y
    print(f"teacher logits on {len(all_x)} training images of every class and {len(sub_x)} of the subset", flush=True)
    sides = {"all": Recovery(all_x, all_y, TeacherLogits(bench.teacher, all_x)),
             "subset": Recovery(sub_x, sub_y, bench.evaluator.teacher_logits)}
    calibration = {"all": (all_x[:IMPORTANCE_SAMPLES], all_y[:IMPORTANCE_SAMPLES]),
                   "subset": (sub_x[:IMPORTANCE_SAMPLES], sub_y[:IMPORTANCE_SAMPLES])}
    units = sorted(bench.units_for("prune"))
    teacher_acc = bench.test_accuracy(bench.base)
    rows: list[dict] = []
    for keep in args.keep_list:
        policy = Policy.uniform(units, keep)
        for v in VARIANTS:
            data = calibration[v.ranked_on] if v.ranked_on != "-" else None
            pruner = ChannelPruningCompressor(v.importance, bench.config.search.round_to, calibration=data)
            narrow = v.distilled_on == "all"
            pruned = pruner.apply(bench.teacher if narrow else bench.base, policy, bench.example)
            shipped = narrow_classifier(pruned, bench.output_classes, bench.example) if narrow else pruned
            macs, params = analyze_model(shipped, bench.example).total_macs, count_params(shipped)
            accuracies = []
            for seed in args.seed_list:
                accuracies.append(recover_and_score(copy.deepcopy(pruned), sides[v.distilled_on], bench, narrow,
                                                    args.steps, seed))
            rows.append({"keep": keep, "variant": v.name, "importance": v.importance, "ranked_on": v.ranked_on,
                         "distilled_on": v.distilled_on, "macs": macs, "params": params, "accuracies": accuracies})
            print(f"keep {keep:g}, {v.name}: test {statistics.fmean(accuracies):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{config.model.name} on {config.data.name}, subset {args.subset} ({len(bench.output_classes)} classes, "
          f"teacher {100 * teacher_acc:.2f}% on its test images), uniform keep {args.keeps}, {args.steps} "
          f"distillation steps, seeds {args.seeds}; {time.perf_counter() - started:.0f} s in all\n")
    lines = ["| keep | variant | ranked on | distilled on | MMACs | params k | test acc | vs class-agnostic (pt) |",
             "|" + "---|" * 8]
    for row in rows:
        agnostic = next(r for r in rows if r["keep"] == row["keep"] and r["variant"] == VARIANTS[0].name)
        acc = row["accuracies"]
        sd = statistics.pstdev(acc) if len(acc) > 1 else 0.0
        diff = 100 * (statistics.fmean(acc) - statistics.fmean(agnostic["accuracies"]))
        lines.append(f"| {row['keep']:g} | {row['variant']} | {row['ranked_on']} | {row['distilled_on']} | "
                     f"{row['macs'] / 1e6:.2f} | {row['params'] / 1e3:.1f} | {100 * statistics.fmean(acc):.2f} ± "
                     f"{100 * sd:.2f} | {diff:+.2f} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {**deployment_settings(bench), "args": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps(
        {"settings": settings, "teacher_accuracy": teacher_acc, "rows": rows}, indent=1) + "\n")
    print(f"\nwritten: {args.out / 'results.json'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    one_line_errors(main)
