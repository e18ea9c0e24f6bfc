"""Campaign specs: a fleet of deployments, validated at one boundary like a deployment spec.

A campaign YAML names a base deployment (a deployment YAML, relative to the campaign file, or an
inline mapping) and the deployments derived from it: each entry is a set of overrides merged into
the base (mappings merge key by key, lists and values replace), or ``file:`` a whole deployment
YAML. Every derived deployment is validated as a `DeploymentConfig`; an error names the entry.

    name: digits-fleet
    base: digits-resnet20.yaml
    deployments:
      - {name: all-cpu1t, device: {name: cpu-1t}}
      - {name: c037-cpu2t, classes: [0, 3, 7], device: {name: cpu-2t}}
      - file: my-deployment.yaml
    resources: {cpus: 1, gpus: 0}
    max_concurrent: 2
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modeltailor.common.validation import Strict, first_error, key_path, read_yaml, validation_line
from modeltailor.errors import ConfigError
from modeltailor.experiments.spec.deployment import (
    UNKNOWN_KEY_HINT,
    DeploymentConfig,
    TrackingConfig,
    read_deployment_yaml,
    set_dotted,
)

OVERRIDE_KEYS = ("name", "classes", "device", "objective", "model", "data", "search", "recovery")
"""What a deployment entry may override in the base (tracking and training are campaign-wide)."""


class TrialResources(Strict):
    """What Ray reserves for each deployment's trial (YAML key ``resources``)."""

    cpus: float = Field(1, gt=0, description="CPUs per deployment (torch threads are pinned to them)")
    gpus: float = Field(0, ge=0, description="GPUs per deployment (0 on a CPU-only machine)")


class DeploymentEntry(Strict):
    """One deployment of the campaign: overrides of the base, or a whole deployment file."""

    name: str | None = Field(None, description="folder and run name (default: derived from classes and device)")
    file: Path | None = Field(None, description="a deployment YAML (relative to the campaign file) instead of overrides")
    classes: list[int | str] | None = None
    device: dict[str, Any] | None = None
    objective: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _file_or_overrides(self) -> DeploymentEntry:
        overrides = [k for k in OVERRIDE_KEYS if k != "name" and getattr(self, k) is not None]
        if self.file is not None and overrides:
            raise ValueError(f"give either 'file' or overrides, not both (found {', '.join(overrides)})")
        return self

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OVERRIDE_KEYS if getattr(self, k) is not None}


class CampaignSpec(Strict):
    name: str = Field("campaign", description="campaign name (the MLflow parent run's name)")
    base: Path | dict[str, Any] | None = Field(
        None, description="base deployment: a deployment YAML (relative to the campaign file) or an inline mapping"
    )
    deployments: list[DeploymentEntry] = Field(description="the deployments: overrides of the base, or files")
    resources: TrialResources = Field(default_factory=TrialResources)
    max_concurrent: int = Field(2, ge=1, description="deployments searched at once")
    tracking: TrackingConfig | None = Field(
        None, description="MLflow for the campaign and every deployment (default: the base's)"
    )

    @field_validator("base", mode="before")
    @classmethod
    def _base_kind(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | Path | dict):
            raise ValueError(
                "must be a deployment YAML (a path relative to the campaign file) or a mapping of deployment settings"
            )
        return value

    @field_validator("deployments")
    @classmethod
    def _not_empty(cls, value: list[DeploymentEntry]) -> list[DeploymentEntry]:
        if not value:
            raise ValueError("the list is empty: add at least one deployment")
        return value


class Campaign(BaseModel):
    """A validated campaign: its spec and every deployment, named, resolved and validated."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: CampaignSpec
    deployments: dict[str, DeploymentConfig]
    source: Path | None = None

    @property
    def tracking(self) -> TrackingConfig:
        return self.spec.tracking or next(iter(self.deployments.values())).tracking


def load_campaign(path: Path, overrides: dict[str, Any] | None = None) -> Campaign:
    """Read and validate a campaign YAML; `overrides` are dotted keys of the spec
    ("max_concurrent", "resources.cpus") or of every deployment ("deployment.search.episodes")."""
    where = f"campaign file '{path}'"
    data = read_yaml(
        path,
        where,
        missing="pass a campaign YAML (see examples/campaign-digits.yaml)",
        expect="a mapping (name, base, deployments, ...): see examples/campaign-digits.yaml",
    )
    deployment_overrides: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        if dotted.startswith("deployment."):
            deployment_overrides[dotted[len("deployment.") :]] = value
        else:
            _override(data, dotted, value, where)
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_spec_line(exc, where)) from None
    return build_campaign(spec, path.parent, path, deployment_overrides)


def build_campaign(
    spec: CampaignSpec, root: Path, source: Path | None = None, overrides: dict[str, Any] | None = None
) -> Campaign:
    """Derive and validate every deployment of `spec`; relative files resolve against `root`."""
    where = f"campaign file '{source}'" if source else "campaign"
    base = _base_data(spec.base, root, where)
    deployments: dict[str, DeploymentConfig] = {}
    for index, entry in enumerate(spec.deployments):
        data = _entry_data(entry, base, root, f"{where}: deployments[{index}]")
        at = f"{where}: deployments[{index}]" + (f" (file '{entry.file}')" if entry.file is not None else "")
        for dotted, value in (overrides or {}).items():
            _override(data, dotted, value, at)
        if spec.tracking is not None:
            data["tracking"] = spec.tracking.model_dump(mode="json")
        config = _validate(data, at)
        name = entry.name if entry.name is not None else None if entry.file else derived_name(config)
        name = config.name if name is None else name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ConfigError(
                f"{where}: deployments[{index}].name '{name}' must be letters, digits, '.', '_' or '-' (it names a folder)"
            )
        if name in deployments:
            raise ConfigError(
                f"{where}: deployments[{index}] is named '{name}' like an earlier one: give each a distinct 'name'"
            )
        deployments[name] = config.model_copy(update={"name": name})
    return Campaign(spec=spec, deployments=deployments, source=source)


def derived_name(config: DeploymentConfig) -> str:
    """'all-cpu-1t', 'c0-3-7-cpu-2t': the classes and the device, as a folder name."""
    classes = "all" if not config.classes else "c" + "-".join(str(c) for c in config.classes)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{classes}-{config.device.name}").strip("-")


def _base_data(base: Path | dict[str, Any] | None, root: Path, where: str) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, dict):
        return _absolute_paths(copy.deepcopy(base), root)
    return _deployment_file(base, root, f"{where}: base")


def _entry_data(entry: DeploymentEntry, base: dict[str, Any], root: Path, where: str) -> dict[str, Any]:
    if entry.file is not None:
        return _deployment_file(entry.file, root, where)
    data = copy.deepcopy(base)
    return _absolute_paths(_merge(data, entry.overrides()), root)


def _deployment_file(path: Path, root: Path, where: str) -> dict[str, Any]:
    full = path if path.is_absolute() else root / path
    if not full.is_file():
        raise ConfigError(f"{where}: deployment file '{full}' not found: fix the path (relative to the campaign file)")
    try:
        data = read_deployment_yaml(full)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return _absolute_paths(data, full.parent)


def _override(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    try:
        set_dotted(data, dotted, value)
    except (TypeError, AttributeError, ConfigError):
        raise ConfigError(
            f"{where}: cannot override '{dotted}': the file sets one of its parents to a value, not a mapping"
        ) from None


PATH_KEYS = (("model", "weights"), ("data", "root"), ("device", "profiles"))


def _absolute_paths(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """Relative file paths of a deployment made absolute against `root` (trials run elsewhere)."""
    for section, key in PATH_KEYS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and not Path(node[key]).is_absolute():
            node[key] = str((root / node[key]).resolve())
    return data


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _validate(data: dict[str, Any], where: str) -> DeploymentConfig:
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_line(exc, where, unknown_hint=UNKNOWN_KEY_HINT)) from None


def _spec_line(exc: ValidationError, where: str) -> str:
    """One line for a campaign spec's first error; an unknown key is told what may be set there."""
    key = key_path(first_error(exc)["loc"])
    if re.fullmatch(r"deployments\[\d+\]\.\w+", key):
        hint = f" (a deployment entry may set: {', '.join(OVERRIDE_KEYS + ('file',))})"
    elif re.fullmatch(r"\w+", key):
        hint = f" (a campaign may set: {', '.join(CampaignSpec.model_fields)})"
    else:
        hint = ""
    missing = ": list the deployments (see examples/campaign-digits.yaml)" if key == "deployments" else ""
    return validation_line(exc, where, unknown_hint=hint, missing_hint=missing)
