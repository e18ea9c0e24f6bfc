"""Class-subset deployments: a narrowed head, restricted data and accuracy, both baselines."""

from __future__ import annotations

import json

import pytest
import torch

from modeltailor.compressors.head import narrow_classifier
from modeltailor.datasets import load_dataset, remap_labels, resolve_classes, restrict_splits
from modeltailor.errors import DataError
from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.search.workbench import build_workbench
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.models import build_model
from tests.test_search_e2e import TINY


def test_narrowed_head_gives_the_restricted_logits():
    model = build_model("resnet20", in_channels=1, input_size=16, num_classes=10, width=0.5).eval()
    classes = [7, 2, 5]
    narrowed = narrow_classifier(model, classes, torch.zeros(1, 1, 16, 16)).eval()
    x = torch.randn(4, 1, 16, 16)
    assert torch.allclose(narrowed(x), model(x)[:, classes], atol=1e-6)
    assert narrowed.classifier.out_features == 3 and model.classifier.out_features == 10
    assert sum(p.numel() for p in narrowed.parameters()) < sum(p.numel() for p in model.parameters())


def test_restricted_splits_keep_only_the_subset():
    full = load_dataset("digits", input_size=8)
    sub = restrict_splits(full, [1, 4])
    for split in ("train", "val", "test"):
        labels = getattr(sub, split).tensors[1]
        assert set(labels.tolist()) == {1, 4}
    assert remap_labels(torch.tensor([4, 1, 4]), [1, 4]).tolist() == [1, 0, 1]


def test_class_names_resolve_and_unknown_names_fail():
    names = [str(i) for i in range(10)]
    assert resolve_classes(["3", 5], names, "digits") == [3, 5]
    with pytest.raises(DataError, match="unknown class name 'cat'"):
        resolve_classes(["cat"], names, "digits")
    with pytest.raises(DataError, match="is empty"):
        resolve_classes([], names, "digits")


@pytest.mark.slow
def test_subset_search_narrows_the_model(tmp_path):
    cfg = load_config(None, {**TINY, "classes": [0, 3, 7], "tracking.enabled": False})
    out = tmp_path / "out"
    run = run_search(cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == [0, 3, 7] and summary["subset"] is True
    assert {"accuracy", "accuracy_all_classes"} <= summary["baseline"].keys()
    assert summary["baseline"]["accuracy"] >= summary["baseline"]["accuracy_all_classes"] - 1e-9
    assert summary["best"]["accuracy_all_classes"] is None
    policy = json.loads((out / "policy.json").read_text())
    assert policy["meta"]["classes"] == [0, 3, 7]
    assert run.final is not None
    assert run.final.chosen.model.classifier.out_features == 3


@pytest.mark.slow
def test_a_subset_ranks_channels_and_distills_on_its_own_classes():
    """Class-aware compression: the activation criterion ranks channels on the subset's training
    images only, and distillation's targets are the teacher's logits on those columns alone."""
    cfg = load_config(None, {**TINY, "classes": [0, 3, 7], "search.importance": "activation",
                             "tracking.enabled": False})
    bench = build_workbench(cfg, lambda _m: None)
    images, labels = bench.evaluator.compressor.pruning.calibration
    assert set(labels.tolist()) == {0, 1, 2}  # remapped: the subset's 3 classes, nothing else
    train_x, original = bench.splits.train.tensors
    assert set(original.tolist()) == {0, 3, 7} and torch.equal(images, train_x[: len(images)])
    logits = bench.evaluator.teacher_logits.logits
    assert logits.shape == (len(train_x), 3)
    with torch.no_grad():
        teacher = bench.teacher.eval()(train_x[:16])
    assert torch.allclose(logits[:16], teacher[:, [0, 3, 7]], atol=1e-4)  # the teacher's columns, restricted


def test_the_search_says_plainly_when_a_subset_buys_nothing():
    from modeltailor.compressors.policy import Policy
    from modeltailor.env.surrogate import Sample
    from modeltailor.experiments.search.experience import subset_gain

    def sample(classes, drop, ratio, device="cpu-1t|abc"):
        return Sample(Policy.uniform(["a"], 0.5), classes, drop, ratio, ratio, device)

    prior = [sample(None, 0.005, 0.5), sample(None, 0.2, 0.2), sample(None, 0.0, 0.1, device="cpu-2t|def"),
             sample((0, 1), 0.0, 0.1)]  # too deep, another device, another subset: none of them counts
    same = subset_gain([sample((3, 5), 0.01, 0.48), sample((3, 5), 0.3, 0.1)], prior, "cpu-1t|abc", 0.02, "resnet20")
    assert same is not None and not same["pays"] and same["all_class_episodes"] == 2
    assert same["ratio"] == pytest.approx(0.5 / 0.48) and same["max_drop"] == pytest.approx(2.0)
    assert same["says"].startswith("the class subset buys little or nothing on resnet20 on cpu-1t")
    faster = subset_gain([sample((3, 5), 0.01, 0.25)], prior, "cpu-1t|abc", 0.02, "resnet20")
    assert faster is not None and faster["pays"] and faster["ratio"] == pytest.approx(2.0)
    assert subset_gain([sample((3, 5), 0.05, 0.25)], prior, "cpu-1t|abc", 0.02, "resnet20") is None  # none within
    assert subset_gain([sample((3, 5), 0.0, 0.25)], prior[2:], "cpu-1t|abc", 0.02, "resnet20") is None  # no all-class
