"""The experience: every real episode ever measured for a (model, data), with its deployment.

One append-only JSONL file per model and data set (`common/jsonl_log.py`: concurrent writers never
interleave, a finished record survives a kill -9, a torn line is skipped), holding one record per
real episode of every search and campaign trial:

- the deployment: model, data, class subset, objective, device profile and its measurement
  identity (host, CPU, ORT version, settings: another identity is another device to the surrogate);
- the regime: a hash of everything that changes what an episode's accuracy means (the teacher's
  recipe, the episode recovery, the channel ranking and rounding, the scoring sample). Only samples
  of this search's regime train its surrogate;
- the policy and the measured accuracy (short recovery), latency, memory, with the deployment's
  baseline (so samples become ratios the surrogate can share across deployments);
- a finalist's long-recovery accuracy, appended later as a `final` record naming its episode and
  the long recovery's settings. Paired with their episodes they teach an accuracy floor what the
  long recovery gives back (`correction_pairs`, `env.reward.RecoveryCorrection`).

Where it lives (`search.experience`): `auto`, a file under modeltailor's cache folder
(`<cache>/experience/<model>--<data>.jsonl`); a folder path, the same file name there (shared
storage for a campaign on a cluster or a team); `off`, nowhere (the search's surrogate learns from
its own episodes only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modeltailor.agent.surrogate_search import ExperienceView
from modeltailor.common.jsonl_log import JsonlLog
from modeltailor.common.storage import cache_dir
from modeltailor.compressors.policy import Policy
from modeltailor.devices.cache import identity_hash, measurement_identity
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.env.records import EpisodeRecord
from modeltailor.env.reward import Resources
from modeltailor.env.surrogate import Sample, sample_of
from modeltailor.errors import ConfigError, ModelTailorError
from modeltailor.experiments.search.objective import int8_model
from modeltailor.experiments.search.workbench import Workbench
from modeltailor.experiments.spec.deployment import DeploymentConfig

FORMAT = 1
FOLDER = "experience"


def experience_path(config: DeploymentConfig) -> Path | None:
    """The deployment's experience file; None with `search.experience: off`."""
    setting = config.search.experience
    if setting == "off":
        return None
    folder = cache_dir() / FOLDER if setting == "auto" else Path(setting).expanduser()
    model = config.model.factory or config.model.name or "model"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}--{config.data.name}")
    return folder / f"{name}.jsonl"


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A hash of the teacher's weights: the same teacher on any machine, another one after retraining."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def regime(config: DeploymentConfig, teacher: str) -> str:
    """A hash of what an episode's accuracy depends on besides the policy and the classes."""
    r, s = config.recovery, config.search
    settings = {
        "teacher": teacher,
        "model": config.model.model_dump(mode="json"), "data": config.data.model_dump(mode="json"),
        "recovery": {"steps": r.episode_steps, "batch": r.batch_size, "lr": r.lr, "t": r.temperature,
                     "alpha": r.alpha, "val_samples": r.val_samples, "seed": s.seed,
                     # BatchNorm re-estimated after the recovery (2026-12-03): an episode's accuracy
                     # means something else than before it, so earlier episodes are another regime
                     "bn": "after"},
        "importance": s.importance, "round_to": s.round_to, "precision": config.compute.precision,
    }
    if s.lowrank_scheme != "auto":  # only then: the hashes of experience recorded before it existed stay
        settings["lowrank_scheme"] = s.lowrank_scheme
    if s.downsample != 1:  # the same: episodes at another resolution are another regime
        settings["downsample"] = s.downsample
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Experience:
    """One deployment's view of its (model, data)'s experience file: what it reads and appends."""

    log: JsonlLog | None
    regime: str
    device: str
    baseline: Resources
    classes: tuple[int, ...] | None
    num_classes: int
    deployment: dict[str, Any]
    run: str
    final_recovery: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0

    @property
    def path(self) -> Path | None:
        return self.log.path if self.log is not None else None

    def samples(self) -> list[Sample]:
        """Every earlier real episode of this regime, as surrogate samples (torn lines skipped)."""
        if self.log is None:
            return []
        contents = self.log.read()
        self.skipped = contents.skipped
        samples = []
        for entry in contents.records:
            if entry.get("kind") != "episode" or entry.get("regime") != self.regime or entry.get("run") == self.run:
                continue
            try:
                samples.append(_sample(entry))
            except (KeyError, TypeError, ValueError, ModelTailorError):
                self.skipped += 1
        return samples

    def view(self, round_to: int) -> ExperienceView:
        """What the surrogate-assisted searcher is handed."""
        return ExperienceView(tuple(self.samples()), self.classes, self.num_classes, self.device, round_to)

    def append(self, record: EpisodeRecord) -> None:
        """Add a real episode (a failed one is left out: it measured nothing)."""
        if self.log is None or record.failure is not None:
            return
        self.log.append({
            "kind": "episode", "format": FORMAT, "id": f"{self.run}/{record.episode}", "run": self.run,
            "regime": self.regime, "device": self.device, "deployment": self.deployment,
            "classes": list(self.classes) if self.classes else None,
            "policy": record.policy.to_dict(), "accuracy": record.accuracy, "latency_ms": record.latency_ms,
            "memory_bytes": record.memory_bytes, "params": record.params, "macs": record.macs,
            "baseline": {"accuracy": self.baseline.accuracy, "latency_ms": self.baseline.latency_ms,
                         "memory_bytes": self.baseline.memory_bytes},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })

    def append_finals(self, finals: Sequence[tuple[int, float]]) -> None:
        """The long-recovery accuracy of finalists, by episode number."""
        if self.log is None:
            return
        self.log.extend({"kind": "final", "format": FORMAT, "of": f"{self.run}/{episode}", "regime": self.regime,
                         "final_recovery": self.final_recovery, "final_accuracy": accuracy}
                        for episode, accuracy in finals)

    def correction_pairs(self) -> list[tuple[float, float]]:
        """(episode drop, final drop) of every finalist of this regime whose long recovery had this
        search's settings, drops measured from its own deployment's baseline (a final record written
        before the settings were recorded, or naming an episode not in the file, is left out)."""
        if self.log is None:
            return []
        episodes: dict[str, dict[str, Any]] = {}
        finals: dict[str, Any] = {}
        for entry in self.log.read().records:
            if entry.get("regime") != self.regime:
                continue
            if entry.get("kind") == "episode" and isinstance(entry.get("id"), str):
                episodes[entry["id"]] = entry
            elif entry.get("kind") == "final" and entry.get("final_recovery") == self.final_recovery:
                finals[str(entry.get("of"))] = entry.get("final_accuracy")  # the latest final of an episode counts
        pairs = []
        for of, final in finals.items():
            try:
                entry = episodes[of]
                base = float(entry["baseline"]["accuracy"])
                pairs.append((base - float(entry["accuracy"]), base - float(final)))
            except (KeyError, TypeError, ValueError):
                continue
        return pairs

    def attach(self, env: CompressionEnv) -> None:
        """Append every real episode of `env` as it finishes."""
        env.callbacks.append(self.append)


def _sample(entry: dict[str, Any]) -> Sample:
    base = entry["baseline"]
    baseline = Resources(float(base["accuracy"]), float(base["latency_ms"]), float(base["memory_bytes"]))
    policy = Policy.from_dict(entry["policy"], source="experience record")
    return sample_of(policy, float(entry["accuracy"]), float(entry["latency_ms"]), float(entry["memory_bytes"]),
                     baseline, entry.get("classes"), str(entry["device"]))


def check_writable(path: Path) -> None:
    """ConfigError naming `search.experience` when its folder cannot be created or written (before
    any episode, not at the first one's end)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
        reason = "not writable"
    except OSError as exc:
        ok, reason = False, exc.strerror or exc.__class__.__name__
    if not ok or path.is_dir():
        raise ConfigError(
            f"search.experience: '{path}' cannot be written ({reason if not ok else 'a folder'}): "
            "give a folder you can write, auto, or off"
        )


def device_key(bench: Workbench) -> str:
    """The device as the surrogate tells devices apart: profile, measurement identity, int8 scope."""
    identity = bench.latency_cache.identity if bench.latency_cache is not None else measurement_identity(bench.device)
    suffix = "|int8-model" if int8_model(bench.config) else ""
    return f"{bench.config.device.name}|{identity_hash(identity)}{suffix}"


def open_experience(bench: Workbench, baseline: Resources, run: str | None = None) -> Experience:
    """The deployment's experience (reading and appending `experience_path`)."""
    config = bench.config
    path = experience_path(config)
    if path is not None:
        check_writable(path)
    objective = config.objective.model_dump(mode="json")
    return Experience(
        log=JsonlLog(path) if path is not None else None,
        regime=regime(config, teacher_fingerprint(bench.teacher)),
        device=device_key(bench),
        baseline=baseline,
        classes=tuple(bench.classes) if bench.classes else None,
        num_classes=bench.splits.num_classes,
        deployment={"name": config.name, "model": config.model.factory or config.model.name,
                    "data": config.data.name, "device": config.device.name, "objective": objective},
        run=run or uuid.uuid4().hex,
        final_recovery=final_recovery(config),
    )


def final_recovery(config: DeploymentConfig) -> dict[str, Any]:
    """The long recovery's settings a finalist's accuracy depends on (beside the regime's)."""
    r = config.recovery
    return {"steps": r.final_steps, "lr": r.final_lr, "batch": r.batch_size, "t": r.temperature, "alpha": r.alpha}


PAYS = 1.10
"""A class subset pays when its fastest episode within the floor is at least this much faster
than the fastest all-class one within the same drop."""


def fastest_within(samples: Sequence[Sample], max_drop: float) -> float | None:
    """The smallest latency ratio among `samples` whose accuracy drop is at most `max_drop`."""
    ratios = [s.latency_ratio for s in samples if s.accuracy_drop <= max_drop + 1e-12]
    return min(ratios) if ratios else None


def subset_gain(own: Sequence[Sample], prior: Sequence[Sample], device: str, max_drop: float,
                model: str) -> dict[str, Any] | None:
    """`SubsetGain`'s fields: this subset search's fastest episode within `max_drop` (a fraction)
    against earlier all-class episodes on the same device; None when either has none within it."""
    every = [s for s in prior if s.classes is None and s.device == device]
    mine, theirs = fastest_within(own, max_drop), fastest_within(every, max_drop)
    if mine is None or theirs is None:
        return None
    ratio = theirs / mine
    pays = ratio >= PAYS
    where = f"{model} on {device.split('|')[0]}"
    says = (f"the class subset pays on {model}: {1 / mine:.2f}x within the drop against {1 / theirs:.2f}x for all "
            f"classes ({ratio:.2f}x)" if pays else
            f"the class subset buys little or nothing on {where}: its fastest episode within the drop is "
            f"{1 / mine:.2f}x, all classes' {1 / theirs:.2f}x ({ratio:.2f}x, {PAYS:.2f}x needed to pay); "
            "a smaller search space (search.skip_projection, a lower search.min_keep) or another backbone may")
    return {"subset_speedup": 1 / mine, "all_class_speedup": 1 / theirs, "all_class_episodes": len(every),
            "max_drop": 100 * max_drop, "ratio": ratio, "pays": pays, "says": says}
