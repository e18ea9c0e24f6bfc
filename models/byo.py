"""Bring your own model: a factory named `package.module:factory` and an optional weights file."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeltailor.errors import ModelLoadError, first_line

log = logging.getLogger(__name__)

_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_NAMES_SHOWN = 3


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: message` of an exception, first line only, shortened."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}"


def load_factory(ref: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import `package.module:factory` and call it with `kwargs`; the result must be an nn.Module."""
    if not isinstance(ref, str) or not _REF.match(ref.strip()):
        raise ModelLoadError(
            f"bad model reference {ref!r}: write it as 'package.module:factory'"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ModelLoadError(
            f"model factory '{ref}' kwargs must be a mapping of names to values, not {type(kwargs).__name__}"
        )
    module_name, attr_path = ref.strip().split(":")
    factory = _resolve(ref, module_name, attr_path)
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - any user-code failure becomes one line
        raise ModelLoadError(f"model factory '{ref}' failed: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model factory '{ref}' returned {type(model).__name__}, not a torch.nn.Module"
        )
    log.debug("built model from %s", ref)
    return model


def _import(module_name: str) -> Any:
    """Import `module_name`; a package in the current folder is found too, as `python -m` would
    (console scripts do not put the current folder on sys.path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        top = module_name.partition(".")[0]
        found = (Path(here) / top).is_dir() or (Path(here) / f"{top}.py").is_file()
        if exc.name != top or here in sys.path or not found:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def _resolve(ref: str, module_name: str, attr_path: str) -> Any:
    try:
        obj: Any = _import(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError or an error in user code
        raise ModelLoadError(
            f"cannot import module '{module_name}' for model '{ref}': {_first_line(exc)} "
            "(is it on PYTHONPATH?)"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(
                f"module '{module_name}' has no attribute '{attr_path}' (model '{ref}')"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"model factory '{ref}' is a {type(obj).__name__}, not callable")
    return obj


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict (raw, or under key 'state_dict'/'model') into `model`, strictly."""
    file = Path(path)
    if not file.exists():
        raise ModelLoadError(f"weights file '{file}' not found: check the path")
    if not file.is_file():
        raise ModelLoadError(f"weights file '{file}' is not a file")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise ModelLoadError(
            f"cannot read weights file '{file}': {_first_line(exc)}; "
            "save it with torch.save(model.state_dict(), path)"
        ) from exc
    state = _state_dict(payload, file)
    state = _strip_prefix(state, model)
    problem = _mismatch(model.state_dict(), state)
    if problem:
        raise ModelLoadError(f"weights file '{file}' does not fit the model: {problem}")
    model.load_state_dict(state, strict=True)
    log.debug("loaded %d tensors from %s", len(state), file)
    return model


def _state_dict(payload: Any, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if (
        not isinstance(payload, Mapping)
        or not payload
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())
    ):
        kind = type(payload).__name__ if not isinstance(payload, Mapping) else "mapping"
        raise ModelLoadError(
            f"weights file '{file}' holds a {kind} that is not a state dict (names -> tensors): "
            "save it with torch.save(model.state_dict(), path)"
        )
    return dict(payload)


def _strip_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop the 'module.' prefix DataParallel adds, when the model's own keys lack it."""
    prefix = "module."
    own = model.state_dict()
    if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """One-line summary of missing, unexpected and shape-mismatched keys ('' if none)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {list(given[k].shape)} vs {list(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    parts = [
        _summary(len(missing), "missing", missing),
        _summary(len(unexpected), "unexpected", unexpected),
        _summary(len(shapes), "with the wrong shape (file vs model)", shapes),
    ]
    return "; ".join(p for p in parts if p)


def _summary(count: int, label: str, names: list[str]) -> str:
    if not count:
        return ""
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = f", ... {count - _NAMES_SHOWN} more" if count > _NAMES_SHOWN else ""
    return f"{count} {label} ({shown}{more})"
