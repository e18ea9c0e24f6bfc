"""Many deployments: campaigns on Ray Tune, the Ray connection, the API's jobs."""
