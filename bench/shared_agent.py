"""Benchmark: many deployments with one shared experience and agent, against independent random searches.

The deployments (default twelve) are the default model's (a deployment YAML, default
examples/digits-resnet20.yaml) class subsets x latency budgets x device profiles: all classes,
digits 0-4 and digits 0, 3, 7; 30% and 50% of the baseline's latency; cpu-1t and cpu-2t. Two arms,
each one campaign on a local Ray (`run_campaign`, the same concurrency and CPUs per trial), each
with its own cache folder (the teacher copied in; an empty latency cache and experience) and its
own MLflow store:

  shared       the default searcher (`ppo`, surrogate-assisted), `--shared-episodes` real episodes
               per deployment (default 16), `search.experience: auto` and `search.warm_start: auto`:
               each deployment's surrogate starts from every episode the earlier ones measured and
               its agent from the nearest earlier agent. The first deployments start with nothing:
               their seed episodes come out of their budget.
  independent  random search, `--independent-episodes` real episodes per deployment (default 48),
               no experience, no warm start: what a user would run once per deployment.

Both arms recover the same way (the YAML's recovery, `--episode-steps` and `--final-steps`
overriding it for both). It prints each arm's wall-clock and their ratio, the sum of the searches'
own seconds (without the campaign's start and the final distillation) and their ratio, and per
deployment both arms' final measurement (summary.json: test accuracy, speedup, memory reduction,
objective met, taken against the baseline timed alternately at the end) and the shared arm's
score minus the independent one's. Results and settings go to OUT/shared-agent.json; nothing is
reused from an earlier run (a rerun into the same --out refuses: pick another folder).

Usage: python bench/shared_agent.py [--config examples/digits-resnet20.yaml] [--shared-episodes 16]
[--independent-episodes 48] [--episode-steps 20] [--final-steps 800] [--subsets all,0-4,0/3/7]
[--budgets 0.3,0.5] [--devices cpu-1t,cpu-2t] [--concurrent 2] [--out runs/bench/shared-agent]
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
from _settings import config_settings
from campaign import Arm, arm_cache, arm_env, environment, lock_folder, run_parallel, warm_teachers

from modeltailor.experiments.spec.campaign import Campaign, CampaignSpec, build_campaign
from modeltailor.experiments.spec.deployment import load_config

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = {"all": None, "0-4": [0, 1, 2, 3, 4], "0/3/7": [0, 3, 7]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "digits-resnet20.yaml",
                        help="the deployment every deployment derives from")
    parser.add_argument("--shared-episodes", type=int, default=16, help="real episodes per deployment, shared arm")
    parser.add_argument("--independent-episodes", type=int, default=48,
                        help="real episodes per deployment, independent random arm")
    parser.add_argument("--episode-steps", type=int, default=20, help="recovery.episode_steps, both arms")
    parser.add_argument("--final-steps", type=int, default=None, help="recovery.final_steps, both arms (default: the YAML's)")
    parser.add_argument("--subsets", default="all,0-4,0/3/7", help=f"class subsets among {', '.join(SUBSETS)}")
    parser.add_argument("--budgets", default="0.3,0.5", help="latency budgets, fractions of the baseline's")
    parser.add_argument("--devices", default="cpu-1t,cpu-2t", help="device profiles")
    parser.add_argument("--concurrent", type=int, default=2, help="campaign trials at once (both arms)")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per trial (both arms)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "shared-agent")
    args = parser.parse_args(argv)
    args.subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
    unknown = [s for s in args.subsets if s not in SUBSETS]
    if unknown:
        parser.error(f"--subsets: unknown {', '.join(unknown)}; pick among {', '.join(SUBSETS)}")
    try:
        args.budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--budgets {args.budgets!r}: give fractions such as 0.3,0.5")
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if min(args.shared_episodes, args.independent_episodes, args.episode_steps) < 1 or not args.budgets:
        parser.error("episodes and --episode-steps must be at least 1, and --budgets not empty")
    return args


def deployments(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Class subsets x budgets x devices, ordered so that neighbours differ (the shared arm's next
    deployment is never a repeat of the one before it)."""
    entries = []
    for budget in args.budgets:
        for subset in args.subsets:
            for device in args.devices:
                entries.append({
                    "name": f"{subset.replace('/', '').replace('-', 'to')}-{round(budget * 100)}-{device}",
                    "classes": SUBSETS[subset],
                    "device": {"name": device},
                    "objective": {"kind": "budget", "max_latency_ratio": budget},
                })
    return [{k: v for k, v in e.items() if v is not None} for e in entries]


def arm_campaign(args: argparse.Namespace, arm: str, tracking_uri: str) -> Campaign:
    base = load_config(args.config).model_dump(mode="json", exclude={"name"})
    base["recovery"]["episode_steps"] = args.episode_steps
    if args.final_steps is not None:
        base["recovery"]["final_steps"] = args.final_steps
    base["tracking"] = {"enabled": True, "uri": tracking_uri, "experiment": f"bench-{arm}"}
    if arm == "shared":
        base["search"].update(searcher="ppo", episodes=args.shared_episodes, experience="auto", warm_start="auto")
    else:
        base["search"].update(searcher="random", episodes=args.independent_episodes, experience="off",
                              warm_start=None)
    spec = CampaignSpec.model_validate({
        "name": f"bench-{arm}", "base": base, "deployments": deployments(args),
        "resources": {"cpus": args.cpus, "gpus": 0}, "max_concurrent": args.concurrent,
    })
    return build_campaign(spec, ROOT)


def search_seconds(out: Path, names: list[str]) -> dict[str, float]:
    """Each deployment's own search time (summary.json), without the campaign's start or the finalists."""
    seconds = {}
    for name in names:
        summary = out / name / "summary.json"
        if summary.is_file():
            seconds[name] = float(json.loads(summary.read_text())["search_seconds"])
    return seconds


def score(row: dict[str, Any]) -> float | None:
    """The deployment's score: final test accuracy (points) when the budget is met, else None."""
    result = row.get("result") or {}
    if row.get("state") != "finished" or not result.get("objective_met"):
        return None
    return 100.0 * float(result["accuracy"])


def print_table(arms: dict[str, Arm], names: list[str]) -> list[dict[str, Any]]:
    shared, independent = ({r["name"]: r for r in arms[a].deployments} for a in ("shared", "independent"))
    rows = []
    print("\n| deployment | arm | real episodes | test acc | speedup | memory | budget met | shared - independent (points) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        mine, theirs = shared.get(name, {}), independent.get(name, {})
        a, b = score(mine), score(theirs)
        diff = f"{a - b:+.2f}" if a is not None and b is not None else "n/a (budget missed)"
        for label, row in (("shared", mine), ("independent", theirs)):
            result = row.get("result") or {}
            cells = (f"{100 * result['accuracy']:.2f}", f"{result['speedup']:.2f}x", f"{result['memory_reduction']:.2f}x",
                     "yes" if result.get("objective_met") else "no") if result else (row.get("state", "missing"), "", "", "")
            print(f"| {name if label == 'shared' else ''} | {label} | {row.get('episodes', '')} | "
                  f"{' | '.join(cells)} | {diff if label == 'shared' else ''} |")
        rows.append({"deployment": name, "shared": a, "independent": b, "difference": None if a is None or b is None else a - b})
    return rows


def run_arm(args: argparse.Namespace, arm: str, teachers: list[Path], lock: str) -> Arm:
    folder = args.out / arm
    campaign = arm_campaign(args, arm, f"sqlite:///{(folder / 'mlflow.db').resolve()}")
    episodes = args.shared_episodes if arm == "shared" else args.independent_episodes
    print(f"\n== {arm}: {len(campaign.deployments)} deployments, {episodes} real episodes each "
          f"({'ppo, shared experience and agent' if arm == 'shared' else 'random, nothing shared'})", flush=True)
    with environment(arm_env(arm_cache(folder / "cache", teachers), lock)):
        result = run_parallel(campaign, folder / "campaign")
    for row in result.deployments:
        row["episodes"] = episodes
    result.name = arm
    result.extra["search_seconds"] = search_seconds(folder / "campaign", list(campaign.deployments))
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = args.out / "shared-agent.json"
    if report.exists() or (args.out / "shared").exists():
        raise SystemExit(f"{args.out} holds an earlier run: this benchmark reuses nothing, give another --out")
    probe = arm_campaign(args, "independent", "sqlite:///unused.db")
    names = list(probe.deployments)
    print(f"bench/shared_agent.py: {len(names)} deployments of {args.config.name}; recovery "
          f"{args.episode_steps} steps per episode, {next(iter(probe.deployments.values())).recovery.final_steps} "
          f"final steps; {args.concurrent} trials at once, {args.cpus:g} CPU each", flush=True)
    teachers = warm_teachers(probe)  # before any clock starts; each arm gets its own copy
    lock = lock_folder()
    arms = {arm: run_arm(args, arm, teachers, lock) for arm in ("shared", "independent")}
    rows = print_table(arms, names)
    shared, independent = arms["shared"], arms["independent"]
    own = {a: sum(arms[a].extra["search_seconds"].values()) for a in arms}
    print(f"\nwall-clock: shared {shared.wall_seconds:.0f} s, independent {independent.wall_seconds:.0f} s, "
          f"ratio {shared.wall_seconds / independent.wall_seconds:.2f}")
    print(f"searches alone (sum of search_seconds): shared {own['shared']:.0f} s, independent "
          f"{own['independent']:.0f} s, ratio {own['shared'] / max(own['independent'], 1e-9):.2f}")
    both = [r["difference"] for r in rows if r["difference"] is not None]
    at_least = sum(d >= 0 for d in both)
    print(f"scores: shared >= independent on {at_least} of {len(both)} deployments where both met the budget"
          + (f"; median difference {statistics.median(both):+.2f} points" if both else "")
          + f"; budget met: shared {sum(r['shared'] is not None for r in rows)}, "
          f"independent {sum(r['independent'] is not None for r in rows)} of {len(rows)}")
    settings = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "config": config_settings(next(iter(probe.deployments.values())))}
    report.write_text(json.dumps({
        "settings": settings, "rows": rows,
        "arms": {a: {"wall_seconds": arms[a].wall_seconds, "search_seconds": arms[a].extra["search_seconds"],
                     "deployments": arms[a].deployments} for a in arms},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2, default=str))
    print(f"results and settings: {report}")


if __name__ == "__main__":
    one_line_errors(main)
