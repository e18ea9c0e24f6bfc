"""MLflow: the tracker, a tracking server for a campaign, the registry of the best policy per device."""
