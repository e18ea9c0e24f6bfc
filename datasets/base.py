"""Data splits and the array helpers every loader shares: resizing, splitting, normalizing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from modeltailor.errors import ConfigError, DataError, first_line

_CHUNK = 4096


@dataclass
class DataSplits:
    """Train/val/test tensors (x float32 NCHW normalized, y int64 original class ids)."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    class_names: list[str]
    in_channels: int
    input_size: int
    name: str
    classes: list[int] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    flip: bool = False  # a horizontal flip keeps the class (natural images, not digits)

    @property
    def num_classes(self) -> int:
        """Classes of the whole data set (labels keep their original ids even when restricted)."""
        return len(self.class_names)


def to_float_images(x: np.ndarray | torch.Tensor, input_size: int, scale: float = 1.0) -> torch.Tensor:
    """NCHW array -> float32 tensor times `scale`, bilinearly resized to input_size (in chunks)."""
    source = torch.as_tensor(x)
    out = torch.empty(len(source), source.shape[1], input_size, input_size)
    for start in range(0, len(source), _CHUNK):
        chunk = source[start : start + _CHUNK].to(torch.float32, copy=True).mul_(scale)
        if chunk.shape[-2:] != (input_size, input_size):
            chunk = F.interpolate(chunk, size=(input_size, input_size), mode="bilinear", align_corners=False)
        out[start : start + len(chunk)] = chunk
    return out


def check_options(input_size: int, val_fraction: float, test_fraction: float) -> None:
    """Raise ConfigError for an unusable image size or split fractions."""
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ConfigError(f"input_size must be a positive integer, got {input_size!r}")
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < float(value) < 1.0:
            raise ConfigError(f"{label} must be between 0 and 1 (exclusive), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}"
        )


def check_classes(classes: Sequence[int] | None, num_classes: int, name: str) -> list[int]:
    """The class ids to keep (all when `classes` is None); DataError for empty, duplicate or bad ids."""
    valid = f"valid ids are 0..{num_classes - 1}"
    if classes is None:
        return list(range(num_classes))
    ids = list(classes)
    if not ids:
        raise DataError(f"the class list for '{name}' is empty: give at least one id ({valid})")
    bad = [c for c in ids if isinstance(c, bool) or not isinstance(c, (int, np.integer))]
    if bad:
        raise DataError(f"class ids must be integers, got {bad} for '{name}' ({valid})")
    duplicates = sorted({int(c) for c in ids if ids.count(c) > 1})
    if duplicates:
        raise DataError(f"duplicate class ids {duplicates} for '{name}': list each id once ({valid})")
    out_of_range = [int(c) for c in ids if not 0 <= c < num_classes]
    if out_of_range:
        raise DataError(f"class ids {out_of_range} out of range for '{name}': {valid}")
    return [int(c) for c in ids]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held out) with `fraction` held out, stratified by label, deterministic by seed."""
    index = np.arange(len(labels))
    try:
        keep, held = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=int)
        fewest = int(counts[counts > 0].min()) if counts.any() else 0
        raise DataError(
            f"data set '{name}' is too small to split ({len(labels)} samples, fewest per class "
            f"{fewest}): add samples or change the split fractions ({first_line(exc)})"
        ) from None
    return np.sort(keep), np.sort(held)


def normalize(
    splits: Sequence[torch.Tensor], reference: torch.Tensor
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Standardize each tensor in place per channel with the mean/std of `reference` (train split)."""
    mean = reference.mean(dim=(0, 2, 3))
    std = reference.std(dim=(0, 2, 3)).clamp_min(1e-6)
    for x in splits:
        x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return tuple(mean.tolist()), tuple(std.tolist())


def resolve_classes(
    classes: Sequence[int | str] | None, class_names: Sequence[str], name: str
) -> list[int] | None:
    """Class ids from ids or names (None = every class); DataError for unknown names or bad ids."""
    if classes is None:
        return None
    ids: list[int] = []
    for entry in classes:
        if isinstance(entry, str):
            if entry not in class_names:
                shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
                raise DataError(f"unknown class name '{entry}' for '{name}': choose from {shown}")
            ids.append(list(class_names).index(entry))
        else:
            ids.append(entry)
    return check_classes(ids, len(class_names), name)


def restrict_splits(splits: DataSplits, classes: Sequence[int]) -> DataSplits:
    """The same splits with only the samples of `classes` (labels keep their original ids)."""
    wanted = torch.as_tensor(list(classes))

    def keep(data: TensorDataset) -> TensorDataset:
        x, y = data.tensors
        mask = torch.isin(y, wanted)
        return TensorDataset(x[mask], y[mask])

    return replace(
        splits, train=keep(splits.train), val=keep(splits.val), test=keep(splits.test), classes=list(classes)
    )


def remap_labels(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Original class ids -> positions in `classes` (the outputs of a narrowed head)."""
    lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
    lookup[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    return lookup[labels]
