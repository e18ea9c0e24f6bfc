"""`load_dataset`: read a data set, keep the requested classes, split, resize and normalize."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from modeltailor.datasets.archive import is_split_folder, read_split_source
from modeltailor.datasets.base import (
    DataSplits,
    check_classes,
    check_options,
    normalize,
    stratified_split,
    to_float_images,
)
from modeltailor.datasets.sources import (
    RawData,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_imagefolder,
)
from modeltailor.errors import DataError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = 10


def read_cifar10_any(root: Path | None, input_size: int) -> RawData:
    """CIFAR-10 from its image archive (.tar.gz of train/, test/), that folder, or the python batches."""
    if root is None or not (root.is_file() or is_split_folder(root)):
        return read_cifar10(root, input_size)
    raw = read_split_source(root, "cifar10")
    if len(raw.class_names) != CIFAR10_CLASSES:
        raise DataError(
            f"data root '{root}' holds {len(raw.class_names)} classes, CIFAR-10 has {CIFAR10_CLASSES}: "
            "pass the CIFAR-10 archive, or use data set 'imagefolder' for other image sets"
        )
    return replace(raw, flip=True)


def read_imagefolder_any(root: Path | None, input_size: int) -> RawData:
    """An image folder root/<class>/*; with train/ and test/ folders (or as an archive), their split."""
    if root is not None and (root.is_file() or is_split_folder(root)):
        return read_split_source(root, "imagefolder")
    return read_imagefolder(root, input_size)


READERS: dict[str, Callable[[Path | None, int], RawData]] = {
    "digits": read_digits,
    "cifar10": read_cifar10_any,
    "cifar100": read_cifar100,
    "imagefolder": read_imagefolder_any,
}
DATASETS: tuple[str, ...] = tuple(READERS)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    input_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    classes: Sequence[int] | None = None,
) -> DataSplits:
    """Deterministic stratified train/val/test splits of a data set, normalized with train stats.

    With an official test set (CIFAR) that is the test split and val is `val_fraction` of train;
    otherwise test and val are `test_fraction` and `val_fraction` of all samples. `classes` keeps
    only those class ids, with their labels unchanged.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    reader = READERS.get(key)
    if reader is None:
        raise DataError(f"unknown data set '{name}': choose one of {', '.join(DATASETS)}")
    check_options(input_size, val_fraction, test_fraction)
    raw = reader(Path(root).expanduser() if root is not None else None, input_size)
    ids = check_classes(classes, len(raw.class_names), key)
    train_x, train_y, val_x, val_y, test_x, test_y = _split(raw, ids, seed, val_fraction, test_fraction, key)
    train, val, test = (to_float_images(x, input_size, raw.scale) for x in (train_x, val_x, test_x))
    mean, std = normalize((train, val, test), train)
    log.info(
        "data set %s: %d train, %d val, %d test, %d of %d classes, %dx%d",
        key, len(train), len(val), len(test), len(ids), len(raw.class_names), input_size, input_size,
    )
    return DataSplits(
        train=TensorDataset(train, torch.as_tensor(train_y)),
        val=TensorDataset(val, torch.as_tensor(val_y)),
        test=TensorDataset(test, torch.as_tensor(test_y)),
        class_names=list(raw.class_names),
        in_channels=int(train.shape[1]),
        input_size=input_size,
        name=key,
        classes=ids,
        mean=mean,
        std=std,
        flip=raw.flip,
    )


def _split(
    raw: RawData, ids: list[int], seed: int, val_fraction: float, test_fraction: float, name: str
) -> tuple[np.ndarray, ...]:
    every = len(ids) == len(raw.class_names)
    x, y = (raw.x, raw.y) if every else _keep(raw.x, raw.y, ids)
    if raw.test_x is not None and raw.test_y is not None:
        test_x, test_y = (raw.test_x, raw.test_y) if every else _keep(raw.test_x, raw.test_y, ids)
        if not len(test_y):
            raise DataError(f"data set '{name}' has no test samples of classes {ids}")
    else:
        rest, held = stratified_split(y, test_fraction, seed, name)
        test_x, test_y = x[held], y[held]
        x, y = x[rest], y[rest]
        val_fraction = val_fraction / (1.0 - test_fraction)
    rest, held = stratified_split(y, val_fraction, seed, name)
    return x[rest], y[rest], x[held], y[held], test_x, test_y


def _keep(x: np.ndarray, y: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(y, ids)
    return x[mask], y[mask]
