"""Architectures written by others (tests/corpus.py) through check-model, train, search and apply.

Every corpus model either compresses end to end (at least one compressible unit; a smaller ONNX
model whose outputs match torch) or is refused with one line saying why; no command prints a
traceback. The search settings are tiny: this checks that the machinery holds on each idiom, not
what a real search would reach (bench/corpus.py measures that).
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import yaml

from modeltailor.compressors.head import narrow_classifier
from modeltailor.compressors.units import analyze_model, find_output_layer
from modeltailor.service import cli
from tests import corpus

OUTPUT_LAYERS = {
    "conv_head": ("head.1", True),
    "shufflenet": ("linear", True),
    "squeeze_excite": ("fc", True),
    "densenet": ("classifier", True),
    "inception": ("fc", True),
    "depthwise_hardswish": ("classifier.1", True),
    "flatten_view": ("fc2", True),
    "functional": ("fc", True),
    "adaptive_large": ("12.3", True),
    "softmax_head": ("fc", False),  # log_softmax mixes the outputs: found, protected, not narrowable
}
FROZEN = {"shufflenet": {"layers.0.conv3", "layers.2.conv3"}}
"""Units the pre-search check freezes: a channel shuffle written as view/transpose, which
Torch-Pruning cannot follow ("INDICES element is out of DATA bounds" when it prunes them)."""

TINY = {
    "data": {"name": "digits", "input_size": 16},
    "train": {"epochs": 12},
    "search": {"episodes": 3, "round_to": 2, "surrogate": {"pretrain_episodes": 40, "round_episodes": 10}},
    "objective": {"kind": "tradeoff"},
    "recovery": {"episode_steps": 5, "final_steps": 20, "finalists": 1},
    "device": {"runs": 8, "warmup": 2},
    "tracking": {"enabled": False},
}


def test_corpus_lists_every_factory():
    assert set(corpus.CORPUS) == set(OUTPUT_LAYERS)
    assert all(callable(getattr(corpus, name)) for name in corpus.CORPUS.values())


@pytest.mark.parametrize("name", sorted(OUTPUT_LAYERS))
def test_output_layer_found_from_the_graph(name):
    model = getattr(corpus, corpus.CORPUS[name])().eval()
    example = torch.zeros(1, 1, 16, 16)
    found = find_output_layer(model, example)
    assert found is not None and (found.name, found.one_to_one) == OUTPUT_LAYERS[name]
    classes = [7, 2, 5]
    if not found.one_to_one:
        with pytest.raises(Exception, match="cannot keep only the deployment's classes"):
            narrow_classifier(model, classes, example)
        return
    narrowed = narrow_classifier(model, classes, example).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(narrowed(x), model(x)[:, classes], atol=1e-5)
    assert sum(p.numel() for p in narrowed.parameters()) < sum(p.numel() for p in model.parameters())


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process, as a user runs it: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["modeltailor", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_config(tmp_path, name: str, **extra) -> str:
    config = {**TINY, "name": f"corpus-{name}", "model": {"factory": f"tests.corpus:{corpus.CORPUS[name]}"}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OUTPUT_LAYERS))
def test_corpus_model_through_check_train_search_apply(name, tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, name)
    report_file = tmp_path / "report.json"
    code, out, err = run_cli(monkeypatch, capsys, "check-model", "--config", config, "--json", str(report_file))
    assert code == 0 and "Traceback" not in out + err, err
    report = json.loads(report_file.read_text())
    assert report["output_layer"] == OUTPUT_LAYERS[name][0] and "untrained" in report["teacher"]
    frozen = {u["unit"] for u in report["units"] if u["frozen"]}
    assert frozen == FROZEN.get(name, set())
    assert all("compressing failed" in u["failed"]["prune"] for u in report["units"] if u["frozen"])
    # the check lists every unit the analysis finds on the model, and leaves some to compress
    net = getattr(corpus, corpus.CORPUS[name])(num_classes=10, in_channels=1)
    units = [u.name for u in analyze_model(net, torch.zeros(1, 1, TINY["data"]["input_size"], TINY["data"]["input_size"])).units]
    assert [u["unit"] for u in report["units"]] == units and len(units) > len(frozen), report["units"]

    # no weights yet: refused in one line, not searched untrained
    line = one_line_error(*run_cli(monkeypatch, capsys, "search", "--config", config, "--out", str(tmp_path / "x"))[::2])
    assert "has no weights" in line and "modeltailor train" in line

    code, out, err = run_cli(monkeypatch, capsys, "train", "--config", config)
    assert code == 0 and "trained now, cached at" in out, err

    search_out = tmp_path / "search"
    code, out, err = run_cli(monkeypatch, capsys, "search", "--config", config, "--out", str(search_out))
    assert code == 0 and "Traceback" not in out + err, err
    for unit in frozen:
        assert f"unit '{unit}' is frozen for this search" in out
    summary = json.loads((search_out / "summary.json").read_text())
    assert summary["best"]["params"] < summary["baseline"]["params"]
    assert summary["onnx_parity"]["value"] < 1e-4
    changed = {u["unit"] for u in summary["policy"]["units"] if u["keep"] < 1.0 or u["method"] != "prune"}
    assert changed and not changed & frozen, "a frozen unit was compressed"

    apply_out = tmp_path / "apply"
    code, out, err = run_cli(monkeypatch, capsys, "apply", "--config", config, "--policy",
                             str(search_out / "policy.json"), "--out", str(apply_out), "--distill-steps", "2")
    assert code == 0 and "Traceback" not in out + err, err
    rebuilt = re.search(r"rebuilt: ([\d,]+) parameters \(original ([\d,]+)\)", out)
    assert rebuilt is not None, out
    params, original = (int(v.replace(",", "")) for v in rebuilt.groups())
    assert params == summary["best"]["params"] < original
    assert (apply_out / "model.onnx").is_file()


@pytest.mark.slow
def test_conv_head_class_subset_is_narrowed(tmp_path, monkeypatch, capsys):
    """A 1x1-conv classifier keeps the subset's channels: a 3-output model, searched end to end."""
    config = write_config(tmp_path, "conv_head", classes=[1, 4, 7])
    assert run_cli(monkeypatch, capsys, "train", "--config", config)[0] == 0
    code, out, err = run_cli(monkeypatch, capsys, "search", "--config", config, "--out", str(tmp_path / "s"))
    assert code == 0, err
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["classes"] == [1, 4, 7] and summary["onnx_parity"]["value"] < 1e-4


def test_softmax_head_with_a_class_subset_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, "softmax_head", classes=[1, 4, 7])
    line = one_line_error(*run_cli(monkeypatch, capsys, "check-model", "--config", config)[::2])
    assert "cannot keep only the deployment's classes" in line and "'fc'" in line
