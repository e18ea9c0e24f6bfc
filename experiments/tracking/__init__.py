"""MLflow: the tracker, a tracking server for a campaign, the registry of the best policy per device."""

import os

# MLflow's usage telemetry keeps a session id in os.environ (set and popped by its client); a campaign's
# Ray worker once failed a trial's log-batch with KeyError '_MLFLOW_TELEMETRY_SESSION_ID'
# (bench/shared_agent.py, 2026-12-02). modeltailor sends no telemetry: this is set before the package
# first imports mlflow (all its mlflow imports are in this room) and is inherited by the tracking
# servers and Ray workers it starts. A user's own setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
