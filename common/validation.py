"""Validation at the boundaries: the strict pydantic base, a YAML file read as a mapping, and a
pydantic error turned into one line that names the bad key.

One key style everywhere: dotted keys with list indexes in brackets, ``deployments[2].objective.kind``.
Torch-free (level 0): devices/ reads its profiles with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from modeltailor.errors import ConfigError


class Strict(BaseModel):
    """A pydantic model that refuses unknown keys (a misspelt key is an error, not silently dropped)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# -- a pydantic error as one line -------------------------------------------------------------------

TYPE_TAGS = frozenset({"int", "str", "float", "bool", "none", "list", "dict", "lax-or-strict", "json-or-python"})
"""Parts of a pydantic error location that name a union member or a validator, not a key."""

Errors = ValidationError | Sequence[Mapping[str, Any]]
"""A pydantic ValidationError, or its ``errors()`` (what FastAPI's RequestValidationError holds)."""


def key_path(loc: Sequence[Any]) -> str:
    """('deployments', 1, 'device', 'nmae') -> 'deployments[1].device.nmae' (union member tags dropped)."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif _is_key(str(part)):
            key += f".{part}" if key else str(part)
    return key


def _is_key(part: str) -> bool:
    return bool(re.fullmatch(r"[\w-]+", part)) and part not in TYPE_TAGS and not part.startswith("function-")


def first_error(errors: Errors) -> Mapping[str, Any]:
    """The error to report: an unknown key first (a misspelt 'deploymnts' explains a missing
    'deployments'), else the first one."""
    listed = list(errors.errors() if isinstance(errors, ValidationError) else errors)
    if not listed:
        return {"loc": (), "msg": "invalid", "type": "invalid"}
    return next((e for e in listed if e.get("type") == "extra_forbidden"), listed[0])


def error_text(error: Mapping[str, Any]) -> str:
    """pydantic's message without the 'Value error, ' its validators' messages start with."""
    return re.sub(r"^(Value|Assertion) error, ", "", str(error.get("msg", "invalid")))


def validation_line(
    errors: Errors, where: str, *, under: str = "", unknown_hint: str = "", missing_hint: str = ""
) -> str:
    """One line naming ``where`` (the file or input) and the bad key of the first error.

    ``under``: the key path the validated data sits at (``devices.cpu-1t``); ``unknown_hint`` and
    ``missing_hint`` end the line for an unknown and a missing key (" (a campaign may set: ...)").
    """
    error = first_error(errors)
    key = ".".join(part for part in (under, key_path(error.get("loc", ()))) if part)
    if error.get("type") == "extra_forbidden":
        return f"{where}: unknown key '{key}': remove it or check the spelling{unknown_hint}"
    if error.get("type") == "missing":
        return f"{where}: required key '{key}' is missing{missing_hint}"
    return f"{where}: {key or 'top level'}: {error_text(error)}"


# -- a YAML file as a mapping -----------------------------------------------------------------------


def read_yaml(path: Path, where: str, missing: str, expect: str = "a mapping of settings") -> dict[str, Any]:
    """The mapping a YAML file holds ({} when it is empty); a one-line ConfigError naming the file
    (``where``) when it is missing (``missing`` says what to do), unreadable, not YAML or not a mapping."""
    if not path.is_file():
        raise ConfigError(f"{where} not found: {missing}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f" ({problem})" if problem else ""
        raise ConfigError(f"{where} is not valid YAML{line}{detail}: fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{where} cannot be read ({reason}): pass a readable YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold {expect}, not {type(data).__name__}")
    return data
