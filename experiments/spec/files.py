"""The names of the files runs leave behind: one place, imported by every module that reads or writes them.

A search's ``--out`` folder holds :data:`SUMMARY`, :data:`POLICY`, :data:`MODEL_ONNX`,
:data:`MODEL_WEIGHTS`, :data:`PARETO_PLOT`, :data:`EPISODES` (and :data:`AGENT_CHECKPOINT` for PPO),
plus the bookkeeping :data:`RUN` and :data:`DEPLOYMENT` a resume reads. A campaign's folder holds
:data:`CAMPAIGN`, :data:`CAMPAIGN_PLOT` and one deployment folder per trial, each with
:data:`TRIAL`; an API job's folder holds :data:`JOB` and :data:`JOB_SPEC`. Torch-free.
"""

from __future__ import annotations

from typing import Literal

SUMMARY = "summary.json"
"""What one search found (the published contract: :mod:`modeltailor.experiments.spec.summary`)."""
POLICY = "policy.json"
"""The chosen policy, plain data; ``modeltailor apply`` rebuilds the model from it."""
MODEL_ONNX = "model.onnx"
"""The chosen compressed model, exported and parity-checked."""
MODEL_WEIGHTS = "model.pt"
"""The chosen model's torch state dict (rebuild the module with ``modeltailor apply``)."""
PARETO_PLOT = "pareto.png"
"""Accuracy against latency and memory for every episode."""
EPISODES = "episodes.jsonl"
"""Every finished episode, one JSON line each, written as it happens."""
AGENT_CHECKPOINT = "agent_checkpoint.pt"
"""The trained PPO network (an agent checkpoint, not a policy)."""
RUN = "run.json"
"""Where a search's MLflow run lives (tracking URI and run id), for --resume and the registry CLI."""
DEPLOYMENT = "deployment.json"
"""The effective deployment config a resumed search must match."""

CAMPAIGN = "campaign.json"
"""A campaign's table: one row per deployment."""
CAMPAIGN_PLOT = "campaign.png"
"""Every deployment's chosen model, accuracy against latency."""
CAMPAIGN_SPEC_ARTIFACT = "campaign_spec.yaml"
"""The campaign spec as logged to the campaign's MLflow parent run."""
TRIAL = "trial.json"
"""One campaign trial's state (its deployment folder)."""
JOB = "job.json"
"""An API job's state."""
JOB_SPEC = "campaign.yaml"
"""The campaign spec an API job runs."""

ARTIFACTS: tuple[str, ...] = (SUMMARY, POLICY, MODEL_ONNX, MODEL_WEIGHTS, PARETO_PLOT, EPISODES)
"""What every finished search leaves, and logs to MLflow."""
OPTIONAL_ARTIFACTS: tuple[str, ...] = (AGENT_CHECKPOINT,)
"""What some searches leave (PPO's agent checkpoint)."""
REGISTERED = (MODEL_ONNX, POLICY, SUMMARY)
"""What a registry version carries and the API serves."""
RegisteredFile = Literal["model.onnx", "policy.json", "summary.json"]
"""The names in :data:`REGISTERED`, as a type (a test keeps the two equal)."""
