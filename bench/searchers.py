"""Benchmark: every searcher side by side on the same env, action space and episode budget.

Three deployments of the default model (ResNet-20 on digits, ORT CPU): all classes under latency
budgets of 30% and 50% of the baseline, and classes 0, 3, 7 under the accuracy objective (fastest
model within 1 point). For each deployment the workbench (teacher, data, units, baseline) is built
once; each seed then runs every searcher in turn on a fresh env. The evaluator's cache is shared
within a deployment: an architecture is compressed, recovered (the deployment's fixed seed) and
measured once, and every searcher that reaches it gets the same numbers (and its budget limiter
learns from it as from a fresh measurement); every episode still counts against its searcher's
budget. Deterministic searchers (uniform, greedy) therefore give the same
result for every seed.

Deployments with the same classes share one evaluator cache too (the budget changes the reward,
not what an architecture measures). The surrogate-assisted searchers (ppo, evolution-surrogate)
start with no experience: their seed episodes come out of the same episode budget.

Per searcher (mean and spread over seeds): the best validation accuracy within the budget (or the
best speedup meeting the accuracy floor) after k = 3, 6, 12, 24, 48 real episodes (as many of
them as --episodes allows), the fraction of episodes that met the budget / floor, and the episodes
until the search was within 0.5 points (or 5% of latency) of its own final best.

Usage: python bench/searchers.py [--config examples/digits-resnet20.yaml] [--episodes 48] [--seeds 0,1,2]
       [--episode-steps 40]
       [--searchers ppo,evolution-surrogate,ppo-real,random,uniform,greedy,evolution]
       [--deployments all-30,all-50,c037-accuracy] [--out runs/bench/searchers.json]
Writes every episode and the settings it was made with to --out (JSON: the run's episodes and
seeds; per deployment its resolved config, the teacher's weights and the device's identity), so
bench/warm_start.py can compare against the same runs. --merge keeps the other searchers' runs
already in --out only when its settings equal this run's exactly (episodes, seeds, and each
deployment this run shares with it), checked before anything runs, and marks them * in the
table; otherwise it refuses in one line naming the settings that differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _cli import one_line_errors
from _settings import (  # bench/, beside this file
    MARK,
    compare,
    config_settings,
    deployment_settings,
    legend,
)

from modeltailor.agent import SEARCHERS, make_searcher
from modeltailor.compressors.policy import Policy
from modeltailor.env.records import EpisodeRecord, Outcome
from modeltailor.env.reward import Resources
from modeltailor.experiments.search.objective import build_env, make_reward
from modeltailor.experiments.search.workbench import Workbench, build_workbench
from modeltailor.experiments.spec.deployment import DeploymentConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "digits-resnet20.yaml"
ACCURACY = {"objective": {"kind": "accuracy", "max_accuracy_drop": 1.0, "minimize": "latency"}}
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "all-30": {"objective.max_latency_ratio": 0.30},
    "all-50": {"objective.max_latency_ratio": 0.50},
    "c037-accuracy": {"classes": [0, 3, 7], **ACCURACY},
}
"""The benchmark's deployments: overrides of examples/digits-resnet20.yaml."""
NEAR_POINTS = 0.5  # budget kind: within 0.5 accuracy points of the final best
NEAR_LATENCY = 0.05  # accuracy kind: within 5% of the final best latency
DETERMINISTIC = ("uniform", "greedy")
"""Searchers that play the same policies whatever the seed: run once per deployment (the first
seed), their row marked."""
CHECKPOINTS = (3, 6, 12, 24, 48)
"""Real-episode counts the table reports each searcher's best after."""


@dataclass
class Deployment:
    name: str
    config: DeploymentConfig
    bench: Workbench
    baseline: Resources

    @property
    def kind(self) -> str:
        return self.config.objective.kind


def deployment_config(overrides: dict[str, Any], episode_steps: int | None, config: Path = DEFAULT_CONFIG,
                      ) -> DeploymentConfig:
    flat: dict[str, Any] = {"tracking.enabled": False}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    if episode_steps is not None:
        flat["recovery.episode_steps"] = episode_steps
    return load_config(config, flat)


def build_deployment(name: str, overrides: dict[str, Any], episode_steps: int | None,
                     config_path: Path = DEFAULT_CONFIG, caches: dict[str, dict] | None = None) -> Deployment:
    """The deployment's workbench; with `caches`, its evaluator cache is the one of every deployment
    with the same classes (an architecture measures the same whatever the budget)."""
    config = deployment_config(overrides, episode_steps, config_path)
    bench = build_workbench(config, lambda _m: None)
    if caches is not None:
        bench.evaluator.cache = caches.setdefault(json.dumps(bench.classes), bench.evaluator.cache)
    b = bench.baseline
    return Deployment(name, config, bench, Resources(b.accuracy, b.latency_ms, b.memory_bytes))


class FirstSight:
    """The deployment's shared evaluator as one search sees it: an architecture another search
    measured is new to this one (fresh, so its limiter learns from it), as in a search of its own."""

    def __init__(self, evaluator: Callable[[Policy], Outcome]) -> None:
        self.evaluator, self.seen = evaluator, set[str]()

    def __call__(self, policy: Policy) -> Outcome:
        outcome = self.evaluator(policy)
        if outcome.architecture in self.seen:
            return outcome
        self.seen.add(outcome.architecture)
        return replace(outcome, cached=False)


ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "ppo-regressor-latency": ("ppo", {"device_latency": False}),
    "ppo-floor-mean": ("ppo", {"floor_pessimism": 0.0}),
    "ppo-no-allocation": ("ppo", {"allocation_candidates": 0}),
}
"""Searchers the bench also runs by name: a searcher with some `search.surrogate` settings changed."""


def search_run(d: Deployment, name: str, seed: int, episodes: int,
               **kwargs: Any) -> tuple[list[EpisodeRecord], dict[str, Any]]:
    """One search on a fresh env of the deployment: its episodes, and what the searcher noted."""
    env = build_env(d.bench, make_reward(d.config, d.baseline), d.baseline)
    env.evaluator = FirstSight(env.evaluator)
    if name in ABLATIONS:
        name, changed = ABLATIONS[name]
        kwargs = {**kwargs, "surrogate": {**kwargs.get("surrogate", {}), **changed}}
    result = make_searcher(name, seed, report=lambda _m: None, **kwargs).search(env, episodes)
    return env.history, result.notes


def run_searcher(d: Deployment, name: str, seed: int, episodes: int, **kwargs: Any) -> list[EpisodeRecord]:
    return search_run(d, name, seed, episodes, **kwargs)[0]


def score(d: Deployment, record: EpisodeRecord) -> float:
    """What the deployment asks for: accuracy (budget kind) or speedup (accuracy kind)."""
    return record.accuracy if d.kind == "budget" else d.baseline.latency_ms / record.latency_ms


def trajectory(d: Deployment, records: list[EpisodeRecord]) -> list[float | None]:
    """Best score among feasible episodes so far, after each episode (None before the first)."""
    best: float | None = None
    out: list[float | None] = []
    for r in records:
        if r.feasible:
            best = score(d, r) if best is None else max(best, score(d, r))
        out.append(best)
    return out


def near(d: Deployment, value: float | None, target: float) -> bool:
    if value is None:
        return False
    if d.kind == "budget":
        return value >= target - NEAR_POINTS / 100
    return d.baseline.latency_ms / value <= (1 + NEAR_LATENCY) * d.baseline.latency_ms / target


def episodes_to_reach(d: Deployment, curve: list[float | None], target: float | None) -> int | None:
    """1-based episode at which the curve came near `target` (None: never)."""
    if target is None:
        return None
    return next((i + 1 for i, v in enumerate(curve) if near(d, v, target)), None)


def summarize_run(d: Deployment, records: list[EpisodeRecord]) -> dict[str, Any]:
    curve = trajectory(d, records)
    final = curve[-1] if curve else None
    best = max((r for r in records if r.feasible), key=lambda r: score(d, r), default=None)
    return {
        "best": final,
        "best_latency_ms": best.latency_ms if best else None,
        "best_accuracy": best.accuracy if best else None,
        "feasible": sum(r.feasible for r in records) / max(len(records), 1),
        "to_near_best": episodes_to_reach(d, curve, final),
        "curve": curve,
        "episodes": [
            {"accuracy": r.accuracy, "latency_ms": r.latency_ms, "feasible": r.feasible, "cached": r.cached,
             "policy": r.policy.to_dict()}  # what was measured, for offline looks (the surrogate's view of it)
            for r in records
        ],
    }


def fmt(values: list[float | None], kind: str) -> str:
    """mean ± spread over seeds: points for accuracy, x for speedup; '-' when a seed found none."""
    found = [v for v in values if v is not None]
    if not found:
        return "none"
    scale, unit, digits = (100, "", 2) if kind == "budget" else (1, "x", 2)
    mean = statistics.fmean(found) * scale
    spread = (statistics.pstdev(found) * scale) if len(found) > 1 else 0.0
    missing = f" ({len(values) - len(found)} none)" if len(found) < len(values) else ""
    return f"{mean:.{digits}f}{unit} ± {spread:.{digits}f}{missing}"


def table(results: dict[str, dict[str, list[dict[str, Any]]]], kinds: dict[str, str], episodes: int,
          source: str = "") -> str:
    """The table; a searcher's runs kept from an earlier run (`reused`) marked, with a legend naming `source`."""
    ks = [k for k in CHECKPOINTS if k <= episodes]
    lines = [
        "| deployment | searcher | " + " | ".join(f"best after {k}" for k in ks)
        + " | within budget / floor | episodes to near best (median) |",
        "| --- | --- | " + " | ".join("---" for _ in ks) + " | --- | --- |",
    ]
    for dname, by_searcher in results.items():
        kind = kinds[dname]
        what = "val acc % within budget" if kind == "budget" else "speedup at the floor"
        for sname, runs in by_searcher.items():
            reach = [r["to_near_best"] for r in runs if r["to_near_best"] is not None]
            feasible = statistics.fmean(r["feasible"] for r in runs)
            median = f"{statistics.median(reach):.0f}" if reach else "-"
            after = " | ".join(fmt([_at(r["curve"], k) for r in runs], kind) for k in ks)
            same = " (deterministic: run once)" if any("same_as_seed" in r for r in runs) else ""
            mark = f" {MARK}" if any(r.get("reused") for r in runs) else ""
            lines.append(f"| {dname} ({what}) | {sname}{mark}{same} | {after} | {feasible:.0%} | {median} |")
    if any(r.get("reused") for by_searcher in results.values() for runs in by_searcher.values() for r in runs):
        lines += ["", legend(source)]
    return "\n".join(lines)


def _at(curve: list[float | None], k: int) -> float | None:
    """The best score after `k` episodes (the last one for a shorter run)."""
    return curve[min(k, len(curve)) - 1] if curve else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the deployment the benchmark's deployments override (default: examples/digits-resnet20.yaml)")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--searchers", default="ppo,evolution-surrogate,ppo-real,random,uniform,greedy,evolution",
                        help=f"any of modeltailor's searchers, or an ablation: {', '.join(ABLATIONS)}")
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    parser.add_argument("--episode-steps", type=int, default=None,
                        help="distillation steps per episode (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "searchers.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other searchers' runs already in --out and add or replace these; refused in one "
                             "line unless --out was run with exactly these settings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    searchers = args.searchers.split(",")
    started = time.perf_counter()
    names = args.deployments.split(",")
    check_names(searchers, names)
    configs = {name: deployment_config(DEPLOYMENTS[name], args.episode_steps, args.config) for name in names}
    earlier = earlier_runs(args.out, run_settings(args), configs) if args.merge else {}
    caches: dict[str, dict] = {}
    deployments = {name: build_deployment(name, DEPLOYMENTS[name], args.episode_steps, args.config, caches)
                   for name in names}
    if args.merge:  # the teacher and the device too, now that they are built: still before any search
        check_earlier(args.out, earlier, {name: deployment_settings(d.bench) for name, d in deployments.items()})
        for line in baseline_drift(earlier, deployments):
            print(line, flush=True)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {s: [{**r, "reused": True} for r in runs] for s, runs in by_searcher.items()}
        for name, by_searcher in earlier.get("results", {}).items()
    }
    for dname, d in deployments.items():
        reward = make_reward(d.config, d.baseline)
        print(f"\n{dname}: baseline val acc {d.baseline.accuracy:.4f}, {d.baseline.latency_ms:.3f} ms; {reward}",
              flush=True)
        kept = {k: v for k, v in results.get(dname, {}).items() if k not in searchers}
        results[dname] = {**kept, **{s: [] for s in searchers}}
        for seed in seeds:
            for sname in searchers:
                t0 = time.perf_counter()
                if sname in DETERMINISTIC and results[dname][sname]:
                    # the same policies for every seed: this run's first one, said in its row
                    run = {**results[dname][sname][0], "seed": seed, "same_as_seed": seeds[0]}
                    results[dname][sname].append(run)
                    continue
                records, notes = search_run(d, sname, seed, args.episodes)
                run = summarize_run(d, records)
                run["seed"], run["seconds"] = seed, time.perf_counter() - t0
                proposals = ""
                if notes.get("proposals"):  # the surrogate searchers: whose models the real episodes measured
                    run["proposals"] = notes["proposals"]
                    proposals = "  proposals " + ", ".join(f"{k} {v}" for k, v in notes["proposals"].items())
                if notes.get("predictor"):  # the accuracy regressor last chosen, and every kind's cross-validated tau
                    run["predictor"] = notes["predictor"]
                    proposals += f"  predictor {notes['predictor']['kind']}"
                results[dname][sname].append(run)
                print(f"  seed {seed} {sname:<19} best {run['best']}  feasible {run['feasible']:.0%}  "
                      f"near best at {run['to_near_best']}{proposals}  ({run['seconds']:.0f} s)", flush=True)
        save(args, results, deployments, started)
    print()
    kinds = {name: m["kind"] for name, m in json.loads(args.out.read_text())["deployments"].items()}
    print(table(results, kinds, args.episodes, f"an earlier run in {args.out} (--merge)"))
    print(f"\n{args.episodes} episodes, seeds {args.seeds}, episode recovery "
          f"{next(iter(deployments.values())).config.recovery.episode_steps} steps, "
          f"{time.perf_counter() - started:.0f} s in all")


def check_names(searchers: list[str], deployments: list[str]) -> None:
    """SystemExit in one line, before any workbench is built, for a searcher or deployment this
    bench does not know."""
    for what, given, known in (("searcher", searchers, (*SEARCHERS, *ABLATIONS)), ("deployment", deployments, DEPLOYMENTS)):
        unknown = [n for n in given if n not in known]
        if unknown:
            raise SystemExit(f"error: unknown {what} {', '.join(map(repr, unknown))}: use one of {', '.join(known)}")


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's own settings that change every deployment's rows."""
    return {"episodes": args.episodes, "seeds": args.seeds}


def earlier_runs(out: Path, run: dict[str, Any], configs: dict[str, DeploymentConfig]) -> dict[str, Any]:
    """--merge: what `out` holds, if it was run with `run`'s settings and each deployment of
    `configs` it holds with the same resolved config (the teacher and device are checked once
    built: `check_earlier`); else SystemExit in one line naming what differs."""
    if not out.is_file():
        return {}
    data = json.loads(out.read_text())
    check_earlier(out, data, {name: {"config": config_settings(c)} for name, c in configs.items()}, run)
    return data


def check_earlier(out: Path, data: dict[str, Any], settings: dict[str, dict[str, Any]],
                  run: dict[str, Any] | None = None) -> None:
    """SystemExit in one line unless `data` (an earlier --out) holds `run` and, of each deployment
    in `settings` that it holds, the same keys with the same values."""
    checks = [("", data.get("settings"), run)] if run is not None else []
    for name, now in settings.items():
        if name in data.get("deployments", {}):
            recorded = data["deployments"][name].get("settings")
            before = None if recorded is None else {k: v for k, v in recorded.items() if k in now}
            checks.append((f"{name}: ", before, now))
    for what, before, now in checks:
        verdict = compare(before, now)
        if not verdict:
            raise SystemExit(f"--merge: {out} was run with other settings ({what}{verdict.reason}): "
                             "use another --out or remove it")


def baseline_drift(earlier: dict[str, Any], deployments: dict[str, Deployment], tolerance: float = 0.02) -> list[str]:
    """--merge: a line per deployment whose baseline latency, measured afresh, differs from the
    reused rows' by more than `tolerance`: budgets and speedups are ratios of it, so the reused
    rows were searched under limits that far apart."""
    lines = []
    for name, d in deployments.items():
        recorded = earlier.get("deployments", {}).get(name, {}).get("baseline", {}).get("latency_ms")
        if recorded:
            change = d.baseline.latency_ms / recorded - 1
            if abs(change) > tolerance:
                lines.append(f"note: {name}'s baseline measures {d.baseline.latency_ms:.3f} ms now, {recorded:.3f} ms "
                             f"when the reused rows ran ({change:+.1%}): budgets and speedups are ratios of it")
    return lines


def save(args: argparse.Namespace, results: dict, deployments: dict[str, Deployment], started: float) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(args.out.read_text())["deployments"] if args.merge and args.out.is_file() else {}
    meta |= {
        name: {"kind": d.kind, "baseline": vars(d.baseline), "overrides": DEPLOYMENTS[name],
               "episode_steps": d.config.recovery.episode_steps, "settings": deployment_settings(d.bench)}
        for name, d in deployments.items()
    }
    data = {"episodes": args.episodes, "seeds": args.seeds, "settings": run_settings(args), "deployments": meta,
            "results": results, "seconds": time.perf_counter() - started}
    args.out.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    one_line_errors(main)
