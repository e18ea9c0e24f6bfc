"""Where a search's agent starts: `search.warm_start` resolved to an agent checkpoint file.

- a path: an agent checkpoint file, or a search's output folder holding `agent_checkpoint.pt`;
- an MLflow run id: the agent checkpoint logged to that run of the deployment's tracking store;
- `auto`: the most similar finished deployment of the same model and data set in the tracking
  store: among runs whose agent has this search's observation layout and action dimensions, the one
  nearest in the deployment's observation rows (class fraction, objective, budget ratios, device
  facts), ties going to the newest. None there: a cold start, said once.

Every finished PPO search logs its agent checkpoint (`publish_agent`), tagged with what `auto`
matches on, so each deployment makes the next one's search cheaper.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeltailor.agent.ppo import checkpoint_layout
from modeltailor.common.storage import cache_dir
from modeltailor.env.compression_env import CompressionEnv
from modeltailor.errors import ConfigError, ModelTailorError
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.deployment import DeploymentConfig
from modeltailor.experiments.tracking.tracker import Tracker

ARTIFACT = f"agent/{files.AGENT_CHECKPOINT}"
AGENT_TAG = "agentCheckpoint"
LAYOUT_TAG = "agentLayout"
VECTOR_TAG = "deploymentVector"
FROM_TAG = "warmStartFrom"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class WarmStart:
    """The checkpoint a search starts from, and where it came from (a run id or a path)."""

    path: Path
    source: str
    note: str

    @property
    def run_id(self) -> str | None:
        return self.source if RUN_ID.match(self.source) else None


def model_key(config: DeploymentConfig) -> str:
    return config.model.factory or config.model.name or ""


def agent_tags(config: DeploymentConfig, env: CompressionEnv) -> dict[str, str]:
    """Tags that let a later search find this one's agent (`auto`)."""
    return {
        AGENT_TAG: ARTIFACT,
        LAYOUT_TAG: json.dumps(checkpoint_layout(env), sort_keys=True),
        VECTOR_TAG: json.dumps([round(v, 4) for v in env.context.vector()]),
        "model": model_key(config),
        "dataset": config.data.name,
    }


def publish_agent(tracker: Tracker, config: DeploymentConfig, env: CompressionEnv, checkpoint: Path) -> None:
    """Log the agent checkpoint to the active run, tagged for `auto` warm starts."""
    if not checkpoint.is_file():
        return
    tracker.log_artifact(checkpoint, "agent")
    tracker.set_tags(agent_tags(config, env))


def check_warm_start(config: DeploymentConfig, tracker: Tracker | None) -> None:
    """Fail before any training on a `search.warm_start` that cannot name a checkpoint."""
    wanted = config.search.warm_start
    if not wanted or wanted == "auto":
        return
    if RUN_ID.match(wanted) and not Path(wanted).exists():
        _from_run(wanted, tracker)
    else:
        _from_path(Path(wanted))


def resolve_warm_start(
    config: DeploymentConfig, env: CompressionEnv, tracker: Tracker | None, exclude_run: str | None = None
) -> WarmStart | None:
    """The agent checkpoint `search.warm_start` names, or None for a cold start."""
    wanted = config.search.warm_start
    if not wanted:
        return None
    if wanted == "auto":
        return _nearest(config, env, tracker, exclude_run)
    if RUN_ID.match(wanted) and not Path(wanted).exists():
        return _from_run(wanted, tracker)
    return _from_path(Path(wanted))


def _from_path(path: Path) -> WarmStart:
    file = path / files.AGENT_CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"search.warm_start: '{path}' is neither an agent checkpoint nor a search folder holding "
            f"{files.AGENT_CHECKPOINT}: give a PPO search's --out folder, an MLflow run id, or auto"
        )
    return WarmStart(file, str(path), f"warm start from the agent checkpoint {file}")


def _from_run(run_id: str, tracker: Tracker | None) -> WarmStart:
    if tracker is None:
        raise ConfigError(
            f"search.warm_start: run '{run_id}' needs the tracking store, but tracking is disabled: "
            "enable tracking or give the run's --out folder"
        )
    try:
        run = tracker.get_run(run_id)
    except ModelTailorError as exc:
        raise ConfigError(f"search.warm_start: {exc}: give a run id of this store, a path, or auto") from None
    if run.data.tags.get(AGENT_TAG) != ARTIFACT:
        raise ConfigError(
            f"search.warm_start: run '{run_id}' has no agent checkpoint (only finished PPO searches log one): "
            "pick a PPO search's run, or auto"
        )
    return WarmStart(_download(tracker, run_id), run_id, f"warm start from the agent of run {run_id}")


def _download(tracker: Tracker, run_id: str) -> Path:
    return tracker.download_artifact(run_id, ARTIFACT, cache_dir() / "agents" / run_id)


def _nearest(
    config: DeploymentConfig, env: CompressionEnv, tracker: Tracker | None, exclude_run: str | None
) -> WarmStart | None:
    if tracker is None:
        return None
    layout = json.dumps(checkpoint_layout(env), sort_keys=True)
    runs = tracker.finished_runs({AGENT_TAG: ARTIFACT, "model": model_key(config), "dataset": config.data.name})
    here = env.context.vector()
    scored = []
    for age, run in enumerate(runs):
        tags = run.data.tags
        if run.info.run_id == exclude_run or tags.get(LAYOUT_TAG) != layout:
            continue
        vector = _vector(tags.get(VECTOR_TAG))
        if vector is None or len(vector) != len(here):
            continue
        distance = math.dist(vector, here) + (0.0 if tags.get("device") == config.device.name else 0.05)
        scored.append((distance, age, run))
    if not scored:
        return None
    distance, _, run = min(scored, key=lambda item: item[:2])
    name = run.info.run_name or run.info.run_id
    note = f"warm start (auto) from the agent of '{name}' (run {run.info.run_id}, distance {distance:.3f})"
    return WarmStart(_download(tracker, run.info.run_id), run.info.run_id, note)


def _vector(text: Any) -> list[float] | None:
    try:
        values = json.loads(text)
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None
