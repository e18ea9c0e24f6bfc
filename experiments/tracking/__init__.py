"""MLflow: the tracker, a tracking server for a campaign, the registry of the best policy per device."""

import os

# MLflow's usage telemetry pops its session id from os.environ while other threads may copy the
# environment; in a campaign's Ray worker this once failed a trial's log-batch with a KeyError on
# '_MLFLOW_TELEMETRY_SESSION_ID' (bench/shared_agent.py, 2026-12-02). modeltailor sends none:
# set before mlflow is first imported (every mlflow import in the package goes through this room),
# and inherited by the tracking servers and Ray workers this process starts. A user's own setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
