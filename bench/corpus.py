"""Benchmark: the bring-your-own corpus (tests/corpus.py), each model trained and searched briefly.

For every architecture: units found, frozen by the pre-search check (with the reason), compressed
by the chosen policy; the output layer found; teacher and compressed test accuracy; measured ONNX
Runtime latency of both (alternating rounds, median) and the speedup; search time. Models train
once on digits (cached in the teacher cache), so a rerun only searches again.

Usage: python bench/corpus.py [--episodes 16] [--input-size 32] [--epochs 30] [--budget 0.6] [--out runs/bench-corpus]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests.corpus` as a factory reference, run from anywhere

from _settings import write_settings  # noqa: E402  (bench/_settings.py, beside this file)

from modeltailor.errors import ModelTailorError  # noqa: E402
from modeltailor.experiments.search.run import run_search  # noqa: E402
from modeltailor.experiments.search.teacher import load_teacher  # noqa: E402
from modeltailor.experiments.search.workbench import load_deployment_data  # noqa: E402
from modeltailor.experiments.spec.deployment import load_config  # noqa: E402
from modeltailor.experiments.tools.check_model import check_model  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", nargs="*", default=list(CORPUS))
    parser.add_argument("--budget", type=float, default=None,
                        help="latency budget as a ratio of the teacher's (objective budget); default: tradeoff")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-corpus")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows, configs = [], {}
    for name in args.models:
        cfg = load_config(None, {
            "name": f"corpus-{name}", "model.factory": f"tests.corpus:{CORPUS[name]}",
            "data.input_size": args.input_size, "train.epochs": args.epochs, "search.episodes": args.episodes,
            "search.round_to": 2, "recovery.episode_steps": 20, "recovery.final_steps": 400,
            "recovery.finalists": 1, "tracking.enabled": False,
            **({"objective.kind": "budget", "objective.max_latency_ratio": args.budget} if args.budget
               else {"objective.kind": "tradeoff"}),
        })
        configs[name] = cfg.model_dump(mode="json")
        try:
            full, _, _ = load_deployment_data(cfg)
            _, source = load_teacher(cfg, full, train=True)
            report = check_model(cfg)
            started = time.perf_counter()
            s = run_search(cfg, args.out / name).summary
        except ModelTailorError as exc:  # refused, in one line: part of the result
            rows.append({"model": name, "refused": str(exc)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        seconds = time.perf_counter() - started
        compressed = [u["unit"] for u in s.policy.model_dump()["units"] if u["keep"] < 1.0 or u["method"] != "prune"]
        row = {
            "model": name, "units": len(report.units), "frozen": {u.unit: u.failed["prune"] for u in report.frozen},
            "compressed": len(compressed), "output_layer": report.output_layer, "narrowable": report.narrowable,
            "teacher_acc": s.baseline.accuracy, "acc": s.best.accuracy, "drop_pt": s.accuracy_drop,
            "base_ms": s.baseline.latency_ms, "ms": s.best.latency_ms, "speedup": s.speedup,
            "params": (s.baseline.params, s.best.params), "search_s": seconds, "teacher": source,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    # what the rows were made with, beside them (nothing here is reused: every run searches afresh)
    write_settings(args.out, {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "configs": configs})
    print(f"\n| model | units | frozen | compressed | output layer | subsets | teacher | compressed | "
          f"latency ms | speedup | params | search s |\n|{'---|' * 12}")
    for r in rows:
        if "refused" in r:
            print(f"| {r['model']} | refused: {r['refused']} |")
            continue
        print(
            f"| {r['model']} | {r['units']} | {len(r['frozen'])} | {r['compressed']} | `{r['output_layer']}` | "
            f"{'yes' if r['narrowable'] else 'no'} | {r['teacher_acc']:.4f} | {r['acc']:.4f} ({-r['drop_pt']:+.2f} pt) | "
            f"{r['base_ms']:.3f} -> {r['ms']:.3f} | {r['speedup']:.2f}x | {r['params'][0]:,} -> {r['params'][1]:,} | "
            f"{r['search_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
