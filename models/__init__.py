"""Models: the built-in zoo and bring-your-own factories and weights."""

from modeltailor.models.byo import load_factory, load_weights
from modeltailor.models.zoo import ZOO, build_model

__all__ = ["ZOO", "build_model", "load_factory", "load_weights"]
