"""Device profiles: named ways to measure, in YAML, validated with pydantic.

The built-in ``devices/profiles.yaml`` is merged with the user file (``$MODELTAILOR_DEVICES``,
else ``~/.config/modeltailor/devices.yaml``) and then with an explicit ``path``; later files
override earlier ones entry by entry. Kinds: ``local-ort`` (ONNX Runtime on this machine),
``remote`` (a ``modeltailor device-server`` over HTTP) and ``table`` (a per-layer latency table).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from modeltailor.common.validation import Strict, read_yaml, validation_line
from modeltailor.devices.base import TOKEN_ENV, Device
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.errors import ConfigError, DeviceError

REGISTRY_ENV = "MODELTAILOR_DEVICES"
DEFAULT_TOKEN_ENV = TOKEN_ENV
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Spec(Strict):
    model_config = ConfigDict(frozen=True)

    int8: bool = Field(False, description="whether int8 kernels are worth trying on this device")
    description: str = ""


class LocalOrtSpec(_Spec):
    """ONNX Runtime on this machine's CPU."""

    kind: Literal["local-ort"] = "local-ort"
    intra_op_threads: int = Field(1, ge=1, le=256)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"

    @property
    def where(self) -> str:
        return f"{self.intra_op_threads} thread(s), opt {self.graph_optimization_level}"

    def build(self, name: str, runs: int | None, warmup: int | None) -> Device:
        timing = {k: v for k, v in (("runs", runs), ("warmup", warmup)) if v is not None}
        return LocalOrtDevice(
            name=name,
            intra_op_threads=self.intra_op_threads,
            graph_optimization_level=self.graph_optimization_level,
            **timing,
        )


class RemoteSpec(_Spec):
    """A ``modeltailor device-server`` reached over HTTP."""

    kind: Literal["remote"] = "remote"
    url: str
    token_env: str = Field(DEFAULT_TOKEN_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(120.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://10.0.0.7:8765")
        return value.rstrip("/")

    @property
    def where(self) -> str:
        return self.url

    def build(self, name: str, runs: int | None, warmup: int | None) -> Device:
        from modeltailor.devices.remote import RemoteDevice, token_from_env

        timing = {k: v for k, v in (("runs", runs), ("warmup", warmup)) if v is not None}
        token = token_from_env(name, self.token_env)
        return RemoteDevice(name, self.url, token, timeout_s=self.timeout_s, **timing)


class TableSpec(_Spec):
    """A per-layer latency table built by ``modeltailor devices calibrate``."""

    kind: Literal["table"] = "table"
    table: Path

    @property
    def where(self) -> str:
        return str(self.table)

    def build(self, name: str, runs: int | None, warmup: int | None) -> Device:
        if not self.table.is_file():
            raise DeviceError(
                f"latency table {self.table} of device '{name}' does not exist: "
                "build it with `modeltailor devices calibrate` or fix `table` in the device profiles"
            )
        try:
            from modeltailor.devices.latency_table import TableDevice
        except ImportError as exc:
            raise DeviceError(
                f"device '{name}' is a latency table, but this install has no "
                f"modeltailor.devices.latency_table ({exc})"
            ) from exc
        return TableDevice(name=name, table_path=self.table)


DeviceSpec = LocalOrtSpec | RemoteSpec | TableSpec
_KINDS: dict[str, type[_Spec]] = {"local-ort": LocalOrtSpec, "remote": RemoteSpec, "table": TableSpec}


def builtin_path() -> Path:
    return Path(__file__).parent / "profiles.yaml"


def user_path() -> Path | None:
    """The user profiles file: ``$MODELTAILOR_DEVICES`` (must exist) or the default, if it exists."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV]).expanduser()
    default = Path.home() / ".config" / "modeltailor" / "devices.yaml"
    return default if default.is_file() else None


def _where(path: Path) -> str:
    return f"device profiles file '{path}'"


def _parse_entry(path: Path, name: str, raw: Any) -> DeviceSpec:
    if not _NAME.match(name):
        raise ConfigError(f"{_where(path)}: bad device name 'devices.{name}': use letters, digits, '-', '_', '.'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{_where(path)}: 'devices.{name}' must be a mapping with a 'kind'")
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise ConfigError(
            f"{_where(path)}: 'devices.{name}.kind' is {kind!r}: choose one of {', '.join(_KINDS)}"
        )
    data = dict(raw)
    if kind == "table" and data.get("table") is not None:
        data["table"] = (path.parent / Path(str(data["table"])).expanduser()).resolve()
    try:
        return _KINDS[kind].model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        allowed = f" (a {kind} device takes {', '.join(_KINDS[kind].model_fields)})"
        raise ConfigError(validation_line(exc, _where(path), under=f"devices.{name}", unknown_hint=allowed)) from None


def read_profiles_file(path: Path) -> dict[str, DeviceSpec]:
    """Parse and validate one device profiles file; ConfigError naming the file and the bad key."""
    data = read_yaml(path, _where(path), missing=f"fix the path or ${REGISTRY_ENV}", expect="a mapping with a 'devices' key")
    extra = sorted(set(data) - {"devices"})
    if extra:
        raise ConfigError(f"{_where(path)}: unknown key '{extra[0]}' (only 'devices' is allowed)")
    devices = data.get("devices") or {}
    if not isinstance(devices, dict):
        raise ConfigError(f"{_where(path)}: 'devices' must be a mapping of name -> profile")
    return {str(name): _parse_entry(path, str(name), raw) for name, raw in devices.items()}


def profile_files(path: Path | None = None) -> list[Path]:
    """The files merged, in order: built-in, user (if any), explicit ``path`` (if given)."""
    files = [builtin_path()]
    user = user_path()
    if user is not None:
        files.append(user)
    if path is not None:
        files.append(Path(path).expanduser())
    return files


def load_profiles(path: Path | None = None) -> dict[str, DeviceSpec]:
    """Every device profile, later files overriding earlier ones by name."""
    merged: dict[str, DeviceSpec] = {}
    for file in profile_files(path):
        merged.update(read_profiles_file(file))
    return merged


def list_devices(profiles: Path | None = None) -> list[tuple[str, DeviceSpec]]:
    """(name, spec) pairs in profile order (built-ins first, then new user entries)."""
    return list(load_profiles(profiles).items())


def get_spec(name: str, profiles: Path | None = None) -> DeviceSpec:
    specs = load_profiles(profiles)
    if name not in specs:
        raise DeviceError(
            f"unknown device '{name}': choose one of {', '.join(specs)} (modeltailor devices list)"
        )
    return specs[name]


def get_device(
    name: str,
    *,
    profiles: Path | None = None,
    runs: int | None = None,
    warmup: int | None = None,
) -> Device:
    """The device profile ``name``, built: LocalOrtDevice, RemoteDevice or TableDevice."""
    return get_spec(name, profiles).build(name, runs, warmup)
