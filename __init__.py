"""modeltailor: reinforcement-learning auto-compression of CNNs, one policy per deployment."""

__version__ = "0.1.0"
