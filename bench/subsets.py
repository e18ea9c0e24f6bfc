"""Benchmark: does a deployment that needs few classes get a much smaller, faster model?

Pahwa et al.'s second question on CIFAR-10 (default: examples/cifar10-resnet20.yaml, cpu-1t). For
each class subset (all 10 classes; vehicles: airplane, automobile, ship, truck; animals: bird, cat,
deer, dog, frog, horse; automobile/ship/truck; cat/dog) and each seed, a search finds the fastest
model within --within points of the teacher restricted to the same classes (objective kind
accuracy), with the same recovery for all. Pahwa's comparison beside it: the all-class search's
model (seed 0) narrowed to the subset (its logits restricted to the subset's classes, what
narrowing the head does), scored on the subset's test images. Every model and each subset's
teacher are timed at the end in alternating rounds on the device, past the latency cache.

Reports per subset: classes, the restricted teacher's test accuracy, the searched model's speedup
over that teacher (mean ± sd over seeds), test accuracy, memory, the all-class model's accuracy
on the subset and speedup, and how each search judged its episodes against the floor (the
correction learned from earlier finalists of the same seed, which grows as the subsets run in
order, or search_slack); then the ratio of each subset's speedup to the all-class one, and a
plot of speedup against the number of classes (subsets.png). A search is reused only when its
folder's settings.json equals this run's exactly (marked *), else run afresh.
Usage: python bench/subsets.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--config examples/cifar10-resnet20.yaml]
       [--subsets all,vehicles,animals,auto-ship-truck,cat-dog] [--seeds 0,1] [--episodes 48] [--within 1.0]
       [--repeats 5] [--set KEY=VALUE ...] [--out runs/bench-subsets]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _cli import one_line_errors
from _settings import MARK, deployment_settings, legend
from cifar10 import Row, cifar10_parser, deployment, search_row, teacher_row  # bench/, beside this

from modeltailor.experiments.search.workbench import build_workbench

ROOT = Path(__file__).resolve().parents[1]
SUBSETS: dict[str, list[str] | None] = {
    "all": None,
    "vehicles": ["airplane", "automobile", "ship", "truck"],
    "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
    "auto-ship-truck": ["automobile", "ship", "truck"],
    "cat-dog": ["cat", "dog"],
}
"""Pahwa et al.'s vehicles and animals, the 3-class deployment of the README, and one 2-class."""


def parse_args() -> argparse.Namespace:
    parser = cifar10_parser(__doc__)
    parser.add_argument("--subsets", default=",".join(SUBSETS), help=f"comma-separated, from {', '.join(SUBSETS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per search (default: the config's)")
    parser.add_argument("--within", type=float, default=1.0, help="points of the restricted teacher's accuracy")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timing rounds at the end")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every deployment, e.g. recovery.final_steps=400")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-subsets")
    args = parser.parse_args()
    unknown = [s for s in args.subsets.split(",") if s not in SUBSETS]
    if unknown:
        raise SystemExit(f"--subsets: unknown {', '.join(unknown)}: choose from {', '.join(SUBSETS)}")
    if "all" not in args.subsets.split(","):
        raise SystemExit("--subsets: include all: every subset is compared with the all-class search")
    return args


def restricted_accuracy(onnx_bytes: bytes, x: torch.Tensor, y: torch.Tensor, columns: list[int]) -> float:
    """Accuracy of a model with all the classes' outputs on a subset's images, predicting among
    the subset's columns only (narrowing its head); `y` indexes into `columns`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) and batch > 0 else 256  # an export with a fixed batch: that many
    logits = np.concatenate([session.run(None, {name: x[i:i + step].numpy()})[0] for i in range(0, len(x), step)])
    predicted = logits[:, columns].argmax(axis=1)
    return float(np.mean(predicted == y.numpy()))


def mean_sd(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:.2f}{unit} ± {sd * scale:.2f}"


def plot(points: dict[str, tuple[int, list[float], float | None]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (classes, speedups, narrowed) in points.items():
        ax.errorbar([classes], [statistics.fmean(speedups)], yerr=[statistics.pstdev(speedups) if len(speedups) > 1 else 0],
                    fmt="o", color="C0", capsize=3)
        ax.annotate(name, (classes, statistics.fmean(speedups)), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if narrowed is not None and name != "all":
            ax.plot([classes], [narrowed], "x", color="C1")
    ax.plot([], [], "o", color="C0", label="searched for the subset")
    ax.plot([], [], "x", color="C1", label="all-class model, head narrowed")
    ax.set_xlabel("classes the deployment needs")
    ax.set_ylabel("speedup over its teacher")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.subsets.split(",")
    within = {"objective.kind": "accuracy", "objective.max_accuracy_drop": args.within}
    teachers: dict[str, Row] = {}
    searched: dict[str, list[Row]] = {}
    tests: dict[str, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}
    device = None
    for name in names:
        bench = build_workbench(deployment(args, classes=SUBSETS[name]), report=lambda m: print(m, flush=True))
        device = device or bench.device.uncached()
        teachers[name] = teacher_row(bench, f"teacher on {name}", "teacher")
        x, y = bench.labels("test")
        tests[name] = (x, y, bench.output_classes)
        searched[name] = []
        for seed in seeds:
            cfg = deployment(args, classes=SUBSETS[name], **within, **{"search.seed": seed})
            row = search_row(f"{name} seed {seed}", name, cfg, args.out / f"{name}-seed{seed}",
                             deployment_settings(bench, cfg))
            searched[name].append(row)
            print(f"{row.label}: test {row.accuracy:.4f} against {row.baseline_accuracy:.4f} "
                  f"({row.seconds:.0f} s)", flush=True)
    rows = [*teachers.values(), *(r for name in names for r in searched[name])]
    print("timing every model in alternating rounds ...", flush=True)
    assert device is not None
    measured = device.measure_alternately({i: r.onnx for i, r in enumerate(rows)}, repeats=args.repeats)
    for i, r in enumerate(rows):
        r.latency_ms, r.latency_p90_ms = measured[i].latency.median_ms, measured[i].latency.p90_ms
        r.memory_bytes = measured[i].memory.total_bytes
    all_model = searched["all"][0]
    lines = ["| subset | classes | teacher acc | searched: speedup | test acc | drop (pt) | memory MB | "
             "all-class model narrowed: acc | its speedup | speedup vs all-class | floor judged by (finalists) |",
             "|" + "---|" * 11]
    points: dict[str, tuple[int, list[float], float | None]] = {}
    report: dict[str, Any] = {}
    all_speedup = statistics.fmean(teachers["all"].latency_ms / r.latency_ms for r in searched["all"])
    for name in names:
        teacher, runs = teachers[name], searched[name]
        speedups = [teacher.latency_ms / r.latency_ms for r in runs]
        x, y, columns = tests[name]
        narrowed_acc = restricted_accuracy(all_model.onnx, x, y, columns)
        narrowed_speedup = teacher.latency_ms / all_model.latency_ms
        drops = [100 * (teacher.accuracy - r.accuracy) for r in runs]
        mark = f" {MARK}" if any(r.reused for r in runs) else ""
        lines.append(
            f"| {name}{mark} | {len(columns)} | {100 * teacher.accuracy:.2f} | {mean_sd(speedups, unit='x')} | "
            f"{mean_sd([r.accuracy for r in runs], 100)} | {mean_sd(drops)} | "
            f"{statistics.fmean(r.memory_bytes for r in runs) / 1e6:.3f} | {100 * narrowed_acc:.2f} | "
            f"{narrowed_speedup:.2f}x | {statistics.fmean(speedups) / all_speedup:.2f}x | "
            f"{'; '.join(r.floor for r in runs)} |")
        points[name] = (len(columns), speedups, narrowed_speedup)
        report[name] = {"classes": columns, "teacher_accuracy": teacher.accuracy, "speedups": speedups,
                        "accuracies": [r.accuracy for r in runs], "memory_bytes": [r.memory_bytes for r in runs],
                        "narrowed_accuracy": narrowed_acc, "narrowed_speedup": narrowed_speedup,
                        "reused": [r.reused for r in runs], "floor": [r.floor for r in runs]}
    config = deployment(args)
    print(f"\n{config.model.name} on {config.data.name}, device {config.device.name}, fastest within "
          f"{args.within:g} pt of each subset's teacher, {config.search.episodes} episodes per search, seeds "
          f"{args.seeds}, {args.repeats} alternating rounds; {time.perf_counter() - started:.0f} s in all\n")
    if any(r.reused for r in rows):
        lines += ["", legend(f"its folder under {args.out} (summary.json)") + "; timed again here"]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(points, args.out / "subsets.png")
    settings = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "subsets": report}, indent=1) + "\n")
    print(f"\nwritten: {args.out / 'results.json'}, {args.out / 'subsets.png'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    one_line_errors(main)
