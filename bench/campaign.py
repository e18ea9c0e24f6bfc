"""Benchmark: a campaign (2 deployments at once on Ray Tune) vs the same searches one after another.

Measures, in one process:
1. speed: the example campaign's deployments searched one after another (`run_search` in a loop) and
   as a campaign with `--concurrent` trials at once (`run_campaign`), same settings, tracking off:
   wall time, deployments per hour, and the campaign's speed-up;
2. measurement fidelity: a fixed set of ONNX models timed alone on cpu-1t and cpu-2t, then again
   while a background campaign trains (`modeltailor campaign` in a subprocess), once with the host
   core lock on and once with MODELTAILOR_CORES_LOCK=off: per model the in-campaign/alone ratio;
3. every deployment's speedup, accuracy drop and objective, in both arms;
and a note, computed from the numbers, of where the host's cores limit the campaign's speed-up.
Each arm gets its own cache folder (the teachers copied in, an empty latency cache), so no arm
reuses another's measurements. Everything goes to --json (default OUT/bench-campaign.json).
Usage: python bench/campaign.py [--episodes 12] [--final-steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _cli import one_line_errors

from modeltailor.common import cores
from modeltailor.devices.measurement import LatencyStats
from modeltailor.errors import ModelTailorError
from modeltailor.experiments.fleet.campaign import run_campaign
from modeltailor.experiments.spec.campaign import Campaign, load_campaign

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("cpu-1t", "cpu-2t")
MODELS = {  # name: (zoo model, width); random weights (latency does not depend on their values)
    "resnet20-w1.00": ("resnet20", 1.0),
    "resnet20-w0.75": ("resnet20", 0.75),
    "resnet20-w0.50": ("resnet20", 0.5),
    "resnet20-w0.25": ("resnet20", 0.25),
    "mobilenetv2-w1.00": ("mobilenetv2", 1.0),
    "vgg-w0.50": ("vgg", 0.5),
}
QUICK_MODELS = ("resnet20-w1.00", "resnet20-w0.25")
ENV_KEYS = ("MODELTAILOR_CACHE", cores.LOCK_ENV)


@dataclass
class Arm:
    """One way of running the campaign's deployments and what it took."""

    name: str
    wall_seconds: float
    deployments: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return sum(d["state"] == "finished" for d in self.deployments)

    @property
    def per_hour(self) -> float:
        return self.finished * 3600 / self.wall_seconds if self.wall_seconds > 0 else 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "campaign-digits.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-campaign")
    parser.add_argument("--json", type=Path, default=None, help="default: OUT/bench-campaign.json")
    parser.add_argument("--episodes", type=int, default=None, help="search episodes (default: the YAML's)")
    parser.add_argument("--final-steps", type=int, default=None, help="recovery.final_steps (default: the YAML's)")
    parser.add_argument("--concurrent", type=int, default=2, help="campaign trials at once")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per campaign trial")
    parser.add_argument("--sequential-threads", type=int, default=0,
                        help="torch threads of the one-after-another searches (0: torch's default, as `modeltailor search`)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per fidelity measurement")
    parser.add_argument("--search-runs", type=int, default=None, help="device.runs of every deployment (default: the YAML's)")
    parser.add_argument("--background-episodes", type=int, default=48, help="episodes of the background campaign")
    parser.add_argument("--wait-timeout", type=float, default=900.0, help="seconds to wait for the background to train")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for a quiet host before 'alone'")
    parser.add_argument("--parts", default="speed,fidelity", help="speed, fidelity or both")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 episodes, 10 final steps, 20 runs, 2 models")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.final_steps, args.runs, args.search_runs = 2, 10, 20, 20
        args.background_episodes = 8
    args.models = QUICK_MODELS if args.quick else tuple(MODELS)
    args.json = args.json or args.out / "bench-campaign.json"
    return args


def load(args: argparse.Namespace) -> Campaign:
    """The campaign with the bench's settings; tracking off for every arm."""
    tracking = load_campaign(args.config).tracking.model_dump(mode="json")
    overrides: dict[str, Any] = {
        "max_concurrent": args.concurrent, "resources.cpus": args.cpus,
        "deployment.search.episodes": args.episodes, "deployment.recovery.final_steps": args.final_steps,
        "deployment.device.runs": args.search_runs, "tracking": {**tracking, "enabled": False},
    }
    return load_campaign(args.config, overrides)


@contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """os.environ with `values` set (None: removed) for the block, restored after."""
    saved = {key: os.environ.get(key) for key in values}
    _set_env(values)
    try:
        yield
    finally:
        _set_env(saved)


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def lock_folder() -> str:
    """The host's core lock folder: MODELTAILOR_CORES_LOCK where it names one, else <cache>/locks."""
    directory = cores.lock_dir()
    if directory is None:  # turned off here: still a folder for the lock-on measurements
        with environment({cores.LOCK_ENV: None}):
            directory = cores.lock_dir()
    return str(directory)


def warm_teachers(campaign: Campaign) -> list[Path]:
    """Train (or find) each deployment's teacher in the usual cache, before any clock starts."""
    from modeltailor.experiments.search.teacher import load_teacher, teacher_cache_path
    from modeltailor.experiments.search.workbench import load_deployment_data

    paths: list[Path] = []
    for config in campaign.deployments.values():
        path = teacher_cache_path(config)
        if path not in paths:
            full, _, _ = load_deployment_data(config)
            _, source = load_teacher(config, full)
            print(f"teacher: {source}")
            paths.append(path)
    return [p for p in paths if p.is_file()]


def arm_cache(folder: Path, teachers: list[Path]) -> Path:
    """A fresh cache folder for one arm: the teachers copied in, no latency cache."""
    (folder / "teachers").mkdir(parents=True, exist_ok=True)
    for path in teachers:
        shutil.copy2(path, folder / "teachers" / path.name)
    return folder


def arm_env(cache: Path, lock: str) -> dict[str, str | None]:
    return {"MODELTAILOR_CACHE": str(cache), cores.LOCK_ENV: lock}


# -- 1. speed: one after another vs a campaign ---------------------------------------------------


def run_sequential(campaign: Campaign, out: Path, threads: int) -> Arm:
    """Every deployment's `run_search`, one after another, in this process."""
    import torch

    from modeltailor.experiments.fleet.campaign import result_row
    from modeltailor.experiments.search.run import run_search

    if threads > 0:
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name, config in campaign.deployments.items():
        began = time.perf_counter()
        row: dict[str, Any] = {"name": name, "device": config.device.name, "error": None, "result": None}
        try:
            run = run_search(config, out / name)
            row["state"] = "interrupted" if run.result.interrupted else "finished"
            row["result"] = result_row(run.summary)
        except ModelTailorError as exc:
            row["state"], row["error"] = "failed", str(exc)
        row["seconds"] = round(time.perf_counter() - began, 3)
        rows.append(row)
        print(f"  sequential: {name} {row['state']} in {row['seconds']:.0f} s")
    wall = time.perf_counter() - started
    return Arm("sequential", wall, rows, {"torch_threads": torch.get_num_threads()})


class _Printer:
    """Campaign reporter: its messages printed, the live table left out."""

    def message(self, text: str) -> None:
        print(f"  campaign: {text}")

    def update(self, statuses: list[Any]) -> None:
        pass


def run_parallel(campaign: Campaign, out: Path) -> Arm:
    """The campaign on a local Ray, `max_concurrent` trials at once."""
    started = time.perf_counter()
    run = run_campaign(campaign, out, reporter=_Printer())
    wall = time.perf_counter() - started
    rows = [
        {"name": s.name, "device": s.device, "state": s.state, "seconds": s.seconds, "error": s.error,
         "result": s.result}
        for s in run.statuses
    ]
    for row in rows:
        print(f"  campaign: {row['name']} {row['state']} in {row['seconds'] or 0:.0f} s (trial)")
    extra = {"campaign_wall_seconds": run.wall_seconds, "cluster": run.cluster,
             "max_concurrent": campaign.spec.max_concurrent, "cpus_per_trial": campaign.spec.resources.cpus}
    return Arm("campaign", wall, rows, extra)


def speed_part(args: argparse.Namespace, campaign: Campaign, run_dir: Path, teachers: list[Path],
               lock: str) -> tuple[Arm, Arm]:
    print(f"\n== speed: {len(campaign.deployments)} deployments one after another, then as a campaign")
    with environment(arm_env(arm_cache(run_dir / "cache" / "sequential", teachers), lock)):
        sequential = run_sequential(campaign, run_dir / "sequential", args.sequential_threads)
    with environment(arm_env(arm_cache(run_dir / "cache" / "campaign", teachers), lock)):
        parallel = run_parallel(campaign, run_dir / "campaign")
    print(f"{'arm':<11} {'finished':>8} {'wall s':>8} {'deployments/h':>13}")
    for arm in (sequential, parallel):
        print(f"{arm.name:<11} {arm.finished:>4}/{len(arm.deployments):<3} {arm.wall_seconds:>8.0f} {arm.per_hour:>13.1f}")
    print(
        f"campaign speed-up: {sequential.wall_seconds / parallel.wall_seconds:.2f}x "
        f"({campaign.spec.max_concurrent} trials at once, {campaign.spec.resources.cpus:g} CPU each; "
        f"one after another: {sequential.extra['torch_threads']} torch threads)"
    )
    return sequential, parallel


def deployments_table(arms: list[Arm]) -> None:
    print(f"\n{'deployment':<12} {'device':<7} {'arm':<11} {'state':<9} {'seconds':>7} {'speedup':>8} "
          f"{'acc drop':>8} {'objective':>9}")
    for arm in arms:
        for d in arm.deployments:
            r = d["result"] or {}
            speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
            drop = f"{r['accuracy_drop']:+.2f}" if "accuracy_drop" in r else "-"
            met = {True: "met", False: "missed"}.get(bool(r["objective_met"]), "-") if "objective_met" in r else "-"
            print(f"{d['name']:<12} {d['device']:<7} {arm.name:<11} {d['state']:<9} {d['seconds'] or 0:>7.0f} "
                  f"{speedup:>8} {drop:>8} {met:>9}")


# -- 2. measurement fidelity: alone vs during a campaign ----------------------------------------


def export_models(names: tuple[str, ...], campaign: Campaign) -> dict[str, bytes]:
    """The fixed models, shaped like the campaign's data (digits: 1x32x32), exported to ONNX."""
    import torch

    from modeltailor.compressors.export import export_onnx
    from modeltailor.experiments.search.workbench import load_deployment_data
    from modeltailor.models import build_model

    full, _, _ = load_deployment_data(next(iter(campaign.deployments.values())))
    shape = (full.in_channels, full.input_size, full.input_size)
    models: dict[str, bytes] = {}
    for name in names:
        zoo, width = MODELS[name]
        torch.manual_seed(0)
        model = build_model(zoo, in_channels=full.in_channels, input_size=full.input_size,
                            num_classes=full.num_classes, width=width)
        models[name] = export_onnx(model, shape)
    return models


def measure_all(models: dict[str, bytes], runs: int) -> dict[str, dict[str, LatencyStats]]:
    """device -> model -> latency, every model timed on every device, one after another."""
    from modeltailor.devices.profiles import get_device

    stats: dict[str, dict[str, LatencyStats]] = {}
    for name in DEVICES:
        device = get_device(name, runs=runs, warmup=20)
        stats[name] = {model: device.measure(data).latency for model, data in models.items()}
    return stats


def campaign_command(args: argparse.Namespace, out: Path) -> list[str]:
    cli = Path(sys.executable).parent / "modeltailor"
    command = [str(cli)] if cli.is_file() else [sys.executable, "-m", "modeltailor.service.cli"]
    return [*command, "campaign", "--config", str(args.config), "--out", str(out), "--no-tracking",
            "--episodes", str(args.background_episodes), "--max-concurrent", str(args.concurrent),
            "--cpus", f"{args.cpus:g}"]


def start_background(args: argparse.Namespace, out: Path) -> subprocess.Popen[bytes]:
    """`modeltailor campaign` in its own process group, with this process's environment."""
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("wb") as log:
        return subprocess.Popen(campaign_command(args, out), stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ), cwd=ROOT, start_new_session=True)


def episode_lines(out: Path) -> dict[str, int]:
    """Finished episodes per deployment folder of a running campaign."""
    counts = {}
    for path in sorted(out.glob("*/episodes.jsonl")):
        counts[path.parent.name] = sum(1 for line in path.read_text().splitlines() if line.strip())
    return counts


def wait_training(out: Path, trials: int, timeout: float, proc: subprocess.Popen[bytes]) -> float:
    """Seconds until `trials` deployments of the background campaign have finished an episode."""
    started = time.perf_counter()
    while sum(n > 0 for n in episode_lines(out).values()) < trials:
        if proc.poll() is not None:
            raise RuntimeError(f"the background campaign exited ({proc.returncode}): see {out}.log")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the background campaign did not train within {timeout:.0f} s: see {out}.log")
        time.sleep(2.0)
    return time.perf_counter() - started


def stop_background(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to the campaign (it shuts its Ray down), then its process group killed if need be."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this bench started: leftovers of its Ray
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole host so far (/proc/stat; zeros where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_since(start: tuple[int, int]) -> float:
    """Fraction of the host's CPU time spent busy since `start` (every core together)."""
    busy, total = cpu_ticks()
    return (busy - start[0]) / (total - start[1]) if total > start[1] else float("nan")


def host_busy(seconds: float = 2.0) -> float:
    start = cpu_ticks()
    time.sleep(seconds)
    return busy_since(start)


def settle(limit: float, quiet: float = 0.25) -> float:
    """Wait (at most `limit` seconds) until the host is quiet, e.g. a stopped Ray gone; its busy fraction."""
    deadline = time.perf_counter() + limit
    busy = host_busy()
    while busy > quiet and time.perf_counter() < deadline:
        busy = host_busy()
    return busy


def during_campaign(args: argparse.Namespace, out: Path, models: dict[str, bytes]) -> dict[str, Any]:
    """The models measured while a background campaign trains; what the background did meanwhile."""
    proc = start_background(args, out)
    try:
        waited = wait_training(out, min(args.concurrent, 2), args.wait_timeout, proc)
        before = episode_lines(out)
        started, ticks = time.perf_counter(), cpu_ticks()
        stats = measure_all(models, args.runs)
        seconds, busy = time.perf_counter() - started, busy_since(ticks)
        after, alive = episode_lines(out), proc.poll() is None
    finally:
        stop_background(proc)
    progress = sum(after.values()) - sum(before.values())
    return {"stats": stats, "waited_seconds": round(waited, 1), "measure_seconds": round(seconds, 1),
            "host_busy_during": busy,
            "background_episodes_during": progress, "background_alive_at_end": alive}


def quietest(*passes: dict[str, dict[str, LatencyStats]]) -> dict[str, dict[str, LatencyStats]]:
    """Per device and model, the pass with the lowest latency (load only ever adds time)."""
    return {device: {model: min((p[device][model] for p in passes), key=lambda s: s.median_ms) for model in models}
            for device, models in passes[0].items()}


def ratio_rows(alone: dict[str, dict[str, LatencyStats]], loaded: dict[str, dict[str, LatencyStats]]
               ) -> list[dict[str, Any]]:
    rows = []
    for device, models in alone.items():
        for model, quiet in models.items():
            busy = loaded[device][model]
            pooled = (busy.pooled_median_ms or busy.median_ms) / (quiet.pooled_median_ms or quiet.median_ms)
            rows.append({"model": model, "device": device, "alone_ms": quiet.median_ms, "campaign_ms": busy.median_ms,
                         "ratio": busy.median_ms / quiet.median_ms, "pooled_ratio": pooled,
                         "alone": quiet.to_dict(), "campaign": busy.to_dict()})
    return rows


def summarize(rows: list[dict[str, Any]], key: str = "ratio") -> dict[str, float]:
    ratios = [r[key] for r in rows]
    return {"median": statistics.median(ratios), "max": max(ratios), "min": min(ratios),
            "max_abs_dev": max(abs(r - 1) for r in ratios)}


def fidelity_pass(args: argparse.Namespace, run_dir: Path, label: str, lock: str, models: dict[str, bytes],
                  teachers: list[Path]) -> dict[str, Any]:
    """Alone (before and after), then during a background campaign, MODELTAILOR_CORES_LOCK=`lock` for all."""
    cache = arm_cache(run_dir / "cache" / f"fidelity-{label}", teachers)
    with environment(arm_env(cache, lock)):
        busy_before = settle(args.settle)
        ticks = cpu_ticks()
        before = measure_all(models, args.runs)
        busy_alone = busy_since(ticks)
        loaded = during_campaign(args, run_dir / f"fidelity-{label}", models)
        settle(args.settle)
        after = measure_all(models, args.runs)
    rows = ratio_rows(quietest(before, after), loaded.pop("stats"))
    medians = {"before": before, "after": after}
    alone = {when: {d: {m: v.median_ms for m, v in ms.items()} for d, ms in s.items()} for when, s in medians.items()}
    result = {"lock": lock, "host_busy_before_alone": busy_before, "host_busy_alone": busy_alone, **loaded,
              "alone_ms": alone, "rows": rows, "summary": summarize(rows), "pooled_summary": summarize(rows, "pooled_ratio")}
    print_fidelity(label, result)
    return result


def print_fidelity(label: str, result: dict[str, Any]) -> None:
    print(f"\n-- core lock {label} ({cores.LOCK_ENV}={result['lock']}); host CPU busy (all cores): "
          f"{result['host_busy_before_alone']:.0%} before 'alone', {result['host_busy_alone']:.0%} while timing alone, "
          f"{result['host_busy_during']:.0%} while timing during the campaign ({result['measure_seconds']:.0f} s; "
          f"the background finished {result['background_episodes_during']} episodes meanwhile"
          f"{'' if result['background_alive_at_end'] else ' and ENDED before the measurements did'})")
    if result["host_busy_before_alone"] > 0.25:
        print("WARNING: the host was busy before the 'alone' measurements (other processes): the ratios mean little")
    print("alone: the quieter of a measurement before the campaign and one after it")
    print(f"{'model':<18} {'device':<7} {'alone ms':>9} {'campaign ms':>11} {'ratio':>6} {'pooled':>7}")
    for r in result["rows"]:
        print(f"{r['model']:<18} {r['device']:<7} {r['alone_ms']:>9.3f} {r['campaign_ms']:>11.3f} "
              f"{r['ratio']:>6.2f} {r['pooled_ratio']:>7.2f}")
    s, p = result["summary"], result["pooled_summary"]
    print(f"in-campaign/alone: median {s['median']:.3f}, range {s['min']:.3f}-{s['max']:.3f}, "
          f"max |ratio-1| {s['max_abs_dev']:.3f}; pooled medians: median {p['median']:.3f}, "
          f"max |ratio-1| {p['max_abs_dev']:.3f}")


def fidelity_part(args: argparse.Namespace, campaign: Campaign, run_dir: Path, teachers: list[Path],
                  lock: str) -> dict[str, Any]:
    print(f"\n== measurement fidelity: {len(args.models)} models x {len(DEVICES)} devices, {args.runs} runs, "
          f"alone vs during a {args.concurrent}-trial campaign")
    models = export_models(args.models, campaign)
    return {label: fidelity_pass(args, run_dir, label, value, models, teachers)
            for label, value in (("on", lock), ("off", "off"))}


# -- where the host limits the ratio -----------------------------------------------------------------


def makespan(seconds: list[float], slots: int) -> float:
    """Wall time of `seconds` jobs in this order on `slots` slots, each job to the first free slot."""
    free = [0.0] * max(1, slots)
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free)


def measuring_seconds(campaign: Campaign, out: Path) -> float:
    """Seconds the campaign's trials held the cores alone to time episodes (uncached ones; at least)."""
    from modeltailor.experiments.search.episodes import load_episodes

    total = 0.0
    for name, config in campaign.deployments.items():
        runs = config.device.runs + config.device.warmup
        total += sum(runs * e.latency_ms / 1000 for e in load_episodes(out / name / "episodes.jsonl") if not e.cached)
    return total


def speed_notes(campaign: Campaign, sequential: Arm, parallel: Arm, out: Path) -> tuple[list[str], dict[str, Any]]:
    cpus, slots = os.cpu_count() or 1, campaign.spec.max_concurrent
    used = slots * campaign.spec.resources.cpus
    alone = [d["seconds"] for d in sequential.deployments]
    trials = [d["seconds"] or 0.0 for d in parallel.deployments]
    slowdown = [t / a for t, a in zip(trials, alone, strict=True) if a > 0] or [float("nan")]
    ideal = sum(alone) / makespan(alone, slots)
    overhead = parallel.wall_seconds - makespan(trials, slots)
    held = measuring_seconds(campaign, out)
    numbers = {"cpus": cpus, "cpus_for_trials": used, "trial_slowdown": slowdown, "ideal_speedup": ideal,
               "overhead_seconds": overhead, "measuring_seconds": held}
    notes = [
        f"{slots} trials x {campaign.spec.resources.cpus:g} CPU = {used:g} of {cpus} cores: {max(0.0, cpus - used):g} left "
        "for the campaign process, Ray (GCS, raylet, workers) and an mlflow server when tracking is on",
        f"each trial took {statistics.median(slowdown):.2f}x (median; {min(slowdown):.2f}-{max(slowdown):.2f}) its "
        f"time alone (alone: {sequential.extra['torch_threads']} torch threads; in the campaign: "
        f"{campaign.spec.resources.cpus:g} each, the cores shared)",
        f"with no slowdown and no overhead, {slots} slots would give {ideal:.2f}x on these deployment times; "
        f"measured {sequential.wall_seconds / parallel.wall_seconds:.2f}x",
        f"campaign time outside its trials: {overhead:.0f} s of {parallel.wall_seconds:.0f} s "
        "(Ray start, teachers, trial start-up, scheduling)",
        f"the core lock: the trials' episode measurements held all cores alone for >= {held:.1f} s "
        f"({held / parallel.wall_seconds:.1%} of the campaign's wall): measurements serialize and the other "
        "trial's training waits meanwhile",
    ]
    return notes, numbers


def fidelity_notes(fidelity: dict[str, Any]) -> list[str]:
    on, off = fidelity["on"]["summary"], fidelity["off"]["summary"]
    return [
        f"timed during a campaign, latency read {on['median']:.3f}x its value alone (median; worst deviation "
        f"{on['max_abs_dev']:.1%}) with the core lock, {off['median']:.3f}x (worst {off['max_abs_dev']:.1%}) "
        f"without it: the lock takes {off['max_abs_dev'] - on['max_abs_dev']:+.1%} off the worst deviation",
    ]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    parts = set(args.parts.split(","))
    campaign = load(args)
    folder = lock_folder()  # before any arm points MODELTAILOR_CACHE elsewhere
    lock = folder if cores.lock_dir() is not None else "off"
    run_dir = args.out / time.strftime("run-%Y%m%d-%H%M%S")
    print(f"{len(campaign.deployments)} deployments from {args.config}; out {run_dir}; core lock {lock}")
    with environment({cores.LOCK_ENV: lock}):
        teachers = warm_teachers(campaign)
    report: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "cpus": os.cpu_count(), "run_dir": str(run_dir), "lock": lock}
    notes: list[str] = []
    if "speed" in parts:
        sequential, parallel = speed_part(args, campaign, run_dir, teachers, lock)
        deployments_table([sequential, parallel])
        speed, numbers = speed_notes(campaign, sequential, parallel, run_dir / "campaign")
        notes += speed
        report["speed"] = {"sequential": asdict(sequential), "campaign": asdict(parallel), "limits": numbers,
                           "speedup": sequential.wall_seconds / parallel.wall_seconds,
                           "per_hour": {"sequential": sequential.per_hour, "campaign": parallel.per_hour}}
    if "fidelity" in parts:
        report["fidelity"] = fidelity_part(args, campaign, run_dir, teachers, folder)
        notes += fidelity_notes(report["fidelity"])
    print("\nwhere this host limits the ratio:\n" + "\n".join(f"- {n}" for n in notes))
    report["notes"], report["seconds"] = notes, time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n{report['seconds']:.0f} s in all; {args.json}")


if __name__ == "__main__":
    one_line_errors(main)
