"""Deployment configs: validation at one boundary, one-line errors."""

from __future__ import annotations

import pytest

from modeltailor.errors import ConfigError
from modeltailor.experiments.spec.deployment import load_config


def write(tmp_path, text: str):
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_deployment():
    cfg = load_config(None)
    assert (cfg.model.name, cfg.data.name, cfg.device.name, cfg.classes) == ("resnet20", "digits", "cpu-1t", None)


def test_overrides_win_over_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "search:\n  episodes: 5\n"), {"search.episodes": 7, "classes": [1, 2]})
    assert cfg.search.episodes == 7 and cfg.classes == [1, 2]


def test_none_overrides_are_ignored(tmp_path):
    cfg = load_config(write(tmp_path, "search:\n  episodes: 5\n"), {"search.episodes": None})
    assert cfg.search.episodes == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("search: {episodes: [1,\n", "is not valid YAML at line"),
        ("serch:\n  episodes: 3\n", "unknown key 'serch'"),
        ("search:\n  episode: 3\n", "unknown key 'search.episode'"),
        ("search:\n  episodes: 0\n", "search.episodes"),
        ("search:\n  min_keep: 0.9\n  max_keep: 0.5\n", "min_keep (0.9) must be below max_keep"),
        ("- a\n- b\n", "must hold a mapping"),
        ("objective:\n  kind: fastest\n", "objective.kind"),
        ("search:\n  skip_blocks: false\n  skip_projection: true\n", "skip_projection needs skip_blocks: true"),
        ("search:\n  lowrank_scheme: cpd\n", "search.lowrank_scheme"),
        ("search:\n  calibration_policies: -1\n", "search.calibration_policies"),
        ("search:\n  surrogate: {warm_margin: -0.1}\n", "search.surrogate.warm_margin"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_renamed_keys_still_read(tmp_path, caplog):
    """search.agent is now search.searcher, device.registry is now device.profiles."""
    cfg = load_config(write(tmp_path, "search:\n  agent: random\ndevice:\n  registry: my.yaml\n"))
    assert cfg.search.searcher == "random" and str(cfg.device.profiles) == "my.yaml"
    assert "search.agent' is now 'search.searcher" in caplog.text
    both = load_config(write(tmp_path, "search:\n  agent: random\n  searcher: uniform\n"))
    assert both.search.searcher == "uniform"  # the new name wins


def test_cli_keeps_the_old_names():
    from typer.testing import CliRunner

    from modeltailor.service.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["device-agent", "--help"]).exit_code == 0
    assert runner.invoke(app, ["device-server", "--help"]).exit_code == 0
    listed = runner.invoke(app, ["devices", "list", "--registry", "/nonexistent.yaml"])
    assert listed.exit_code != 0 and "nonexistent.yaml" in str(listed.exception or listed.output)


def test_ppo_settings_come_from_the_yaml_and_default_to_the_searchers_own():
    import dataclasses

    from modeltailor.agent import PPOSettings, make_searcher

    assert load_config(None).search.ppo.model_dump() == dataclasses.asdict(PPOSettings())
    config = load_config(None, {"search.ppo.hidden": 32, "search.ppo.ent_coef": 0.01})
    real = make_searcher("ppo-real", 0, None, config.search.ppo.model_dump())
    assert real.settings.hidden == 32 and real.settings.ent_coef == 0.01  # type: ignore[attr-defined]
    config = load_config(None, {"search.ppo.hidden": 32, "search.surrogate.round_episodes": 7})
    assisted = make_searcher("ppo", 0, None, config.search.ppo.model_dump(), surrogate=config.search.surrogate.model_dump())
    assert assisted.ppo.hidden == 32 and assisted.settings.round_episodes == 7  # type: ignore[attr-defined]
    assert assisted.name == "ppo" and real.name == "ppo-real"
    with pytest.raises(ConfigError, match=r"search.ppo.lr"):
        load_config(None, {"search.ppo.lr": 0.1})
    with pytest.raises(ConfigError, match=r"search.ppo.hidden"):
        load_config(None, {"search.ppo.hidden": 0})
