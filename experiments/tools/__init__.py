"""Single-model tools: apply, pick, check-model, calibrate, fold-report."""
