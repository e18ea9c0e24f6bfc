"""The CLI on bad input: one line on stderr, exit status 2, no traceback, nothing trained."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from modeltailor.models import build_model
from modeltailor.service import cli

BAD_FACTORY_MODULE = "definitely_not_a_module_xyz"


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["modeltailor", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return int(info.value.code), capsys.readouterr().err


def config(tmp_path, text: str) -> str:
    path = tmp_path / "d.yaml"
    path.write_text("tracking: {enabled: false}\ntrain: {epochs: 1}\n" + text)
    return str(path)


def cases(tmp_path):
    vgg = tmp_path / "vgg.pt"
    torch.save(build_model("vgg", in_channels=1, num_classes=10).state_dict(), vgg)
    return {
        "missing weights": ("model: {weights: /no/such/file.pt}\n", "weights file '/no/such/file.pt' not found"),
        "factory import": (f"model: {{factory: '{BAD_FACTORY_MODULE}:make'}}\n", BAD_FACTORY_MODULE),
        "state dict misfit": (f"model: {{weights: '{vgg}'}}\n", "does not fit"),
        "unknown data set": ("data: {name: imagenet}\n", "unknown data set 'imagenet'"),
        "unknown device": ("device: {name: pixel9}\n", "unknown device 'pixel9'"),
        "class out of range": ("classes: [1, 12]\n", "12"),
        "empty class list": ("classes: []\n", "is empty"),
        "unknown class name": ("classes: ['3', 'seven']\n", "unknown class name 'seven'"),
        "malformed yaml": ("search: {episodes: [1,\n", "not valid YAML"),
        "unknown key": ("search: {agents: ppo}\n", "unknown key 'search.agents'"),
        "warm start without ppo": ("search: {searcher: random, warm_start: runs/x}\n", "warm_start needs searcher: ppo"),
        "warm start from nothing": ("search: {warm_start: /no/such/run}\n", "'/no/such/run' is neither an agent"),
        "warm start from a run without tracking": (f"search: {{warm_start: '{'a' * 32}'}}\n", "tracking is disabled"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing weights", "factory import", "state dict misfit", "unknown data set", "unknown device",
     "class out of range", "empty class list", "unknown class name", "malformed yaml", "unknown key",
     "warm start without ppo", "warm start from nothing", "warm start from a run without tracking"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, case):
    text, fragment = cases(tmp_path)[case]
    code, err = run_main(monkeypatch, capsys, "search", "--config", config(tmp_path, text), "--out", str(tmp_path / "o"))
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert fragment in " ".join(lines)
    assert "Traceback" not in err
    assert not (tmp_path / "cache" / "teachers").exists(), "a teacher was trained before the error"


def test_unknown_class_name_flag(tmp_path, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "search", "--classes", "1,x", "--no-tracking")
    assert code == 2 and "unknown class name 'x'" in err


@pytest.mark.slow
def test_real_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "MODELTAILOR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "modeltailor.service.cli", "search", "--config",
         config(tmp_path, "data: {name: imagenet}\n")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown data set 'imagenet'" in proc.stderr and "Traceback" not in proc.stderr


def test_show_config_prints_effective_yaml(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["modeltailor", "show-config"])
    cli.main()
    assert "resnet20" in capsys.readouterr().out


def test_summary_schema_prints_the_published_schema(monkeypatch, capsys):
    import json

    from modeltailor.experiments.spec.summary import SearchSummary

    monkeypatch.setattr(sys, "argv", ["modeltailor", "summary-schema"])
    cli.main()
    assert json.loads(capsys.readouterr().out) == SearchSummary.model_json_schema()


def test_pick_reads_a_search_folder(tmp_path, monkeypatch, capsys):
    import json

    from modeltailor.compressors.policy import Policy
    from tests.test_summary import sample_summary

    (tmp_path / "summary.json").write_text(json.dumps(sample_summary().model_dump(mode="json")))
    monkeypatch.setattr(sys, "argv", ["modeltailor", "pick", "--run", str(tmp_path), "--max-latency-ms", "0.5",
                                      "--out", str(tmp_path / "picked.json")])
    cli.main()
    assert "episode 3: accuracy 0.9000" in capsys.readouterr().out
    assert dict(Policy.load(tmp_path / "picked.json").meta)["picked_from_episode"] == 3
    code, err = run_main(monkeypatch, capsys, "pick", "--run", str(tmp_path), "--max-latency-ms", "0.1")
    assert code == 2 and "no result of this search meets the limits" in err


@pytest.mark.slow
def test_fold_report_measures_what_folding_changes(tmp_path, monkeypatch, capsys):
    import json

    path = tmp_path / "d.yaml"
    path.write_text("model: {kwargs: {width: 0.5}}\ndata: {input_size: 16}\ntrain: {epochs: 1}\n")
    monkeypatch.setattr(sys, "argv", ["modeltailor", "fold-report", "--config", str(path), "--runs", "5",
                                      "--json", str(tmp_path / "r.json")])
    cli.main()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["unfolded"]["ops"].get("BatchNormalization", 0) > 0
    assert "BatchNormalization" not in report["exported"]["ops"]
    assert report["unfolded"]["nodes"] > report["exported"]["nodes"]
    assert report["exported"]["ort"]["all"]["nodes"] < report["exported"]["ort"]["disable"]["nodes"]
    assert "layer folding" in capsys.readouterr().out


@pytest.mark.parametrize("args", [("search", "--episodes", "abc"), ("best", "--device", "cpu-1t", "--min-accuracy", "x")])
def test_a_bad_flag_value_is_a_usage_line_not_a_traceback(monkeypatch, capsys, args):
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "Invalid value" in err and "Traceback" not in err
