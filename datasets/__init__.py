"""Data sets: embedded digits, CIFAR-10/100 (python format) and image folders, as tensor splits."""

from modeltailor.datasets.base import DataSplits, remap_labels, resolve_classes, restrict_splits
from modeltailor.datasets.loader import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "DataSplits",
    "load_dataset",
    "remap_labels",
    "resolve_classes",
    "restrict_splits",
]
