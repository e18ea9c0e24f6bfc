"""Benchmark: CP decomposition against Tucker-2 (and spatial SVD) on ONNX Runtime latency at equal accuracy.

Every k x k conv of the deployment's teacher (default: ResNet-20 on digits, cpu-1t) is factorized at
each rank ratio with each scheme (`search.lowrank_scheme`: tucker2, cp, spatial); 1x1 convs and
the classifier stay. Each factorized model gets the same recovery (the deployment's final
distillation, --steps), once per seed, and is scored on the test split; all of them and the
teacher are then timed on the device in alternating rounds, past the latency cache. The table
gives each (scheme, ratio): parameters, MACs, the time to factorize, test accuracy (mean and
spread over seeds), latency and speedup. The verdict line compares, per scheme, the fastest model
within --within points of the teacher: "at equal accuracy".
Usage: python bench/lowrank.py [--config examples/digits-resnet20.yaml] [--schemes tucker2,cp]
       [--ratios 0.5,0.3,0.15] [--seeds 0,1] [--steps 800] [--repeats 25] [--out runs/bench-lowrank]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from _cli import one_line_errors
from _settings import deployment_settings, write_settings
from torch import nn

from modeltailor.compressors.distill import distill, recalibrate_batchnorm
from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.lowrank import LowRankCompressor, lowrank_candidates
from modeltailor.compressors.pruning import count_params
from modeltailor.compressors.units import analyze_model
from modeltailor.experiments.search.workbench import Workbench, build_workbench, recovery_config
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    scheme: str
    ratio: float
    params: int
    macs: int
    factorize_s: float
    accuracies: list[float]
    onnx: bytes = field(repr=False)
    latency_ms: float = 0.0
    latency_p90_ms: float = 0.0

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)


def kxk_layers(model: nn.Module, ratio: float, scheme: str, round_to: int) -> list[str]:
    """The k x k convs `scheme` factorizes at `ratio` (1x1 convs and Linear layers stay)."""
    found = lowrank_candidates(model, ratio, scheme, round_to)
    return [name for name in found
            if isinstance(m := model.get_submodule(name), nn.Conv2d) and tuple(m.kernel_size) != (1, 1)]


def factorized_row(bench: Workbench, scheme: str, ratio: float, seeds: list[int], steps: int) -> Row:
    round_to = bench.config.search.round_to
    layers = kxk_layers(bench.base, ratio, scheme, round_to)
    started = time.perf_counter()
    small = LowRankCompressor(scheme, round_to=round_to).apply_ranks(bench.base, dict.fromkeys(layers, ratio))
    factorize_s = time.perf_counter() - started
    recovery = replace(recovery_config(bench.config, final=True), steps=steps)
    train_x, train_y = bench.evaluator.data.train_x, bench.evaluator.data.train_y
    accuracies, first = [], None
    for seed in seeds:
        student = copy.deepcopy(small)
        recalibrate_batchnorm(student, train_x)
        distill(student, bench.evaluator.teacher_logits, train_y, replace(recovery, seed=seed))
        student.eval()
        accuracies.append(bench.test_accuracy(student))
        first = first or student
    assert first is not None
    row = Row(scheme, ratio, count_params(small), analyze_model(small, bench.example).total_macs, factorize_s,
              accuracies, export_onnx(first, bench.input_shape[1:]))
    print(f"{scheme} {ratio}: {len(layers)} convs, {row.params:,} params, test acc {row.accuracy:.4f} "
          f"{accuracies}, factorized in {factorize_s:.1f} s", flush=True)
    return row


def fmt_acc(row: Row) -> str:
    spread = statistics.pstdev(row.accuracies) if len(row.accuracies) > 1 else 0.0
    return f"{100 * row.accuracy:.2f} ± {100 * spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml")
    parser.add_argument("--schemes", default="tucker2,cp")
    parser.add_argument("--ratios", default="0.5,0.3,0.15")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=None, help="recovery steps (default: the config's final_steps)")
    parser.add_argument("--repeats", type=int, default=25, help="alternating timing rounds")
    parser.add_argument("--within", type=float, default=1.0, help="points of the teacher's accuracy")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-lowrank")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    schemes = args.schemes.split(",")
    unknown = [s for s in schemes if s not in ("spatial", "tucker2", "cp")]
    if unknown:
        raise SystemExit(f"--schemes: unknown {', '.join(unknown)}: choose from spatial, tucker2, cp")
    ratios = [float(r) for r in args.ratios.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    config = load_config(args.config, {"tracking.enabled": False})
    bench = build_workbench(config, report=lambda message: print(message, flush=True))
    steps = args.steps if args.steps is not None else config.recovery.final_steps
    teacher = Row("teacher", 1.0, count_params(bench.base), bench.analysis.total_macs, 0.0,
                  [bench.test_accuracy(bench.base)], export_onnx(bench.base, bench.input_shape[1:]))
    rows = [factorized_row(bench, scheme, ratio, seeds, steps) for ratio in ratios for scheme in schemes]
    measured = bench.device.uncached().measure_alternately(
        {i: row.onnx for i, row in enumerate([teacher, *rows])}, repeats=args.repeats)
    for i, row in enumerate([teacher, *rows]):
        row.latency_ms, row.latency_p90_ms = measured[i].latency.median_ms, measured[i].latency.p90_ms
    lines = [f"| scheme | rank ratio | params k | MMACs | factorize s | test acc (seeds {args.seeds}) | drop (pt) | "
             "latency ms | p90 ms | speedup |", "|" + "---|" * 10]
    for row in [teacher, *rows]:
        lines.append(
            f"| {row.scheme} | {row.ratio:g} | {row.params / 1e3:.1f} | {row.macs / 1e6:.2f} | {row.factorize_s:.1f} | "
            f"{fmt_acc(row)} | {100 * (teacher.accuracy - row.accuracy):+.2f} | {row.latency_ms:.3f} | "
            f"{row.latency_p90_ms:.3f} | {teacher.latency_ms / row.latency_ms:.2f}x |")
    verdict = []
    for scheme in schemes:
        within = [r for r in rows if r.scheme == scheme and 100 * (teacher.accuracy - r.accuracy) <= args.within]
        best = min(within, key=lambda r: r.latency_ms, default=None)
        verdict.append(f"{scheme}: " + (f"ratio {best.ratio:g}, {teacher.latency_ms / best.latency_ms:.2f}x, "
                                        f"{fmt_acc(best)}" if best else f"none within {args.within:g} pt"))
    print()
    print("\n".join(lines))
    print(f"\nfastest within {args.within:g} pt of the teacher ({100 * teacher.accuracy:.2f}): " + "; ".join(verdict))
    print(f"{config.name} on {config.device.name}: {steps} recovery steps per model and seed, {args.repeats} "
          f"alternating rounds; {time.perf_counter() - started:.0f} s in all")
    settings = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "steps": steps, "deployment": deployment_settings(bench, config)}
    write_settings(args.out, settings)
    results = [{k: v for k, v in asdict(r).items() if k != "onnx"} for r in [teacher, *rows]]
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    one_line_errors(main)
