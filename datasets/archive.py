"""Data sets laid out as ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``: a .tar.gz or its folder.

This is how the CIFAR-10 JPEG archive ships (``cifar10-jpeg.tar.gz``, 60,000 images). Decoding
60,000 JPEGs takes seconds, so the decoded arrays are cached once per archive content (its
sha256) or folder listing, as one uncompressed ``.npz`` under ``<cache>/data``; later loads read
that file in well under a second. The archive is read as a stream (no extraction to disk), any
leading folder in the member names is allowed (``cifar10/train/cat/0001.jpg``), and classes are
the ``train/`` folder names in sorted order (CIFAR-10's official order: airplane ... truck).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from modeltailor.common.storage import atomic_write, cache_dir, locked
from modeltailor.datasets.sources import IMAGE_SUFFIXES, RawData
from modeltailor.errors import DataError, first_line

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
CACHE_VERSION = 2
SHUFFLE_SEED = 0


def is_split_folder(root: Path) -> bool:
    """True for a folder holding ``train/`` and ``test/`` subfolders."""
    return root.is_dir() and all((root / split).is_dir() for split in SPLITS)


def read_split_source(root: Path, name: str) -> RawData:
    """RawData (train as x/y, the official test as test_x/test_y) from an archive or split folder."""
    if not (root.is_file() or is_split_folder(root)):
        raise DataError(
            f"data root '{root}' for data set '{name}' not found: pass a .tar.gz of train/ and test/ "
            "or its extracted folder"
        )
    key = _archive_key(root, name) if root.is_file() else _folder_key(root, name)
    cached = cache_dir() / "data" / f"{name}-{key}.npz"
    raw = _load_cached(cached)
    if raw is not None:
        return raw
    with locked(cached):  # another process may be decoding the same source: wait, then reuse
        raw = _load_cached(cached)
        if raw is not None:
            return raw
        start = time.perf_counter()
        images = _archive_images(root, name) if root.is_file() else _folder_images(root)
        raw = _assemble(images, root, name)
        assert raw.test_x is not None and raw.test_y is not None
        buffer = io.BytesIO()
        np.savez(
            buffer, version=np.int64(CACHE_VERSION), x=raw.x, y=raw.y, test_x=raw.test_x, test_y=raw.test_y,
            class_names=np.asarray(raw.class_names),
        )
        atomic_write(cached, buffer.getvalue())
        log.info(
            "decoded %d images of '%s' in %.1f s; cached at %s",
            len(raw.y) + len(raw.test_y if raw.test_y is not None else []), root, time.perf_counter() - start, cached,
        )
    return raw


# ------------------------------------------------------------------------------------------- keys


def _archive_key(archive: Path, name: str) -> str:
    digest = hashlib.sha256()
    try:
        with archive.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"archive '{archive}' for data set '{name}' cannot be read: {first_line(exc)}") from None
    return digest.hexdigest()[:16]


def _folder_key(root: Path, name: str) -> str:
    digest = hashlib.sha256()
    for file in _folder_files(root):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _folder_files(root: Path) -> Iterator[Path]:
    for split in SPLITS:
        for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            yield from sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _load_cached(path: Path) -> RawData | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CACHE_VERSION:
                return None
            return RawData(
                data["x"], data["y"], [str(c) for c in data["class_names"]], 1.0 / 255.0,
                data["test_x"], data["test_y"],
            )
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt, whatever the damage
        log.warning("ignoring damaged data cache %s (%s); decoding again", path, first_line(exc))
        return None


# ----------------------------------------------------------------------------------------- decode

Image = tuple[str, str, str, bytes]  # (split, class, member name, encoded bytes)


def _split_and_class(member: str) -> tuple[str, str] | None:
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or not member.lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2]


def _archive_images(archive: Path, name: str) -> list[Image]:
    if not archive.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(
            f"data root '{archive}' for data set '{name}' is a file but not a .tar.gz/.tgz/.tar archive: "
            "pass the archive or its extracted folder (train/, test/)"
        )
    images: list[Image] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                where = _split_and_class(member.name) if member.isfile() else None
                if where is None:
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    images.append((*where, member.name, handle.read()))
            # tarfile takes a file that ends inside a header for the end of the archive: demand
            # the end-of-archive marker, or a truncated .tar would load part of the data silently
            assert tar.fileobj is not None
            tar.fileobj.seek(tar.offset)
            end = tar.fileobj.read(1024)
            if len(end) < 1024 or end.strip(b"\0"):
                raise tarfile.ReadError("no end-of-archive marker: the archive is truncated")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"archive '{archive}' for data set '{name}' is damaged or not a tar archive "
            f"({type(exc).__name__}: {first_line(exc)}): copy it again or pass its extracted folder"
        ) from None
    return images


def _folder_images(root: Path) -> list[Image]:
    images: list[Image] = []
    for file in _folder_files(root):
        images.append((file.parent.parent.name, file.parent.name, str(file), file.read_bytes()))
    return images


def _decode(data: bytes, where: str, size: tuple[int, int] | None, root: Path) -> np.ndarray:
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != size:
                rgb = rgb.resize(size, PILImage.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad image
        raise DataError(
            f"cannot decode image '{where}' in data root '{root}' ({type(exc).__name__}: {first_line(exc)}): "
            "replace or remove that image, or copy the archive again"
        ) from None


def _assemble(images: list[Image], root: Path, name: str) -> RawData:
    classes = sorted({cls for split, cls, _, _ in images if split == "train"})
    counts = {split: sum(1 for s, *_ in images if s == split) for split in SPLITS}
    if len(classes) < 2 or not counts["test"]:
        raise DataError(
            f"data root '{root}' for data set '{name}' holds {counts['train']} train images in "
            f"{len(classes)} class folder(s) and {counts['test']} test images: it must be laid out as "
            "train/<class>/*.jpg and test/<class>/*.jpg with at least 2 classes"
        )
    unknown = sorted({cls for split, cls, _, _ in images if split == "test"} - set(classes))
    if unknown:
        raise DataError(f"data root '{root}' has test classes {unknown} with no train folder: fix its layout")
    index = {cls: i for i, cls in enumerate(classes)}
    # one order whatever the source (archive member order, folder listing): the split is seeded on it
    images = sorted(images, key=lambda image: (image[0], image[1], PurePosixPath(image[2]).name))
    size: tuple[int, int] | None = None
    arrays: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    for split, cls, where, data in images:
        pixels = _decode(data, where, size, root)
        size = size or (pixels.shape[1], pixels.shape[0])
        arrays[split].append(pixels)
        labels[split].append(index[cls])

    def stack(split: str) -> tuple[np.ndarray, np.ndarray]:
        # a fixed shuffle, as in CIFAR's own batches: the first images of a split (BatchNorm
        # recalibration, int8 calibration, importance samples) then hold every class, not one
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(labels[split]))
        x = np.stack(arrays[split]).transpose(0, 3, 1, 2)[order].copy()
        return x, np.asarray(labels[split], dtype=np.int64)[order]

    (x, y), (test_x, test_y) = stack("train"), stack("test")
    return RawData(x, y, classes, 1.0 / 255.0, test_x, test_y)
