"""Split data sets (train/<class>/*.jpg, test/<class>/*.jpg) from a .tar.gz or its extracted folder.

Everything here is synthetic and tiny (10 classes, 8 train + 3 test 32x32 JPEGs each), so the
tests run in CI without the real CIFAR-10 archive. Each class is a solid grey level (plus a little
noise) chosen independently of its name's sort position, so a decoded image's mean pixel value
tells which folder it came from.
"""

from __future__ import annotations

import io
import logging
import random
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeltailor.datasets import DataSplits, load_dataset
from modeltailor.datasets import archive as archive_module
from modeltailor.datasets.archive import is_split_folder, read_split_source
from modeltailor.errors import DataError
from modeltailor.service import cli

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_CLASS = 8
TEST_PER_CLASS = 3
VAL_FRACTION = 0.25  # 2 of each class's 8 train images
SIZE = 32
# a grey level per class, not monotone in the sorted order: labels cannot match by accident
LEVELS = dict(zip(CIFAR10, [200, 40, 120, 240, 80, 20, 160, 100, 220, 60], strict=True))
# the order the members are written to the archive: neither sorted nor reversed
WRITE_ORDER = ["frog", "truck", "airplane", "dog", "ship", "bird", "horse", "cat", "deer", "automobile"]
HINT = re.compile(r"\b(pass|copy|use|fix|add|laid out as)\b")

Member = tuple[str, bytes]  # (path inside the data set, e.g. "train/cat/0001.jpg", JPEG bytes)


def jpeg(level: int, rng: np.random.Generator, size: int = SIZE) -> bytes:
    pixels = np.clip(level + rng.integers(-4, 5, size=(size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_members(
    classes: list[str] = WRITE_ORDER, seed: int = 0, train: int = TRAIN_PER_CLASS, test: int = TEST_PER_CLASS
) -> list[Member]:
    """Members in the given class order, test split first: archive order is nothing like sorted."""
    rng = np.random.default_rng(seed)
    members: list[Member] = []
    for split, count in (("test", test), ("train", train)):
        for cls in classes:
            for i in reversed(range(count)):
                members.append((f"{split}/{cls}/{i + 1:04d}.jpg", jpeg(LEVELS.get(cls, 128), rng)))
    return members


def write_archive(path: Path, members: list[Member], top: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: Path, members: list[Member]) -> Path:
    for name, data in members:
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
    return root


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "data").glob("*.npz"))


def key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def raw_pixels(splits: DataSplits, part: str) -> np.ndarray:
    """The uint8 pixels behind a normalized split (input_size = image size: no resampling)."""
    x = getattr(splits, part).tensors[0]
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return torch.round((x * std + mean) * 255.0).clamp(0, 255).to(torch.uint8).numpy()


def folder_of(image: np.ndarray) -> str:
    """The class whose grey level is nearest to the image's mean pixel value."""
    mean = float(np.asarray(image, dtype=np.float64).mean())
    return min(LEVELS, key=lambda cls: abs(LEVELS[cls] - mean))


def assert_actionable(exc: pytest.ExceptionInfo[DataError], *names: str) -> str:
    message = str(exc.value)
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    assert HINT.search(message), f"no hint of what to do in: {message}"
    return message


@pytest.fixture(scope="module")
def members() -> list[Member]:
    assert WRITE_ORDER != sorted(WRITE_ORDER) and WRITE_ORDER != sorted(WRITE_ORDER, reverse=True)
    return make_members()


@pytest.fixture
def archive(tmp_path: Path, members: list[Member]) -> Path:
    return write_archive(tmp_path / "cifar10-jpeg.tar.gz", members, top="cifar10")


@pytest.fixture
def folder(tmp_path: Path, members: list[Member]) -> Path:
    return write_folder(tmp_path / "extracted", members)


# ------------------------------------------------------------------------------------------ sizes


def test_split_sizes_val_from_train_only_test_is_the_archives(archive: Path) -> None:
    splits = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION, seed=0)
    train_n, test_n = 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 20, test_n)
    assert len(splits.train) + len(splits.val) == train_n
    for part, per_class in (("train", 6), ("val", 2), ("test", TEST_PER_CLASS)):
        labels = getattr(splits, part).tensors[1]
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10, part
    assert splits.train.tensors[0].shape == (60, 3, SIZE, SIZE)

    raw = read_split_source(archive, "cifar10")  # cached by the load above: the same arrays
    train_images = {key(img) for img in raw.x}
    test_images = {key(img) for img in raw.test_x}
    assert len(train_images) == train_n and len(test_images) == test_n and not train_images & test_images
    train, val, test = (raw_pixels(splits, part) for part in ("train", "val", "test"))
    assert {key(img) for img in val} <= train_images, "val must be carved from the train split"
    assert {key(img) for img in train} | {key(img) for img in val} == train_images
    assert {key(img) for img in test} == test_images, "test must be exactly the archive's test images"


def test_split_is_deterministic_by_seed(archive: Path) -> None:
    first = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION, seed=0)
    again = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION, seed=0)
    other = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION, seed=1)
    assert torch.equal(first.val.tensors[0], again.val.tensors[0])
    assert torch.equal(first.val.tensors[1], again.val.tensors[1])
    assert torch.equal(first.train.tensors[1], again.train.tensors[1])
    val_first = {key(img) for img in raw_pixels(first, "val")}
    val_other = {key(img) for img in raw_pixels(other, "val")}
    assert val_first != val_other, "another seed must give another val set"
    # the test split never depends on the seed (its normalization does: train statistics)
    assert np.array_equal(raw_pixels(first, "test"), raw_pixels(other, "test"))
    assert torch.equal(first.test.tensors[1], other.test.tensors[1])


# ------------------------------------------------------------------------------------ class order


@pytest.mark.parametrize("top", ["cifar10", None], ids=["top-folder", "no-top-folder"])
def test_classes_sorted_and_labels_follow_folders(tmp_path: Path, members: list[Member], top: str | None) -> None:
    archive = write_archive(tmp_path / "data.tar.gz", members, top=top)
    raw = read_split_source(archive, "cifar10")
    assert raw.class_names == CIFAR10 == sorted(WRITE_ORDER)
    assert raw.x.dtype == np.uint8 and raw.x.shape == (80, 3, SIZE, SIZE)
    assert raw.test_x is not None and raw.test_y is not None and raw.test_x.shape == (30, 3, SIZE, SIZE)
    for x, y in ((raw.x, raw.y), (raw.test_x, raw.test_y)):
        names = [raw.class_names[int(label)] for label in y]
        assert [folder_of(img) for img in x] == names

    splits = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION)
    assert splits.class_names == CIFAR10
    for part in ("train", "val", "test"):
        labels = getattr(splits, part).tensors[1].tolist()
        assert [folder_of(img) for img in raw_pixels(splits, part)] == [CIFAR10[i] for i in labels], part


def test_imagefolder_split_archive_uses_sorted_folder_names(tmp_path: Path) -> None:
    classes = ["deer", "cat", "truck"]  # written unsorted
    archive = write_archive(tmp_path / "pets.tgz", make_members(classes, train=4, test=2))
    splits = load_dataset("imagefolder", root=archive, val_fraction=0.25)
    assert splits.class_names == ["cat", "deer", "truck"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    labels = splits.test.tensors[1].tolist()
    assert [folder_of(img) for img in raw_pixels(splits, "test")] == [splits.class_names[i] for i in labels]


# ------------------------------------------------------------------------------- archive vs folder


def test_archive_and_extracted_folder_are_identical(archive: Path, folder: Path) -> None:
    assert is_split_folder(folder) and not is_split_folder(archive) and not is_split_folder(folder / "train")
    from_archive = read_split_source(archive, "cifar10")
    from_folder = read_split_source(folder, "cifar10")
    assert from_archive.class_names == from_folder.class_names == CIFAR10
    for field in ("x", "y", "test_x", "test_y"):
        assert np.array_equal(getattr(from_archive, field), getattr(from_folder, field)), field

    a = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION, seed=3)
    f = load_dataset("cifar10", root=folder, val_fraction=VAL_FRACTION, seed=3)
    for part in ("train", "val", "test"):
        for xa, xf in zip(getattr(a, part).tensors, getattr(f, part).tensors, strict=True):
            assert torch.equal(xa, xf), part
    assert a.flip and f.flip


# ------------------------------------------------------------------------------------------ cache


def test_first_load_writes_one_cache_file_and_second_does_not_read_the_archive(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cache_files(tmp_path) == []
    first = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION)
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].parent == tmp_path / "cache" / "data"
    assert files[0].name.startswith("cifar10-")

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive was read again instead of the cache")

    monkeypatch.setattr(archive_module, "_archive_images", no_decoding)
    monkeypatch.setattr(archive_module, "_decode", no_decoding)
    second = load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION)
    assert second.class_names == CIFAR10
    for part in ("train", "val", "test"):
        for t1, t2 in zip(getattr(first, part).tensors, getattr(second, part).tensors, strict=True):
            assert torch.equal(t1, t2), part
    assert cache_files(tmp_path) == files


def test_folder_is_cached_too(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = read_split_source(folder, "cifar10")
    assert len(cache_files(tmp_path)) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the folder was decoded again instead of read from the cache")

    monkeypatch.setattr(archive_module, "_folder_images", no_decoding)
    assert np.array_equal(read_split_source(folder, "cifar10").x, first.x)


def test_damaged_cache_is_rebuilt_with_a_warning(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    good = read_split_source(archive, "cifar10")
    (cached,) = cache_files(tmp_path)
    cached.write_bytes(cached.read_bytes()[:200])  # a truncated .npz

    calls: list[Path] = []
    real = archive_module._archive_images

    def counting(path: Path, name: str):  # noqa: ANN202 - mirrors the private signature
        calls.append(path)
        return real(path, name)

    monkeypatch.setattr(archive_module, "_archive_images", counting)
    with caplog.at_level(logging.WARNING, logger="modeltailor.datasets.archive"):
        rebuilt = read_split_source(archive, "cifar10")
    assert calls == [archive], "a damaged cache must be decoded again"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "damaged" in warnings[0].getMessage() and str(cached) in warnings[0].getMessage()
    assert np.array_equal(rebuilt.x, good.x) and np.array_equal(rebuilt.test_y, good.test_y)
    with np.load(cached) as data:  # the file is whole again
        assert np.array_equal(data["x"], good.x)


def test_changed_archive_content_gets_another_cache_file(tmp_path: Path, members: list[Member]) -> None:
    archive = write_archive(tmp_path / "data.tar.gz", members)
    before = read_split_source(archive, "cifar10")
    changed = list(members)
    name, _ = changed[0]
    changed[0] = (name, jpeg(LEVELS[name.split("/")[1]], np.random.default_rng(99)))
    write_archive(archive, changed)  # same path, new content
    after = read_split_source(archive, "cifar10")
    assert len(cache_files(tmp_path)) == 2
    assert not np.array_equal(before.test_x, after.test_x), "the stale cache was used for new content"


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_missing_archive(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere" / "cifar10-jpeg.tar.gz"
    with pytest.raises(DataError) as exc:
        load_dataset(name, root=missing)
    assert "not found" in assert_actionable(exc, str(missing))


def test_corrupt_archive(tmp_path: Path) -> None:
    bad = tmp_path / "data.tar.gz"
    bad.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=bad)
    assert "damaged or not a tar archive" in assert_actionable(exc, str(bad))
    assert cache_files(tmp_path) == []


def test_truncated_archive(tmp_path: Path, archive: Path) -> None:
    whole = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=cut)
    assert "damaged" in assert_actionable(exc, str(cut))
    assert cache_files(tmp_path) == [], "a half archive must not be cached as a data set"


def test_truncated_uncompressed_tar_cut_inside_a_header(tmp_path: Path, members: list[Member]) -> None:
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(whole) as tar:
        offset = tar.getmembers()[-5].offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: offset + 100])  # ends 100 bytes into a member's header
    with pytest.raises(DataError) as exc:
        read_split_source(cut, "cifar10")
    assert_actionable(exc, str(cut))


def test_file_that_is_not_an_archive(tmp_path: Path) -> None:
    text = tmp_path / "data.txt"
    text.write_text("airplane,automobile\n")
    for name in ("cifar10", "imagefolder"):
        with pytest.raises(DataError) as exc:
            load_dataset(name, root=text)
        assert "not a .tar.gz" in assert_actionable(exc, str(text))


def test_archive_without_test_split(tmp_path: Path, members: list[Member]) -> None:
    only_train = write_archive(tmp_path / "train-only.tar.gz", [m for m in members if m[0].startswith("train/")])
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=only_train)
    assert "0 test images" in assert_actionable(exc, str(only_train), "test/")


def _corrupt_member_archive(tmp_path: Path, members: list[Member]) -> tuple[Path, str]:
    bad_member = "train/cat/0003.jpg"
    broken = [(n, b"\xff\xd8 not really a jpeg" if n == bad_member else d) for n, d in members]
    return write_archive(tmp_path / "broken.tar.gz", broken, top="cifar10"), f"cifar10/{bad_member}"


def test_corrupt_jpeg_names_the_member(tmp_path: Path, members: list[Member]) -> None:
    archive, member = _corrupt_member_archive(tmp_path, members)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=archive)
    message = str(exc.value)
    assert "\n" not in message.strip() and member in message and "decode" in message
    assert cache_files(tmp_path) == []


def test_corrupt_jpeg_names_the_archive_and_says_what_to_do(tmp_path: Path, members: list[Member]) -> None:
    archive, member = _corrupt_member_archive(tmp_path, members)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=archive)
    assert_actionable(exc, str(archive), member)


def test_cifar10_archive_with_three_classes(tmp_path: Path) -> None:
    three = write_archive(tmp_path / "three.tar.gz", make_members(["cat", "dog", "ship"], train=3, test=1))
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=three)
    message = assert_actionable(exc, str(three))
    assert "3 classes" in message and "CIFAR-10 has 10" in message and "imagefolder" in message
    assert load_dataset("imagefolder", root=three, val_fraction=0.34).class_names == ["cat", "dog", "ship"]


# -------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", ["train", "search"])
def test_cli_missing_archive_is_one_line_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "no-such" / "cifar10-jpeg.tar.gz"
    config = tmp_path / "d.yaml"
    config.write_text(
        "tracking: {enabled: false}\ntrain: {epochs: 1}\n"
        f"data: {{name: cifar10, root: '{missing}'}}\n"
    )
    args = [command, "--config", str(config)] + (["--out", str(tmp_path / "out")] if command == "search" else [])
    monkeypatch.setattr(sys, "argv", ["modeltailor", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert str(missing) in lines[0] and "Traceback" not in err
    assert not (tmp_path / "cache" / "teachers").exists(), "a teacher was trained before the error"


# ------------------------------------------------------------------------------------------- flip


def test_flip_for_cifar10_archive_not_for_digits(archive: Path) -> None:
    assert load_dataset("cifar10", root=archive, val_fraction=VAL_FRACTION).flip is True
    assert read_split_source(archive, "cifar10").flip is False  # the raw reader is neutral; cifar10 sets it
    assert load_dataset("digits").flip is False


@pytest.mark.parametrize("model", ["resnet20", "resnet56", "mobilenetv2"])
def test_cifar10_examples_validate_and_name_the_archive(model: str) -> None:
    from modeltailor.experiments.spec.deployment import load_config

    path = Path(__file__).resolve().parents[1] / "examples" / f"cifar10-{model}.yaml"
    config = load_config(path)
    assert config.model.name == model
    assert config.data.name == "cifar10" and str(config.data.root).endswith("cifar10-jpeg.tar.gz")
    assert config.compute.precision == "bf16" and config.compute.device == "auto"
