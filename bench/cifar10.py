"""Benchmark: modeltailor on CIFAR-10 against what a user would do instead, in one run.

Against one teacher (the zoo model trained once on CIFAR-10 and cached) and one device profile:
  (a) Torch-Pruning used the way its README shows: one ratio for every layer (uniform) or one
      global ratio, L2 magnitude importance, channels rounded to `search.round_to`, the classifier
      left alone; each then recovered with modeltailor's final distillation budget
      (`recovery.final_steps`, same lr, batch, temperature, precision);
  (b) ONNX Runtime static int8 (QDQ, per-channel, calibrated on training images) of the whole teacher,
      and of each Torch-Pruning model (prune, fine-tune, then quantize: the two tools chained);
  (c) modeltailor's search under latency budgets of 50% and 30% of the teacher's, with pruning
      alone (`search.methods: [prune]`, whatever the config says) and with int8
      (`search.methods: [prune, int8]`: every candidate runs wholly in int8);
  (d) modeltailor's fastest model within 1 point of the teacher (objective kind accuracy), with
      pruning alone, with int8, and with int8 chosen per unit (`search.int8_scope: unit`);
  (e) the same for a class subset (default automobile, ship, truck) against its own restricted
      baseline (the teacher with its head narrowed to the subset).
At the end every model's ONNX export is timed in alternating rounds on the device (no cache), so
all latencies share the machine's load; accuracies are on the whole official test split (the
subset's test images for (e)).

Rerun into the same --out, a Torch-Pruning row or a search is reused only when the settings.json
beside it equals this run's exactly (for a search: its resolved config, the teacher's weights,
the device's identity; for a Torch-Pruning row: the teacher, data, recovery, round_to, mode and
ratio), and is marked * in the tables (its latency and memory are timed again with the rest). A
folder made with other settings, or none recorded, is moved aside (to <folder>.stale) and that row
or search runs again; an unfinished search with the same settings resumes.

Usage: python bench/cifar10.py --data ../shared/data/cifar10-jpeg.tar.gz [--model resnet20]
[--episodes 96] [--main-episodes 96] [--ratios 0.2 0.3 0.4 0.5 0.6] [--budgets 0.5 0.3] [--subset automobile ship truck]
[--skip tp int8 tpint8 budget fastest joint int8search subset] [--set recovery.final_steps=400 ...] [--out runs/bench-cifar10]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import yaml
from _cli import one_line_errors
from _settings import (  # bench/, beside this file
    MARK,
    config_settings,
    deployment_settings,
    legend,
    prepare_folder,
)

from modeltailor.compressors.distill import distill, recalibrate_batchnorm
from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.pruning import count_params
from modeltailor.compressors.quantization import onnx_accuracy, quantize_onnx
from modeltailor.compressors.units import analyze_model, output_modules
from modeltailor.experiments.search.experience import teacher_fingerprint
from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.search.workbench import Workbench, build_workbench, recovery_config
from modeltailor.experiments.spec.deployment import DeploymentConfig, load_config
from modeltailor.experiments.spec.summary import SearchSummary

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_IMAGES = 256


@dataclass
class Row:
    name: str
    group: str  # "teacher", "torch-pruning", "ort-int8", "modeltailor", "subset"
    accuracy: float
    baseline_accuracy: float
    macs: int
    params: int
    seconds: float  # the whole search run (modeltailor), pruning + fine-tuning (torch-pruning), quantization
    onnx: bytes
    latency_ms: float = 0.0
    latency_p90_ms: float = 0.0
    memory_bytes: int = 0
    baseline_latency_ms: float = 0.0
    note: str = ""
    reused: bool = False  # from an earlier run's folder, its settings matching this run's exactly
    floor: str = ""  # an accuracy-floor search: how its episodes were judged (summary.json accuracy_floor)

    @property
    def label(self) -> str:
        return f"{self.name} {MARK}" if self.reused else self.name


def cifar10_parser(doc: str) -> argparse.ArgumentParser:
    """A CIFAR-10 bench script's parser with the arguments `deployment` reads: --data, --config, --model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="cifar10-jpeg.tar.gz or its extracted folder (default: the config's data.root)")
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "cifar10-resnet20.yaml")
    parser.add_argument("--model", default=None, help="zoo model (default: the config's)")
    return parser


def parse_args() -> argparse.Namespace:
    parser = cifar10_parser(__doc__)
    parser.add_argument("--episodes", type=int, default=None, help="episodes per search (default: the config's)")
    parser.add_argument("--main-episodes", type=int, default=None,
                        help="episodes of the first budget's search, the headline deployment (default: --episodes)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6],
                        help="Torch-Pruning ratios (fraction of channels removed)")
    parser.add_argument("--modes", nargs="+", default=["uniform", "global"], choices=["uniform", "global"],
                        help="Torch-Pruning ratio modes")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3], help="latency budgets (ratios)")
    parser.add_argument("--subset", nargs="+", default=["automobile", "ship", "truck"])
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["tp", "int8", "tpint8", "budget", "fastest", "joint", "int8search", "subset"])
    parser.add_argument("--repeats", type=int, default=5, help="alternating timing rounds at the end")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every deployment, e.g. recovery.final_steps=400")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-cifar10"))
    return parser.parse_args()


def deployment(args: argparse.Namespace, **overrides: Any) -> DeploymentConfig:
    values: dict[str, Any] = {"tracking.enabled": False}
    if args.data is not None:
        values["data.root"] = str(args.data)
    if args.model:
        values["model.name"] = args.model
    if args.episodes:
        values["search.episodes"] = args.episodes
    for item in args.set:
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    values.update(overrides)
    return load_config(args.config, values)


def cached_row(folder: Path, settings: dict[str, Any], make: Callable[[], Row]) -> Row:
    """`make()`'s row, kept in `folder` (row.json, model.onnx, settings.json) and reused when the
    bench is rerun with exactly `settings` (`prepare_folder`)."""
    meta, onnx_file = folder / "row.json", folder / "model.onnx"
    verdict = prepare_folder(folder, settings, (meta.name, onnx_file.name))
    if verdict:
        return Row(**json.loads(meta.read_text()), onnx=onnx_file.read_bytes(), reused=True)
    print(f"{folder}: {verdict.reason}: making it", flush=True)
    row = make()
    onnx_file.write_bytes(row.onnx)
    meta.write_text(json.dumps({k: v for k, v in asdict(row).items() if k not in ("onnx", "reused")}))
    return row


def pruning_settings(bench: Workbench, mode: str, ratio: float) -> dict[str, Any]:
    """What a Torch-Pruning row depends on: the teacher, data, recovery and round_to, mode and ratio
    (not the search, objective or device: its latency is timed again at the end)."""
    config = config_settings(bench.config)
    kept = {key: config[key] for key in ("model", "data", "classes", "train", "recovery", "compute")}
    return {
        "config": {**kept, "round_to": config["search"]["round_to"]},
        "teacher": teacher_fingerprint(bench.teacher),
        "row": {"mode": mode, "ratio": ratio},
    }


def torch_pruning_row(bench: Workbench, mode: str, ratio: float) -> Row:
    """Prune the teacher the Torch-Pruning README way, then give it modeltailor's final recovery."""
    started = time.perf_counter()
    model = copy.deepcopy(bench.base).eval()
    pruner = tp.pruner.BasePruner(
        model,
        bench.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=mode == "global",
        ignored_layers=output_modules(model, bench.analysis.output),
        round_to=bench.config.search.round_to,
    )
    pruner.step()
    train_x, train_y = bench.evaluator.data.train_x, bench.evaluator.data.train_y
    recalibrate_batchnorm(model, train_x)
    distill(model, bench.evaluator.teacher_logits, train_y, recovery_config(bench.config, final=True))
    seconds = time.perf_counter() - started
    return Row(
        f"torch-pruning {mode} {ratio:.0%}", "torch-pruning", bench.test_accuracy(model),
        bench.test_accuracy(bench.base), analyze_model(model, bench.example).total_macs, count_params(model),
        seconds, export_onnx(model, bench.input_shape[1:]),
    )


def int8_row(bench: Workbench) -> Row:
    started = time.perf_counter()
    calibration = bench.evaluator.data.train_x[:CALIBRATION_IMAGES]
    onnx_bytes = quantize_onnx(export_onnx(bench.base, bench.input_shape[1:]), calibration)
    seconds = time.perf_counter() - started
    test_x, test_y = bench.labels("test")
    return Row(
        "ORT static int8 (whole teacher)", "ort-int8", onnx_accuracy(onnx_bytes, test_x, test_y),
        bench.test_accuracy(bench.base), bench.analysis.total_macs, count_params(bench.base), seconds, onnx_bytes,
        note="int8 MACs",
    )


def quantized_row(bench: Workbench, row: Row) -> Row:
    """`row`'s model, then ORT static int8 of the whole graph (the same calibration as the teacher's)."""
    started = time.perf_counter()
    onnx_bytes = quantize_onnx(row.onnx, bench.evaluator.data.train_x[:CALIBRATION_IMAGES])
    test_x, test_y = bench.labels("test")
    return Row(
        f"{row.name} + ORT int8", f"{row.group}+int8", onnx_accuracy(onnx_bytes, test_x, test_y),
        row.baseline_accuracy, row.macs, row.params, row.seconds + time.perf_counter() - started, onnx_bytes,
        note="int8 MACs", reused=row.reused,
    )


def search_row(name: str, group: str, config: DeploymentConfig, out: Path, settings: dict[str, Any]) -> Row:
    """A modeltailor search: reused when its folder holds a finished one made with exactly
    `settings`, resumed when one with them was interrupted, else run afresh (`prepare_folder`)."""
    verdict = prepare_folder(out, settings, ("summary.json", "model.onnx"))
    if verdict:
        s = SearchSummary.model_validate_json((out / "summary.json").read_text())
    else:
        print(f"{out}: {verdict.reason}: searching", flush=True)
        s = run_search(config, out, resume=(out / "episodes.jsonl").is_file()).summary
    onnx_bytes = (out / "model.onnx").read_bytes()
    return Row(
        name, group, s.best.accuracy, s.baseline.accuracy, int(s.best.macs), int(s.best.params),
        s.total_seconds, onnx_bytes,
        note=f"{s.episodes} episodes, {s.search_seconds / max(1, s.episodes):.1f} s each; {','.join(s.methods)}",
        reused=bool(verdict),
        floor=f"{s.accuracy_floor.judged_by} ({s.accuracy_floor.finalists})" if s.accuracy_floor else "",
    )


def teacher_row(bench: Workbench, name: str = "teacher", group: str = "teacher") -> Row:
    acc = bench.test_accuracy(bench.base)
    return Row(
        name, group, acc, acc, bench.analysis.total_macs, count_params(bench.base), 0.0,
        export_onnx(bench.base, bench.input_shape[1:]),
    )


def time_all(bench: Workbench, rows: list[Row], repeats: int) -> None:
    """Time every model's ONNX export in alternating rounds on the device (past its cache)."""
    device = bench.device.uncached()
    measured = device.measure_alternately({i: row.onnx for i, row in enumerate(rows)}, repeats=repeats)
    for i, row in enumerate(rows):
        m = measured[i]
        row.latency_ms, row.latency_p90_ms = m.latency.median_ms, m.latency.p90_ms
        row.memory_bytes = m.memory.total_bytes


def print_table(rows: list[Row], out: Path) -> list[str]:
    header = (
        f"| {'model':<34} | test acc | drop (pt) | latency ms | p90 ms | speedup | memory MB | MMACs "
        f"| params k | time s | note |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(11)) + "|"]
    for row in rows:
        lines.append(
            f"| {row.label:<34} | {row.accuracy:.4f} | {100 * (row.baseline_accuracy - row.accuracy):+.2f} "
            f"| {row.latency_ms:.3f} | {row.latency_p90_ms:.3f} | {row.baseline_latency_ms / row.latency_ms:.2f}x "
            f"| {row.memory_bytes / 1e6:.3f} | {row.macs / 1e6:.1f} | {row.params / 1e3:.0f} | {row.seconds:.0f} "
            f"| {row.note} |"
        )
    if any(row.reused for row in rows):
        lines += ["", legend(f"its folder under {out} (row.json or summary.json)") + "; timed again here"]
    print("\n".join(lines), flush=True)
    return lines


def equal_latency(rows: list[Row]) -> list[str]:
    """For each modeltailor model: the most accurate rival at most as slow as it (Torch-Pruning,
    alone or followed by ORT int8, or ORT int8 of the teacher)."""
    lines = []
    pruned = [r for r in rows if r.group in ("torch-pruning", "torch-pruning+int8", "ort-int8")]
    for row in (r for r in rows if r.group == "modeltailor"):
        rivals = [r for r in pruned if r.latency_ms <= row.latency_ms * 1.02]
        if not rivals:
            lines.append(f"{row.label}: no rival is as fast ({row.latency_ms:.3f} ms)")
            continue
        best = max(rivals, key=lambda r: r.accuracy)
        lines.append(
            f"{row.label} ({row.latency_ms:.3f} ms, {row.accuracy:.4f}) vs {best.label} ({best.latency_ms:.3f} ms, "
            f"{best.accuracy:.4f}): {100 * (row.accuracy - best.accuracy):+.2f} points"
        )
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    config = deployment(args)
    print(f"teacher and data: {config.model.name} on {config.data.name} ({config.data.root})", flush=True)
    bench = build_workbench(config, report=lambda m: print(m, flush=True))
    rows = [teacher_row(bench)]
    if "int8" not in args.skip:
        rows.append(int8_row(bench))
        print(f"{rows[-1].name}: test {rows[-1].accuracy:.4f} ({rows[-1].seconds:.0f} s)", flush=True)
    if "tp" not in args.skip:
        pruned = []
        for mode in args.modes:
            for ratio in args.ratios:
                folder = args.out / f"torch-pruning-{mode}-{ratio}"
                settings = pruning_settings(bench, mode, ratio)
                pruned.append(cached_row(folder, settings, lambda: torch_pruning_row(bench, mode, ratio)))  # noqa: B023
                print(f"{pruned[-1].name}: test {pruned[-1].accuracy:.4f} ({pruned[-1].seconds:.0f} s)", flush=True)
        rows += pruned
        if "tpint8" not in args.skip:
            for row in pruned:
                rows.append(quantized_row(bench, row))
                print(f"{rows[-1].name}: test {rows[-1].accuracy:.4f}", flush=True)
    int8 = {"search.methods": ["prune", "int8"], "search.int8_scope": "model"}
    searches: list[tuple[str, str, str, dict[str, Any]]] = []  # (--skip name, row name, folder, overrides)
    for i, budget in enumerate(args.budgets):
        episodes = {"search.episodes": args.main_episodes} if i == 0 and args.main_episodes else {}
        limit = {"objective.kind": "budget", "objective.max_latency_ratio": budget}
        searches.append(("budget", f"budget {budget:.0%}", f"budget-{budget}",
                         {**limit, **episodes, "search.methods": ["prune"]}))
        searches.append(("int8search", f"int8 budget {budget:.0%}", f"budget-{budget}-int8", {**limit, **int8}))
    within = {"objective.kind": "accuracy", "objective.max_accuracy_drop": 1.0}
    searches += [
        ("fastest", "fastest within 1 pt", "fastest", {**within, "search.methods": ["prune"]}),
        ("int8search", "int8 fastest within 1 pt", "fastest-int8", {**within, **int8}),
        # int8 chosen per unit: partial int8 runs as islands; kept to compare the two scopes
        ("joint", "prune+int8 per unit fastest within 1 pt", "fastest-prune-int8",
         {**within, **int8, "search.int8_scope": "unit"}),
    ]
    for skip, name, folder, overrides in searches:
        if skip in args.skip:
            continue
        cfg = deployment(args, **overrides)
        rows.append(search_row(f"modeltailor {name}", "modeltailor", cfg, args.out / folder,
                               deployment_settings(bench, cfg)))
        print(f"{rows[-1].name}: test {rows[-1].accuracy:.4f} ({rows[-1].seconds:.0f} s)", flush=True)
    subset_rows: list[Row] = []
    if "subset" not in args.skip:
        subset = deployment(args, classes=args.subset)
        sub_bench = build_workbench(subset, report=lambda m: print(m, flush=True))
        subset_rows.append(teacher_row(sub_bench, f"teacher on {'/'.join(args.subset)}", "subset-teacher"))
        cfg = deployment(
            args, classes=args.subset, **{"objective.kind": "accuracy", "objective.max_accuracy_drop": 1.0}
        )
        subset_rows.append(search_row(f"modeltailor {len(args.subset)}-class fastest within 1 pt", "subset", cfg,
                                      args.out / "subset-fastest", deployment_settings(sub_bench, cfg)))
    print("timing every model in alternating rounds ...", flush=True)
    time_all(bench, rows + subset_rows, args.repeats)
    for row in rows:
        row.baseline_latency_ms = rows[0].latency_ms
    for row in subset_rows:
        row.baseline_latency_ms = subset_rows[0].latency_ms
    print(
        f"\n{config.model.name} on {config.data.name} ({config.data.root}), device {config.device.name}, "
        f"recovery {config.recovery.final_steps} steps for every pruned model, "
        f"{config.search.episodes} episodes per search, total {time.perf_counter() - started:.0f} s\n"
    )
    lines = print_table(rows + subset_rows, args.out) + [""] + equal_latency(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    records = [{k: v for k, v in asdict(r).items() if k != "onnx"} for r in rows + subset_rows]
    (args.out / "results.json").write_text(json.dumps(records, indent=2))
    print(f"\nwritten: {args.out / 'table.md'}, {args.out / 'results.json'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    one_line_errors(main)
