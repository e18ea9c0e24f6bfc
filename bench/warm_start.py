"""Benchmark: PPO warm-started from earlier deployments against cold PPO and the best baseline.

Source deployments (where the agent checkpoints come from) are searched first with PPO and their
agents logged to a fresh MLflow store (SQLite, under --out), exactly as `modeltailor search` logs
them. Each held-out deployment (bench/searchers.py's three: other class subsets, budgets and device
profile than the sources) is then searched with `search.warm_start: auto`, which picks the nearest
source in that store; the cold PPO runs and the baselines come from bench/searchers.py's output
(--searchers-json) for each target whose settings there equal this run's exactly (episodes, seeds;
the deployment's resolved config, teacher weights and device identity); for any other target cold
PPO is run here, without baselines. With --keep-sources the source agents an earlier run logged
under --out are reused if its settings.json equals this run's exactly (episodes; each source's
config, teacher and device), else the run is refused in one line. The output starts with what came
from an earlier run and why; reused cells are marked * in the table.

Reports per held-out deployment: the source `auto` chose, best within budget (or speedup at the
floor) after N episodes for warm PPO, cold PPO and the best baseline (mean ± sd over seeds), and
the episodes warm PPO needed to reach the cold search's final best (same seed), against the
episodes the cold search needed.

Usage: python bench/warm_start.py [--episodes 48] [--seeds 0,1,2] [--episode-steps 40]
       [--searchers-json runs/bench/searchers.json] [--out runs/bench/warm_start]
       [--config examples/digits-resnet20.yaml] [--sources src-all-45-cpu2t,...] [--targets all-30,...]
--config, --sources and --targets make a smaller run (the tests' smoke run: a tiny deployment, one
source, one target); cold rows are taken from --searchers-json only when it was run on the same config.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from _cli import one_line_errors
from _settings import (
    MARK,
    SETTINGS_FILE,
    Reuse,
    compare,
    deployment_settings,
    reusable,
    write_settings,
)
from searchers import (  # bench/searchers.py, beside this file
    DEFAULT_CONFIG,
    DEPLOYMENTS,
    ROOT,
    Deployment,
    build_deployment,
    deployment_config,
    episodes_to_reach,
    fmt,
    run_searcher,
    run_settings,
    summarize_run,
)

from modeltailor.agent.ppo import PPOSearcher
from modeltailor.experiments.search.objective import build_env, make_reward
from modeltailor.experiments.search.warm_start import publish_agent, resolve_warm_start
from modeltailor.experiments.tracking.tracker import Tracker

SOURCES: dict[str, dict[str, Any]] = {
    "src-all-45-cpu2t": {"objective.max_latency_ratio": 0.45, "device.name": "cpu-2t"},
    "src-c01234-40": {"objective.max_latency_ratio": 0.40, "classes": [0, 1, 2, 3, 4]},
    "src-all-accuracy2-cpu2t": {
        "objective": {"kind": "accuracy", "max_accuracy_drop": 2.0, "minimize": "latency"}, "device.name": "cpu-2t",
    },
}
"""Where the checkpoints come from: none shares a class subset, budget and profile with a target."""


def source_deployment(name: str, overrides: dict[str, Any], episode_steps: int | None,
                      config_path: Path = DEFAULT_CONFIG) -> Deployment:
    d = build_deployment(name, overrides, episode_steps, config_path)
    d.config = d.config.model_copy(update={"search": d.config.search.model_copy(update={"warm_start": None})})
    return d


def train_sources(args: argparse.Namespace, tracker: Tracker, sources: dict[str, Deployment]) -> None:
    for name, d in sources.items():
        checkpoint = args.out / name / "agent_checkpoint.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        env = build_env(d.bench, make_reward(d.config, d.baseline), d.baseline)
        t0 = time.perf_counter()
        PPOSearcher(seed=0, checkpoint=checkpoint).search(env, args.episodes)
        with tracker.run(name, tags={"device": d.config.device.name}):
            publish_agent(tracker, d.config, env, checkpoint)
        run = summarize_run(d, env.history)
        print(f"source {name}: PPO best {run['best']}, feasible {run['feasible']:.0%} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


def sources_settings(args: argparse.Namespace, sources: dict[str, Deployment]) -> dict[str, Any]:
    """What the source agents depend on: their episodes, each one's config, teacher and device."""
    return {"episodes": args.episodes,
            "sources": {name: deployment_settings(d.bench, d.config) for name, d in sources.items()}}


def keep_sources(args: argparse.Namespace, settings: dict[str, Any]) -> bool:
    """--keep-sources with a store under --out: reused when its settings.json equals `settings`
    exactly, else SystemExit in one line; False when the sources are to be searched here."""
    if not (args.keep_sources and (args.out / "mlflow.db").is_file()):
        return False
    verdict = reusable(args.out, settings)
    if not verdict:
        raise SystemExit(f"--keep-sources: {args.out} was run with other settings ({verdict.reason}): "
                         "drop --keep-sources or use another --out")
    return True


def cold_settings(args: argparse.Namespace, name: str, d: Deployment) -> dict[str, Any]:
    """A target's settings as bench/searchers.py records them (its config has no warm start override)."""
    config = deployment_config(DEPLOYMENTS[name], args.episode_steps, args.config)
    return {"run": run_settings(args), "deployment": deployment_settings(d.bench, config)}


def load_cold(path: Path, args: argparse.Namespace, targets: dict[str, Deployment],
              ) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """bench/searchers.py's runs of each target whose settings in `path` equal this run's exactly,
    and one line per target saying where its cold PPO and baselines come from."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    cold, lines = {}, []
    for name, d in targets.items():
        runs = data.get("results", {}).get(name, {})
        recorded = data.get("deployments", {}).get(name, {}).get("settings")
        before = {"run": data["settings"], "deployment": recorded} if recorded and "settings" in data else None
        if not path.is_file():
            verdict = Reuse(False, "no such file")
        elif "ppo" not in runs:
            verdict = Reuse(False, "no ppo runs of it")
        else:
            verdict = compare(before, cold_settings(args, name, d))
        if verdict:
            cold[name] = runs
            lines.append(f"{name}: cold PPO and baselines ({', '.join(runs)}) from {path}, settings matched")
        else:
            lines.append(f"{name}: cold PPO run here, no baselines ({path}: {verdict.reason})")
    return cold, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the deployment the sources and targets override (default: examples/digits-resnet20.yaml)")
    parser.add_argument("--sources", default=",".join(SOURCES), help="source deployments to search first")
    parser.add_argument("--targets", default=",".join(DEPLOYMENTS), help="held-out deployments (bench/searchers.py's)")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episode-steps", type=int, default=None)
    parser.add_argument("--searchers-json", type=Path, default=ROOT / "runs" / "bench" / "searchers.json")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "warm_start")
    parser.add_argument("--keep-sources", action="store_true",
                        help="reuse the sources an earlier run logged under --out instead of searching them again")
    parser.add_argument("--warm-noise", choices=["keep", "reset"], default="keep",
                        help="search.ppo.warm_noise of the warm-started searches")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "mlflow.db"
    sources = {name: source_deployment(name, SOURCES[name], args.episode_steps, args.config)
               for name in names(args.sources, SOURCES, "--sources")}
    targets = {name: build_deployment(name, {**DEPLOYMENTS[name], "search.warm_start": "auto"}, args.episode_steps,
                                      args.config)
               for name in names(args.targets, DEPLOYMENTS, "--targets")}
    settings = sources_settings(args, sources)
    kept = keep_sources(args, settings)
    cold_results, cold_lines = load_cold(args.searchers_json, args, targets)
    print("from earlier runs (reused only where their settings equal this run's exactly):")
    print("\n".join(f"  {line}" for line in [
        f"source agents: {f'from {store} (--keep-sources), settings matched' if kept else 'searched here'}",
        *cold_lines,
    ]), flush=True)
    if not kept:
        store.unlink(missing_ok=True)
        (args.out / SETTINGS_FILE).unlink(missing_ok=True)
    tracker = Tracker(f"sqlite:///{store.resolve()}", experiment="warm-start-bench")
    if not kept:
        train_sources(args, tracker, sources)
        write_settings(args.out, settings)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, report = [], {}
    for tname, d in targets.items():
        probe = build_env(d.bench, make_reward(d.config, d.baseline), d.baseline)
        warm = resolve_warm_start(d.config, probe, tracker)
        assert warm is not None, "the sources were just logged"
        source = next(r.info.run_name for r in tracker.finished_runs({}) if r.info.run_id == warm.run_id)
        if tname in cold_results:
            cold, baselines = cold_results[tname]["ppo"], {k: v for k, v in cold_results[tname].items() if k != "ppo"}
        else:
            cold = [summarize_run(d, run_searcher(d, "ppo", seed, args.episodes)) for seed in seeds]
            baselines = {}
        warm_runs = [summarize_run(d, run_searcher(d, "ppo", seed, args.episodes, warm_start=warm.path,
                                               ppo={"warm_noise": args.warm_noise}))
                     for seed in seeds]
        reach_warm, reach_cold = [], []
        for w, c in zip(warm_runs, cold, strict=True):
            reach_warm.append(episodes_to_reach(d, w["curve"], c["best"]))
            reach_cold.append(episodes_to_reach(d, c["curve"], c["best"]))
        best_name, best_runs = max(
            baselines.items(), key=lambda kv: statistics.fmean(r["best"] or 0 for r in kv[1]), default=(None, None)
        )
        rows.append((tname, source, warm_runs, cold, best_name, best_runs, reach_warm, reach_cold, d.kind))
        report[tname] = {"source": source, "warm": warm_runs, "reach_warm": reach_warm, "reach_cold": reach_cold,
                         "cold_from": str(args.searchers_json) if tname in cold_results else None,
                         "sources_from": str(store) if kept else None}
        print(f"{tname}: warm from {source}: best {[r['best'] for r in warm_runs]}, reached cold's final best at "
              f"{reach_warm} vs cold {reach_cold}", flush=True)
    run = {"episodes": args.episodes, "seeds": seeds, "episode_steps": args.episode_steps,
           "warm_noise": args.warm_noise, "config": str(args.config), "sources": list(sources),
           "targets": {name: deployment_settings(d.bench, d.config) for name, d in targets.items()}}
    (args.out / f"warm_start-{args.warm_noise}.json").write_text(json.dumps({"settings": run, "targets": report}, indent=1))
    print()
    print("| held-out deployment | warm start from | warm PPO | cold PPO | best baseline | episodes to cold's final best: warm / cold (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for tname, source, warm_runs, cold, best_name, best_runs, reach_warm, reach_cold, kind in rows:
        old = f" {MARK}" if tname in cold_results else ""
        baseline = f"{best_name} {fmt([r['best'] for r in best_runs], kind)}{old}" if best_runs else "-"
        print(f"| {tname} | {source}{f' {MARK}' if kept else ''} | {fmt([r['best'] for r in warm_runs], kind)} | "
              f"{fmt([r['best'] for r in cold], kind)}{old} | {baseline} | {median(reach_warm, args.episodes)} / {median(reach_cold, args.episodes)} |")
    reused = [f"cold PPO and baselines from {args.searchers_json}"] if cold_results else []
    reused += [f"source agents from {store}"] if kept else []
    if reused:
        print(f"\n{MARK} reused from an earlier run, its settings matched this run's exactly: {'; '.join(reused)}")
    print(f"\n{args.episodes} episodes, seeds {args.seeds}, {time.perf_counter() - started:.0f} s in all "
          f"('>{args.episodes}': the median search never got there)")


def names(given: str, known: dict[str, Any], option: str) -> list[str]:
    """The comma-separated names of `given`, each one of `known`, else SystemExit in one line."""
    chosen = given.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"{option}: unknown {', '.join(unknown)}: choose from {', '.join(known)}")
    return chosen


def median(values: list[int | None], episodes: int) -> str:
    """Median episodes; a search that never got there counts as beyond the budget (">N")."""
    m = statistics.median([v if v is not None else episodes + 1 for v in values])
    return f">{episodes}" if m > episodes else f"{m:.0f}"


if __name__ == "__main__":
    one_line_errors(main)
