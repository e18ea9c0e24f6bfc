"""The rooms of the package and the one direction of imports between them (DESIGN.md).

errors  <-  storage, cores, compute  <-  models, datasets, devices  <-  compressors  <-  results  <-  env  <-  agent
<-  experiments  <-  service. A module may import its own room and lower rooms only; rooms on
the same level (models, datasets, devices) do not import each other. Every import statement is
parsed, including ones inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "modeltailor"
LEVELS: dict[str, int] = {
    "errors": -1,  # the base every room may raise
    "storage": 0,
    "cores": 0,
    "compute": 0,
    "models": 1,
    "datasets": 1,
    "devices": 1,
    "compressors": 2,
    "results": 3,
    "env": 4,
    "agent": 5,
    "experiments": 6,
    "service": 7,
}
NOT_PACKAGE = {"tests", "bench", "examples", "docker", "docs", "build", ".venv", ".git"}


def package_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module that installs under `modeltailor`."""
    modules = {PACKAGE: ROOT / "__init__.py"}
    for path in sorted(ROOT.glob("*.py")):
        if path.name != "__init__.py":
            modules[f"{PACKAGE}.{path.stem}"] = path
    for room in sorted(p for p in ROOT.iterdir() if p.is_dir() and p.name not in NOT_PACKAGE):
        if not (room / "__init__.py").is_file():
            continue
        for path in sorted(room.glob("*.py")):
            name = room.name if path.stem == "__init__" else f"{room.name}.{path.stem}"
            modules[f"{PACKAGE}.{name}"] = path
    return modules


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module an import statement of the file names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def upward_edges(files: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in files.items():
        room = room_of(module)
        if room is None:
            continue
        for target in imported_modules(path, module):
            other = room_of(target)
            if other is None or other == room or other not in LEVELS:
                continue
            if LEVELS[other] >= LEVELS[room]:
                bad.append(f"{module} imports {target} ({room} is level {LEVELS[room]}, {other} {LEVELS[other]})")
    return sorted(set(bad))


def test_every_room_has_a_level() -> None:
    rooms = {room_of(m) for m in package_files()} - {None}
    assert rooms <= set(LEVELS), f"rooms without a level in this test: {rooms - set(LEVELS)}"
    assert {"devices", "service", "results"} <= rooms


def test_imports_only_flow_downward() -> None:
    assert upward_edges(package_files()) == []


def test_the_checker_catches_upward_and_sideways_edges(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import modeltailor.env\nfrom modeltailor.models import build_model\n"
        "def later():\n    from ..experiments.search import run_search\n"
        "from modeltailor.devices.memory import onnx_memory\nfrom modeltailor.errors import DeviceError\n"
    )
    edges = upward_edges({"modeltailor.devices.fake": fake})
    assert [e.split(" (")[0] for e in edges] == [
        "modeltailor.devices.fake imports modeltailor.env",
        "modeltailor.devices.fake imports modeltailor.experiments.search",
        "modeltailor.devices.fake imports modeltailor.experiments.search.run_search",
        "modeltailor.devices.fake imports modeltailor.models",
        "modeltailor.devices.fake imports modeltailor.models.build_model",
    ]


@pytest.mark.parametrize("module", sorted(package_files()))
def test_every_module_imports_by_its_dotted_name(module: str) -> None:
    importlib.import_module(module)


TORCH_FREE = ["modeltailor.devices.server", "modeltailor.devices", *sorted(
    m for m in package_files() if room_of(m) == "devices"
), "modeltailor.results"]


def test_devices_and_results_load_without_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'torch_pruning', 'stable_baselines3', 'mlflow', 'ray') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"devices/ or results pulled in: {result.stdout.strip()}"
