"""Project exceptions. Each message is one line that names the bad input and says what to do."""


class ModelTailorError(Exception):
    """Base class for every user-facing error; the CLI prints it as one line and exits non-zero."""


class ConfigError(ModelTailorError):
    """A deployment config (YAML or flags) is malformed or names something unknown."""


class ModelLoadError(ModelTailorError):
    """A model factory, a weights file or a state dict cannot be loaded."""


class DataError(ModelTailorError):
    """A data set cannot be found or read, or a class id is out of range."""


class DeviceError(ModelTailorError):
    """A device is unknown, unreachable or failed to measure a model."""


class CompressionError(ModelTailorError):
    """A policy cannot be applied to a model (unknown unit, bad amount)."""


class EpisodeFailed(CompressionError):
    """One episode's policy could not be built, recovered or exported; the search records it as failed."""


class SearchInterrupted(ModelTailorError):
    """A search or campaign was interrupted (Ctrl-C, SIGTERM); finished work is kept for --resume."""


class NotFoundError(ModelTailorError):
    """Something a user named (a device in the registry, a model version, a job) does not exist."""


class NoMatchError(ModelTailorError):
    """A registry query that no registered version satisfies; ``closest`` holds the nearest candidates
    (dicts of version, accuracy, latency_ms, memory_bytes) so callers can show them."""

    def __init__(self, message: str, closest: list[dict] | None = None) -> None:
        super().__init__(message)
        self.closest = closest or []


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name if empty), at most ``limit`` chars."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]
