"""Readers: each turns a data set on disk (or embedded) into uint8/float NCHW arrays and labels."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeltailor.errors import DataError, first_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"


@dataclass
class RawData:
    """Images (N, C, H, W) with labels; `test_*` is the official test set when there is one."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    scale: float
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    flip: bool = False  # natural images: a horizontal flip is a valid augmentation


def read_digits(root: Path | None, input_size: int) -> RawData:
    """scikit-learn's embedded 8x8 digits (1797 images, values 0..16)."""
    from sklearn.datasets import load_digits

    if root is not None:
        log.debug("digits is embedded; ignoring root %s", root)
    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]
    names = [str(int(t)) for t in bunch.target_names]
    return RawData(x, bunch.target.astype(np.int64), names, scale=1.0 / 16.0)


# -------------------------------------------------------------------------------------------- CIFAR


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (a data file must not run code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(file: Path, name: str) -> dict[str, Any]:
    if not file.is_file():
        raise DataError(f"{name} file '{file}' not found: the root must hold the python-format files")
    try:
        with file.open("rb") as handle:
            obj = _CifarUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a format error
        raise DataError(
            f"{name} file '{file}' is not in the CIFAR python pickle format: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{name} file '{file}' holds a {type(obj).__name__}, not a CIFAR dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, file: Path, name: str) -> Any:
    if key not in batch:
        raise DataError(f"{name} file '{file}' has no '{key}' entry: it is not a CIFAR {name} file")
    return batch[key]


def _images_labels(file: Path, label_key: str, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(file, name)
    data = np.asarray(_field(batch, "data", file, name))
    labels = np.asarray(_field(batch, label_key, file, name), dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{name} file '{file}' has data of shape {data.shape} ({data.dtype}); "
            "expected uint8 rows of 3072 values"
        )
    if len(labels) != len(data):
        raise DataError(f"{name} file '{file}' has {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name} file '{file}' has labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _names(file: Path, key: str, name: str) -> list[str]:
    values = _field(_unpickle(file, name), key, file, name)
    if not isinstance(values, Sequence) or not values:
        raise DataError(f"{name} file '{file}' has no class names under '{key}'")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_dir(root: Path | None, folder: str, name: str) -> Path:
    if root is None:
        raise DataError(
            f"data set '{name}' needs a root folder: pass the folder that holds '{folder}' "
            "(the CIFAR python version)"
        )
    if not root.is_dir():
        raise DataError(
            f"data root '{root}' for data set '{name}' not found: pass the image archive (.tar.gz of "
            f"train/ and test/), its extracted folder, or the folder holding '{folder}'"
        )
    return root / folder if (root / folder).is_dir() else root


def read_cifar10(root: Path | None, input_size: int) -> RawData:
    """CIFAR-10 python version: data_batch_1..5, test_batch, batches.meta."""
    name = "cifar10"
    base = _cifar_dir(root, CIFAR10_FOLDER, name)
    names = _names(base / "batches.meta", "label_names", name)
    parts = [_images_labels(base / f"data_batch_{i}", "labels", len(names), name) for i in range(1, 6)]
    test_x, test_y = _images_labels(base / "test_batch", "labels", len(names), name)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return RawData(x, y, names, 1.0 / 255.0, test_x, test_y, flip=True)


def read_cifar100(root: Path | None, input_size: int) -> RawData:
    """CIFAR-100 python version: train, test, meta (fine labels)."""
    name = "cifar100"
    base = _cifar_dir(root, CIFAR100_FOLDER, name)
    names = _names(base / "meta", "fine_label_names", name)
    x, y = _images_labels(base / "train", "fine_labels", len(names), name)
    test_x, test_y = _images_labels(base / "test", "fine_labels", len(names), name)
    return RawData(x, y, names, 1.0 / 255.0, test_x, test_y, flip=True)


# -------------------------------------------------------------------------------------- image folder


def read_imagefolder(root: Path | None, input_size: int) -> RawData:
    """root/<class_name>/*.png|jpg|jpeg|bmp, converted to RGB and resized to input_size."""
    name = "imagefolder"
    if root is None:
        raise DataError(f"data set '{name}' needs a root folder laid out as root/<class_name>/*.png")
    if not root.is_dir():
        raise DataError(
            f"data root '{root}' for data set '{name}' not found: pass a folder of <class_name>/ images, "
            "a folder with train/ and test/, or its .tar.gz archive"
        )
    folders = {d.name: _image_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    folders = {k: v for k, v in folders.items() if v}
    if len(folders) < 2:
        raise DataError(
            f"image folder '{root}' has {len(folders)} class folder(s) with images; "
            "need at least 2 laid out as root/<class_name>/*.png|jpg|jpeg|bmp"
        )
    images, labels = [], []
    for label, files in enumerate(folders.values()):
        for file in files:
            images.append(_read_image(file, input_size))
            labels.append(label)
    x = np.stack(images).transpose(0, 3, 1, 2)
    return RawData(x, np.asarray(labels, dtype=np.int64), list(folders), 1.0 / 255.0)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(file: Path, input_size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as image:
            rgb = image.convert("RGB").resize((input_size, input_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise DataError(f"cannot read image '{file}': {type(exc).__name__}: {exc}") from None
