"""Device profiles (modeltailor.devices.profiles) and `modeltailor devices list`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modeltailor.devices.local import LocalOrtDevice
from modeltailor.devices.profiles import (
    LocalOrtSpec,
    RemoteSpec,
    TableSpec,
    get_device,
    list_devices,
    load_profiles,
)
from modeltailor.devices.remote import RemoteDevice
from modeltailor.errors import ConfigError, DeviceError
from modeltailor.service.devices_cli import devices_app

BUILTINS = ["cpu-1t", "cpu-2t", "cpu-1t-basic", "board"]


@pytest.fixture(autouse=True)
def _no_user_registry(tmp_path, monkeypatch):
    """No ~/.config registry and no $MODELTAILOR_DEVICES unless a test sets one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODELTAILOR_DEVICES", raising=False)
    monkeypatch.delenv("MODELTAILOR_DEVICE_TOKEN", raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_builtins_load():
    specs = load_profiles()
    assert list(specs)[: len(BUILTINS)] == BUILTINS
    assert specs["cpu-2t"] == LocalOrtSpec(
        intra_op_threads=2, description=specs["cpu-2t"].description
    )
    assert specs["cpu-1t-basic"].graph_optimization_level == "basic"
    assert isinstance(specs["board"], RemoteSpec)
    assert specs["board"].url == "http://127.0.0.1:8765"
    assert specs["board"].token_env == "MODELTAILOR_DEVICE_TOKEN"
    assert all(spec.description for spec in specs.values())


def test_local_device_built_with_timing_overrides():
    device = get_device("cpu-1t-basic", runs=30, warmup=3)
    assert isinstance(device, LocalOrtDevice)
    assert (device.name, device.intra_op_threads, device.graph_optimization_level) == (
        "cpu-1t-basic", 1, "basic",
    )
    assert (device.runs, device.warmup) == (30, 3)
    assert get_device("cpu-2t").runs == LocalOrtDevice().runs


def test_user_file_merges_and_overrides(tmp_path, monkeypatch):
    user = write(
        tmp_path / "user.yaml",
        "devices:\n"
        "  cpu-1t: {kind: local-ort, intra_op_threads: 1, int8: true, description: mine}\n"
        "  cpu-4t: {kind: local-ort, intra_op_threads: 4}\n",
    )
    monkeypatch.setenv("MODELTAILOR_DEVICES", str(user))
    specs = load_profiles()
    assert specs["cpu-1t"].int8 is True and specs["cpu-1t"].description == "mine"
    assert specs["cpu-4t"].intra_op_threads == 4
    assert "cpu-2t" in specs  # built-ins stay
    assert get_device("cpu-4t").intra_op_threads == 4
    names = [name for name, _ in list_devices()]
    assert names[: len(BUILTINS)] == BUILTINS and names[-1] == "cpu-4t"


def test_default_user_file_and_explicit_path(tmp_path, monkeypatch):
    write(
        tmp_path / "home" / ".config" / "modeltailor" / "devices.yaml",
        "devices:\n  mine: {kind: local-ort, description: from home}\n",
    )
    extra = write(tmp_path / "extra.yaml", "devices:\n  mine: {kind: local-ort, description: explicit}\n")
    assert load_profiles()["mine"].description == "from home"
    assert load_profiles(extra)["mine"].description == "explicit"


def test_unknown_device_lists_the_choices():
    with pytest.raises(DeviceError) as err:
        get_device("nope")
    assert str(err.value) == (
        "unknown device 'nope': choose one of cpu-1t, cpu-2t, cpu-1t-basic, board "
        "(modeltailor devices list)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("devices:\n  b: {kind: remote, url: 'http://x:1', tokn: T}\n", "devices.b.tokn"),
        ("devices:\n  c: {kind: local-ort, intra_op_threads: 0}\n", "devices.c.intra_op_threads"),
        ("devices:\n  c: {kind: local-ort, graph_optimization_level: max}\n", "devices.c.graph_optimization_level"),
        ("devices:\n  c: {kind: gpu}\n", "devices.c.kind"),
        ("devices:\n  c: {kind: remote, url: 'ftp://x'}\n", "devices.c.url"),
        ("devices:\n  c: {kind: table}\n", "devices.c.table"),
        ("devicez: {}\n", "devicez"),
        ("devices: [a, b]\n", "devices"),
        ("devices:\n  c: {kind: local-ort\n", "not valid YAML"),
    ],
)
def test_invalid_registry_names_file_and_key(tmp_path, monkeypatch, text, expected):
    bad = write(tmp_path / "bad.yaml", text)
    monkeypatch.setenv("MODELTAILOR_DEVICES", str(bad))
    with pytest.raises(ConfigError) as err:
        get_device("cpu-1t")
    message = str(err.value)
    assert str(bad) in message and expected in message
    assert "\n" not in message


def test_missing_registry_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELTAILOR_DEVICES", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml' not found: fix the path or \$MODELTAILOR_DEVICES"):
        load_profiles()


def test_remote_spec_needs_its_token_env(tmp_path, monkeypatch):
    reg = write(
        tmp_path / "r.yaml",
        "devices:\n  pi: {kind: remote, url: 'http://10.0.0.7:9000/', token_env: PI_TOKEN, timeout_s: 9}\n",
    )
    with pytest.raises(DeviceError, match="set the environment variable PI_TOKEN"):
        get_device("pi", profiles=reg)
    monkeypatch.setenv("PI_TOKEN", "s3cret")
    device = get_device("pi", profiles=reg, runs=7, warmup=2)
    assert isinstance(device, RemoteDevice)
    assert (device.name, device.url, device.token, device.timeout_s) == (
        "pi", "http://10.0.0.7:9000", "s3cret", 9.0,
    )
    assert (device.runs, device.warmup) == (7, 2)


def test_table_spec_path_is_relative_to_the_registry(tmp_path):
    reg = write(tmp_path / "sub" / "r.yaml", "devices:\n  t: {kind: table, table: tables/t.json}\n")
    spec = load_profiles(reg)["t"]
    assert isinstance(spec, TableSpec)
    assert spec.table == (tmp_path / "sub" / "tables" / "t.json").resolve()
    with pytest.raises(DeviceError, match="t.json of device 't' does not exist"):
        get_device("t", profiles=reg)


def test_devices_list_command(tmp_path):
    reg = write(tmp_path / "r.yaml", "devices:\n  edge: {kind: remote, url: 'http://10.1.2.3:8765', int8: true}\n")
    result = CliRunner().invoke(devices_app, ["list", "--registry", str(reg)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in [*BUILTINS, "edge", "http://10.1.2.3:8765", "local-ort"]:
        assert text in result.output
