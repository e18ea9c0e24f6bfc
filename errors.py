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
