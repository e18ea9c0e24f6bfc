"""The settings a benchmark's results were made with, and the one rule for reusing them.

A benchmark reuses an earlier row, search or run only when the settings written beside it equal
this run's exactly, every key at every depth; a reused row is marked in every table. The settings
sit in `settings.json` in a result's folder, or under the "settings" key of a results file. They
hold the deployment's resolved config (all but its name and tracking, which change no number), a
fingerprint of the teacher's weights (`teacher_fingerprint`, as the experience keys it), the
device's measurement identity (`device_key`: profile, host, CPU, timing settings) and the script's
own arguments that change a result. Not a module of its own page: imported by the bench scripts
(`python bench/X.py` puts bench/ on sys.path).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeltailor.experiments.search.experience import device_key, teacher_fingerprint
from modeltailor.experiments.search.workbench import Workbench
from modeltailor.experiments.spec.deployment import DeploymentConfig

SETTINGS_FILE = "settings.json"
UNCHANGED = {"name", "tracking"}
"""Config keys that change no result: left out of the settings."""
SHOWN = 3
"""Differences a one-line reason names; the rest are counted."""
MARK = "*"
"""Beside a reused row in a table; the legend says where it came from."""
_MISSING = object()


@dataclass(frozen=True)
class Reuse:
    """Whether an earlier result may be reused (`bool(reuse)`), and why or why not, in a few words."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def config_settings(config: DeploymentConfig) -> dict[str, Any]:
    """The deployment's resolved config as JSON, less the keys that change no result."""
    return config.model_dump(mode="json", exclude=UNCHANGED)


def deployment_settings(bench: Workbench, config: DeploymentConfig | None = None) -> dict[str, Any]:
    """What a deployment's results depend on: `config` (default: the workbench's), the teacher's
    weights and the device's measurement identity."""
    return {
        "config": config_settings(config if config is not None else bench.config),
        "teacher": teacher_fingerprint(bench.teacher),
        "device": device_key(bench),
    }


def differences(before: Any, now: Any, key: str = "") -> list[str]:
    """Every dotted key whose value differs, as 'key <before> != <now>' (a missing one: 'none')."""
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        keys = [*now, *(k for k in before if k not in now)]
        return [line for k in keys
                for line in differences(before.get(k, _MISSING), now.get(k, _MISSING), f"{key}.{k}" if key else str(k))]
    return [] if before == now else [f"{key or 'settings'} {_shown(before)} != {_shown(now)}"]


def compare(before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> Reuse:
    """Reuse only when `before` (the earlier result's settings; None: it recorded none) equals
    `now` exactly, compared as JSON; the reason names the first keys that differ."""
    if before is None:
        return Reuse(False, "it records no settings")
    found = differences(before, json.loads(json.dumps(now)))
    if not found:
        return Reuse(True, "settings matched")
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return Reuse(False, "; ".join(found[:SHOWN]) + more)


def read_settings(folder: Path) -> dict[str, Any] | None:
    path = folder / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_settings(folder: Path, settings: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")


def reusable(folder: Path, settings: Mapping[str, Any]) -> Reuse:
    """Whether `folder`'s results were made with exactly `settings` (its settings.json)."""
    return compare(read_settings(folder), settings)


def prepare_folder(folder: Path, settings: Mapping[str, Any], done: tuple[str, ...]) -> Reuse:
    """Reuse `folder` when it holds the `done` files and was made with exactly `settings`. Else it
    is readied for a new result, `settings` written into it: a folder made with other settings (or
    none recorded) is moved aside to <folder>.stale (replacing an older one); an unfinished one
    made with the same settings is kept (a search resumes). The reason says which."""
    verdict = reusable(folder, settings)
    finished = all((folder / name).is_file() for name in done)
    if verdict and finished:
        return verdict
    if verdict:
        reason = "unfinished, made with the same settings"
    elif folder.is_dir() and any(folder.iterdir()):
        stale = folder.with_name(f"{folder.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        folder.rename(stale)
        reason = f"made with other settings ({verdict.reason}): moved aside to {stale}"
    else:
        reason = "no earlier result"
    write_settings(folder, settings)
    return Reuse(False, reason)


def legend(source: str) -> str:
    """The line under a table with reused rows."""
    return f"{MARK} reused from {source}: its settings matched this run's exactly"


def _shown(value: Any) -> str:
    text = "none" if value is _MISSING else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
