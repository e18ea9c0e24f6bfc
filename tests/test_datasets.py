"""Data sets: embedded digits, synthetic CIFAR files in the real pickle format, image folders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeltailor.datasets import DATASETS, DataSplits, load_dataset
from modeltailor.errors import ConfigError, DataError


def sizes(splits: DataSplits) -> tuple[int, int, int]:
    return len(splits.train), len(splits.val), len(splits.test)


# --------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


def test_digits_shapes_and_ranges(digits: DataSplits) -> None:
    assert DATASETS == ("digits", "cifar10", "cifar100", "imagefolder")
    assert sizes(digits) == (1167, 270, 360)
    assert sum(sizes(digits)) == 1797
    assert (digits.in_channels, digits.input_size, digits.num_classes) == (1, 32, 10)
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.classes == list(range(10))
    x, y = digits.train.tensors
    assert x.shape == (1167, 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    assert 0.0 < digits.mean[0] < 1.0 and digits.std[0] > 0.0
    raw = (x * digits.std[0] + digits.mean[0])
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1.0 + 1e-5


def test_digits_resize() -> None:
    splits = load_dataset("digits", input_size=8, classes=[0, 1])
    assert splits.train.tensors[0].shape[1:] == (1, 8, 8)
    assert splits.input_size == 8


def test_digits_stratified(digits: DataSplits) -> None:
    all_y = torch.cat([digits.train.tensors[1], digits.val.tensors[1], digits.test.tensors[1]])
    total = torch.bincount(all_y, minlength=10).double()
    for split, fraction in ((digits.test, 0.2), (digits.val, 0.15)):
        counts = torch.bincount(split.tensors[1], minlength=10).double()
        assert torch.all((counts - total * fraction).abs() <= 1.5)


def test_digits_deterministic_by_seed(digits: DataSplits) -> None:
    again = load_dataset("digits")
    other = load_dataset("digits", seed=1)
    for a, b in zip(digits.test.tensors, again.test.tensors, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(digits.test.tensors[0], other.test.tensors[0])
    assert sizes(other) == sizes(digits)


def test_digits_class_restriction() -> None:
    splits = load_dataset("digits", classes=[7, 2])
    for split in (splits.train, splits.val, splits.test):
        assert set(split.tensors[1].tolist()) == {2, 7}
    assert splits.num_classes == 10 and splits.classes == [7, 2]
    assert 340 < sum(sizes(splits)) < 380


@pytest.mark.parametrize(
    ("classes", "fragment"),
    [
        ([], "empty"),
        ([1, 1, 2], "duplicate class ids [1]"),
        ([3, 10, -1], "class ids [10, -1] out of range for 'digits': valid ids are 0..9"),
        (["a"], "must be integers"),
    ],
)
def test_bad_class_ids(classes: list, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("digits", classes=classes)
    assert fragment in str(info.value)


def test_unknown_name_and_options() -> None:
    with pytest.raises(DataError, match="unknown data set 'mnist': choose one of digits, cifar10, cifar100, imagefolder"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=0.0)
    with pytest.raises(ConfigError, match="below 1"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="input_size"):
        load_dataset("digits", input_size=0)


# ---------------------------------------------------------------------------------------- CIFAR


def _batch(rng: np.random.Generator, labels: list[int], label_key: bytes) -> dict:
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return {b"batch_label": b"synthetic", label_key: labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}


def _dump(obj: object, path: Path) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_cifar10(root: Path, per_class: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [c for c in range(10) for _ in range(per_class)]
    for i in range(1, 6):
        _dump(_batch(rng, labels, b"labels"), folder / f"data_batch_{i}")
    _dump(_batch(rng, labels, b"labels"), folder / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump({b"num_cases_per_batch": len(labels), b"label_names": names, b"num_vis": 3072}, folder / "batches.meta")
    return folder


def write_cifar100(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = [c for c in range(100) for _ in range(4)]
    test = list(range(100))
    for name, labels in (("train", train), ("test", test)):
        batch = _batch(rng, labels, b"fine_labels")
        batch[b"coarse_labels"] = [c // 5 for c in labels]
        _dump(batch, root / name)
    meta = {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": ["c"] * 20}
    _dump(meta, root / "meta")
    return root


def test_cifar10_synthetic(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", root=str(tmp_path))
    assert sizes(splits) == (85, 15, 20)
    assert splits.class_names[0] == "airplane" and splits.num_classes == 10
    x, y = splits.train.tensors
    assert x.shape == (85, 3, 32, 32) and y.dtype == torch.int64
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert len(splits.mean) == len(splits.std) == 3
    assert sorted(splits.test.tensors[1].tolist()) == [c for c in range(10) for _ in range(2)]
    small = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", input_size=16, classes=[9, 0])
    assert small.train.tensors[0].shape[1:] == (3, 16, 16)
    assert set(small.test.tensors[1].tolist()) == {0, 9} and len(small.test) == 4


def test_cifar100_synthetic(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    splits = load_dataset("cifar100", root=tmp_path, val_fraction=0.3)
    assert sizes(splits) == (280, 120, 100)
    assert splits.num_classes == 100 and splits.class_names[5] == "class5"
    subset = load_dataset("cifar100", root=tmp_path, classes=[1, 2, 3, 4, 5], val_fraction=0.25)
    assert sizes(subset) == (15, 5, 5)
    with pytest.raises(DataError, match="class ids \\[100\\] out of range for 'cifar100': valid ids are 0..99"):
        load_dataset("cifar100", root=tmp_path, classes=[100])


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a root folder"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="batches.meta' not found"):
        load_dataset("cifar10", root=tmp_path)
    folder = write_cifar10(tmp_path / "a")
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3' is not in the CIFAR python pickle format"):
        load_dataset("cifar10", root=folder)
    _dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, folder / "data_batch_3")
    with pytest.raises(DataError, match="expected uint8 rows of 3072 values"):
        load_dataset("cifar10", root=folder)
    _dump({b"labels": [0, 1]}, folder / "data_batch_3")
    with pytest.raises(DataError, match="has no 'data' entry"):
        load_dataset("cifar10", root=folder)
    _dump({b"data": _Evil(), b"labels": [0]}, folder / "data_batch_3")
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", root=folder)
    other = write_cifar100(tmp_path / "b")
    _dump({b"data": np.zeros((1, 3072), dtype=np.uint8), b"fine_labels": [100]}, other / "test")
    with pytest.raises(DataError, match="labels outside 0..99"):
        load_dataset("cifar100", root=other)


# --------------------------------------------------------------------------------- image folder


def write_images(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i == 0:
                image.convert("L").save(root / name / f"{i}.png")
            elif i == 1:
                image.save(root / name / f"{i}.JPG")
            else:
                image.save(root / name / f"{i}.png")
    (root / classes[0] / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_imagefolder(tmp_path: Path) -> None:
    write_images(tmp_path)
    splits = load_dataset("imagefolder", root=tmp_path, input_size=16)
    assert splits.class_names == ["cat", "dog", "fox"]
    assert sizes(splits) == (11, 3, 4)
    assert splits.in_channels == 3 and splits.train.tensors[0].shape[1:] == (3, 16, 16)
    for split in (splits.train, splits.val, splits.test):
        assert set(split.tensors[1].tolist()) == {0, 1, 2}
    same = load_dataset("imagefolder", root=tmp_path, input_size=16)
    assert torch.equal(same.test.tensors[0], splits.test.tensors[0])
    two = load_dataset("imagefolder", root=tmp_path, input_size=8, classes=[2, 0], test_fraction=0.25, val_fraction=0.25)
    assert set(two.train.tensors[1].tolist()) == {0, 2}


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a root folder"):
        load_dataset("imagefolder")
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagefolder", root=tmp_path / "nowhere")
    write_images(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="has 1 class folder\\(s\\) with images; need at least 2"):
        load_dataset("imagefolder", root=tmp_path / "one")
    root = write_images(tmp_path / "bad")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_dataset("imagefolder", root=root)
    tiny = write_images(tmp_path / "tiny", per_class=1)
    with pytest.raises(DataError, match="too small to split"):
        load_dataset("imagefolder", root=tiny)
