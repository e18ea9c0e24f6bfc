"""Campaign specs: a base deployment and its derived deployments, validated at one boundary.

Good specs load into named, validated `DeploymentConfig`s (overrides merged over the base, file
paths made absolute against the file that names them); bad ones raise one-line `ConfigError`s that
name the entry and the key, and the `campaign` command turns them into exit status 2 before it
creates or touches anything in its out folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from modeltailor.errors import ConfigError
from modeltailor.experiments.spec.campaign import Campaign, derived_name, load_campaign
from modeltailor.experiments.spec.deployment import DeploymentConfig, TrackingConfig
from modeltailor.service import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """\
name: base-deployment
model: {name: resnet20}
device: {name: cpu-1t, runs: 50}
objective: {kind: budget, max_latency_ratio: 0.45}
search: {episodes: 10, round_to: 8}
recovery: {episode_steps: 4}
train: {epochs: 2}
tracking: {enabled: true, uri: 'sqlite:///base.db', experiment: base-exp}
"""


@pytest.fixture
def base_file(tmp_path) -> Path:
    return write(tmp_path / "base.yaml", BASE)


def campaign(tmp_path, text: str, overrides=None, name: str = "campaign.yaml") -> Campaign:
    return load_campaign(write(tmp_path / name, text), overrides)


# --- good specs --------------------------------------------------------------------------------


def test_example_campaign_loads_four_deployments_merged_over_its_base():
    loaded = load_campaign(EXAMPLES / "campaign-digits.yaml")
    base = DeploymentConfig.model_validate(
        yaml.safe_load((EXAMPLES / "digits-resnet20.yaml").read_text())
    )
    assert loaded.spec.name == "digits-fleet"
    assert loaded.spec.max_concurrent == 2
    assert (loaded.spec.resources.cpus, loaded.spec.resources.gpus) == (1, 0)
    assert list(loaded.deployments) == ["all-cpu1t", "all-cpu2t", "c037-cpu1t", "c037-cpu2t"]
    got = {
        name: (d.classes, d.device.name, d.objective.max_latency_ratio, d.objective.max_memory_ratio)
        for name, d in loaded.deployments.items()
    }
    assert got == {
        "all-cpu1t": (None, "cpu-1t", 0.45, None),
        "all-cpu2t": (None, "cpu-2t", 0.45, None),
        "c037-cpu1t": ([0, 3, 7], "cpu-1t", 0.35, 0.3),
        "c037-cpu2t": ([0, 3, 7], "cpu-2t", 0.35, 0.3),
    }
    for name, deployment in loaded.deployments.items():
        assert deployment.name == name  # the entry's name, not the base file's
        # everything an entry does not override is the base's
        assert deployment.model == base.model and deployment.data == base.data
        # every PPO search warm-starts from the nearest finished agent (auto, the default): the two
        # that start later find the first two's
        assert deployment.search == base.search and deployment.search.warm_start == "auto"
        assert deployment.recovery == base.recovery
        assert deployment.search.round_to == 8 and deployment.recovery.final_steps == 800
        assert deployment.objective.kind == "budget"
    # no campaign tracking: the campaign tracks like its (first) deployment
    assert loaded.tracking == base.tracking


def test_mappings_merge_key_by_key_and_lists_replace(tmp_path, base_file):
    loaded = campaign(tmp_path, """\
base: base.yaml
deployments:
  - {name: merged, classes: [5], objective: {max_memory_ratio: 0.3}, search: {episodes: 3},
     device: {name: cpu-2t}}
  - {name: plain}
""")
    merged, plain = loaded.deployments["merged"], loaded.deployments["plain"]
    # objective: the base's budget stays, the entry's memory budget is added
    assert (merged.objective.kind, merged.objective.max_latency_ratio, merged.objective.max_memory_ratio) == (
        "budget", 0.45, 0.3,
    )
    assert (merged.search.episodes, merged.search.round_to) == (3, 8)
    assert (merged.device.name, merged.device.runs) == ("cpu-2t", 50)
    assert merged.classes == [5]
    # one entry's overrides do not leak into the next one (the base is copied per entry)
    assert (plain.objective.max_memory_ratio, plain.search.episodes, plain.device.name) == (None, 10, "cpu-1t")
    assert plain.recovery.episode_steps == 4 and plain.train.epochs == 2


def test_list_override_replaces_the_base_list(tmp_path):
    write(tmp_path / "base.yaml", "classes: [1, 2, 3]\nsearch: {methods: [prune, lowrank]}\n")
    loaded = campaign(tmp_path, "base: base.yaml\ndeployments:\n  - {classes: [7], search: {methods: [int8]}}\n")
    (deployment,) = loaded.deployments.values()
    assert deployment.classes == [7] and deployment.search.methods == ["int8"]


def test_inline_base_mapping(tmp_path):
    loaded = campaign(tmp_path, """\
base: {search: {episodes: 4}, objective: {kind: tradeoff}}
deployments:
  - {device: {name: cpu-2t}}
""")
    (deployment,) = loaded.deployments.values()
    assert (deployment.search.episodes, deployment.objective.kind, deployment.device.name) == (4, "tradeoff", "cpu-2t")


def test_no_base_derives_from_the_defaults(tmp_path):
    (deployment,) = campaign(tmp_path, "deployments:\n  - {}\n").deployments.values()
    assert deployment.model_dump(exclude={"name"}) == DeploymentConfig().model_dump(exclude={"name"})


def test_file_entry_loads_a_whole_deployment_relative_to_the_campaign_file(tmp_path, base_file):
    write(tmp_path / "deps" / "own.yaml", "name: own-deployment\nsearch: {episodes: 7}\ndevice: {name: cpu-2t}\n")
    write(tmp_path / "deps" / "renamed.yaml", "classes: [1, 2]\n")
    loaded = campaign(tmp_path, """\
base: base.yaml
deployments:
  - {name: from-base}
  - file: deps/own.yaml
  - {name: renamed, file: deps/renamed.yaml}
""")
    assert list(loaded.deployments) == ["from-base", "own-deployment", "renamed"]
    own = loaded.deployments["own-deployment"]
    # the whole file, not merged over the base
    assert (own.search.episodes, own.search.round_to, own.device.name) == (7, 4, "cpu-2t")
    assert own.objective.max_latency_ratio is None and own.tracking == TrackingConfig()
    renamed = loaded.deployments["renamed"]
    assert renamed.classes == [1, 2] and renamed.name == "renamed"


def test_relative_paths_resolve_against_the_file_that_names_them(tmp_path):
    write(tmp_path / "bases" / "base.yaml", "model: {weights: teacher.pt}\ndata: {name: imagefolder, root: images}\n")
    write(tmp_path / "deps" / "d.yaml", "name: from-file\ndevice: {profiles: ../profiles/p.yaml}\n")
    loaded = campaign(tmp_path, f"""\
base: ../bases/base.yaml
deployments:
  - {{name: inherits}}
  - {{name: overrides, device: {{profiles: my-profiles.yaml}}, data: {{root: other-images}}}}
  - {{name: absolute, model: {{weights: {tmp_path / "abs.pt"}}}}}
  - file: ../deps/d.yaml
""", name="campaigns/c.yaml")
    inherits, overrides, absolute, from_file = loaded.deployments.values()
    # the base's paths: relative to the base file
    assert inherits.model.weights == tmp_path / "bases" / "teacher.pt"
    assert inherits.data.root == tmp_path / "bases" / "images"
    assert inherits.device.profiles is None
    # an entry's paths: relative to the campaign file
    assert overrides.device.profiles == tmp_path / "campaigns" / "my-profiles.yaml"
    assert overrides.data.root == tmp_path / "campaigns" / "other-images"
    assert overrides.model.weights == tmp_path / "bases" / "teacher.pt"
    assert absolute.model.weights == tmp_path / "abs.pt"
    # a file entry's paths: relative to that file (and normalized)
    assert from_file.device.profiles == tmp_path / "profiles" / "p.yaml"
    for deployment in loaded.deployments.values():
        for path in (deployment.model.weights, deployment.data.root, deployment.device.profiles):
            assert path is None or path.is_absolute()


def test_relative_campaign_path_still_gives_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path / "sub" / "c.yaml", "deployments:\n  - {model: {weights: w.pt}}\n")
    monkeypatch.chdir(tmp_path)
    (deployment,) = load_campaign(Path("sub/c.yaml")).deployments.values()
    assert deployment.model.weights == tmp_path / "sub" / "w.pt"


def test_derived_names_from_classes_and_device(tmp_path):
    loaded = campaign(tmp_path, """\
deployments:
  - {}
  - {classes: [0, 3, 7], device: {name: cpu-2t}}
  - {classes: [cat, dog], device: {name: 'phone/arm 64'}}
""")
    assert list(loaded.deployments) == ["all-cpu-1t", "c0-3-7-cpu-2t", "ccat-dog-phone-arm-64"]
    assert [d.name for d in loaded.deployments.values()] == list(loaded.deployments)
    assert derived_name(DeploymentConfig(classes=[1], device={"name": "cpu-1t"})) == "c1-cpu-1t"


def test_overrides_apply_to_the_spec_and_to_every_deployment(tmp_path, base_file):
    write(tmp_path / "d.yaml", "name: whole\nsearch: {episodes: 30}\n")
    loaded = campaign(
        tmp_path,
        "base: base.yaml\nmax_concurrent: 1\ndeployments:\n  - {name: a, search: {episodes: 9}}\n  - file: d.yaml\n",
        {"max_concurrent": 3, "resources.cpus": 2, "resources.gpus": None, "deployment.search.episodes": 5},
    )
    assert loaded.spec.max_concurrent == 3
    assert (loaded.spec.resources.cpus, loaded.spec.resources.gpus) == (2, 0)  # None: not overridden
    assert {name: d.search.episodes for name, d in loaded.deployments.items()} == {"a": 5, "whole": 5}
    assert loaded.deployments["a"].search.round_to == 8  # the rest of the base's search stays


def test_bad_override_is_a_config_error(tmp_path):
    write(tmp_path / "c.yaml", "deployments:\n  - {}\n")
    with pytest.raises(ConfigError, match="max_concurrent"):
        load_campaign(tmp_path / "c.yaml", {"max_concurrent": 0})
    with pytest.raises(ConfigError, match=r"deployments\[0\]: search.episodes"):
        load_campaign(tmp_path / "c.yaml", {"deployment.search.episodes": 0})
    write(tmp_path / "scalar.yaml", "base: {search: 3}\ndeployments:\n  - {}\nresources: 2\n")
    with pytest.raises(ConfigError, match=r"cannot override 'resources.cpus'"):
        load_campaign(tmp_path / "scalar.yaml", {"resources.cpus": 2})
    with pytest.raises(ConfigError, match=r"deployments\[0\]: cannot override 'search.episodes'"):
        load_campaign(tmp_path / "scalar.yaml", {"resources": {"cpus": 1}, "deployment.search.episodes": 2})


def test_campaign_tracking_replaces_every_deployments_tracking(tmp_path, base_file):
    write(tmp_path / "d.yaml", "name: whole\ntracking: {uri: 'sqlite:///mine.db'}\n")
    loaded = campaign(tmp_path, """\
base: base.yaml
tracking: {enabled: false, experiment: fleet}
deployments:
  - {name: a}
  - file: d.yaml
""")
    wanted = TrackingConfig(enabled=False, uri=None, experiment="fleet")  # replaced, not merged
    assert loaded.tracking == wanted
    assert {name: d.tracking for name, d in loaded.deployments.items()} == {"a": wanted, "whole": wanted}


def test_without_campaign_tracking_each_deployment_keeps_its_own(tmp_path, base_file):
    loaded = campaign(tmp_path, "base: base.yaml\ndeployments:\n  - {name: a}\n")
    assert loaded.deployments["a"].tracking == TrackingConfig(uri="sqlite:///base.db", experiment="base-exp")
    assert loaded.tracking == loaded.deployments["a"].tracking


# --- bad specs ---------------------------------------------------------------------------------

BAD = {
    "unknown key in an entry": (
        "deployments:\n  - {name: a}\n  - {name: b, tracking: {enabled: false}}\n",
        ["deployments[1]", "'deployments[1].tracking'", "may set: name, classes"],
    ),
    "typo in an entry": (
        "deployments:\n  - {name: a}\n  - {name: b, clases: [1]}\n",
        ["deployments[1]", "clases"],
    ),
    "unknown nested key": (
        "deployments:\n  - {device: {nmae: x}}\n",
        ["deployments[0]", "device.nmae"],
    ),
    "unknown top-level key": (
        "deploymnts:\n  - {}\n",
        ["unknown key 'deploymnts'", "deployments"],
    ),
    "empty deployments": ("deployments: []\n", ["deployments", "empty", "add at least one"]),
    "missing deployments": ("name: fleet\n", ["deployments", "missing"]),
    "empty file": ("", ["deployments", "missing"]),
    "deployments not a list": ("deployments: {name: a}\n", ["deployments", "list"]),
    "entry not a mapping": ("deployments:\n  - cpu-1t\n", ["deployments[0]"]),
    "missing base file": ("base: nope.yaml\ndeployments:\n  - {}\n", ["base", "nope.yaml", "not found"]),
    "base of the wrong kind": ("base: [1, 2]\ndeployments:\n  - {}\n", ["base", "mapping"]),
    "missing entry file": (
        "deployments:\n  - {}\n  - file: deps/nope.yaml\n",
        ["deployments[1]", "nope.yaml", "not found"],
    ),
    "invalid entry file": (
        "deployments:\n  - file: broken.yaml\n",
        ["deployments[0]", "broken.yaml", "not valid YAML"],
    ),
    "unknown key in an entry file": (
        "deployments:\n  - file: unknown-key.yaml\n",
        ["deployments[0] (file 'unknown-key.yaml')", "unknown key 'tracker'", "config-schema"],
    ),
    "unknown key in the resources": (
        "deployments:\n  - {}\nresources: {cpu: 2}\n",
        ["unknown key 'resources.cpu'"],
    ),
    "bad value in an entry file": (
        "deployments:\n  - file: bad-value.yaml\n",
        ["deployments[0]", "bad-value.yaml", "search.episodes"],
    ),
    "file with overrides": (
        "deployments:\n  - {file: d.yaml, classes: [1], search: {episodes: 2}}\n",
        ["deployments[0]", "either 'file' or overrides", "classes, search"],
    ),
    "duplicate names": ("deployments:\n  - {name: a}\n  - {name: a}\n", ["deployments[1]", "'a'", "distinct"]),
    "duplicate derived names": (
        "deployments:\n  - {device: {name: cpu-1t}}\n  - {}\n",
        ["deployments[1]", "'all-cpu-1t'", "distinct"],
    ),
    "name with a slash": ("deployments:\n  - {name: a/b}\n", ["deployments[0].name", "'a/b'"]),
    "empty name": ("deployments:\n  - {name: ''}\n", ["deployments[0].name", "''"]),
    "bad value": ("deployments:\n  - {search: {episodes: 0}}\n", ["deployments[0]", "search.episodes"]),
    "bad resources": ("deployments:\n  - {}\nresources: {cpus: 0}\n", ["resources.cpus"]),
    "non-mapping yaml": ("- {name: a}\n- {name: b}\n", ["must hold a mapping", "list"]),
    "invalid yaml": ("deployments:\n  - {name: a\n", ["not valid YAML", "line"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_is_one_line_naming_the_place(tmp_path, case):
    text, fragments = BAD[case]
    write(tmp_path / "d.yaml", "name: whole\n")
    write(tmp_path / "broken.yaml", "search: {episodes: [1,\n")
    write(tmp_path / "bad-value.yaml", "search: {episodes: -1}\n")
    write(tmp_path / "unknown-key.yaml", "tracker: {enabled: false}\n")
    path = write(tmp_path / "campaign.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    assert message.startswith(f"campaign file '{path}'"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "Value error" not in message and "lax-or-strict" not in message, message


def test_missing_campaign_file(tmp_path):
    with pytest.raises(ConfigError, match=r"campaign file '.*nope\.yaml' not found: pass a campaign YAML"):
        load_campaign(tmp_path / "nope.yaml")


# --- through the CLI ---------------------------------------------------------------------------


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["modeltailor", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return int(info.value.code), capsys.readouterr().err


@pytest.fixture
def no_runner(monkeypatch):
    """The campaign runner (Ray) must never be reached with a bad spec; stubbed to fail loudly (and import fast)."""

    def run_campaign(*args, **kwargs):
        raise AssertionError("run_campaign was called with a bad campaign spec")

    stub = types.ModuleType("modeltailor.experiments.fleet.campaign")
    stub.run_campaign = run_campaign
    monkeypatch.setitem(sys.modules, "modeltailor.experiments.fleet.campaign", stub)


@pytest.mark.parametrize("case", ["unknown key in an entry", "missing base file", "duplicate names", "invalid yaml"])
@pytest.mark.parametrize("flags", [(), ("--no-tracking", "--episodes", "2")])
def test_cli_bad_campaign_exits_2_with_one_line_and_touches_nothing(tmp_path, monkeypatch, capsys, no_runner, case, flags):
    text, fragments = BAD[case]
    bad = write(tmp_path / "bad.yaml", text)
    out = tmp_path / "out"
    write(out / "campaign.json", '{"earlier": "run"}')
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, err = run_main(monkeypatch, capsys, "campaign", "--config", str(bad), "--out", str(out), *flags)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: campaign file"), err
    assert all(fragment in lines[0] for fragment in fragments), err
    assert "Traceback" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "campaign.json").read_text() == '{"earlier": "run"}'


def test_cli_bad_campaign_does_not_create_the_out_folder(tmp_path, monkeypatch, capsys, no_runner):
    bad = write(tmp_path / "bad.yaml", "deployments: []\n")
    code, err = run_main(monkeypatch, capsys, "campaign", "--config", str(bad), "--out", str(tmp_path / "new"))
    assert code == 2 and "empty" in err and not (tmp_path / "new").exists()


def test_cli_missing_campaign_file(tmp_path, monkeypatch, capsys, no_runner):
    code, err = run_main(monkeypatch, capsys, "campaign", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and "not found" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_real_process_bad_campaign_prints_no_traceback(tmp_path):
    bad = write(tmp_path / "bad.yaml", "deployments:\n  - {name: a, clases: [1]}\n")
    out = tmp_path / "out"
    env = {**os.environ, "MODELTAILOR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "modeltailor.service.cli", "campaign", "--config", str(bad), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "deployments[0]" in lines[0] and "clases" in lines[0], proc.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()
