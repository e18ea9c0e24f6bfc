"""The rooms of the package and the one direction of imports between them (docs/architecture.md).

errors  <-  common  <-  models, datasets, devices  <-  compressors  <-  env  <-  agent  <-  experiments
<-  service. Inside experiments the sub-rooms follow the same rule: spec  <-  tracking  <-  search  <-
tools, fleet. A module may import its own room and lower rooms only; rooms on the same level
(models, datasets, devices; tools, fleet) do not import each other. Every import statement is parsed,
including ones inside functions and under TYPE_CHECKING.
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
    "common": 0,
    "models": 1,
    "datasets": 1,
    "devices": 1,
    "compressors": 2,
    "env": 3,
    "agent": 4,
    "experiments": 5,
    "service": 6,
}
SUB_LEVELS: dict[str, dict[str, int]] = {
    "experiments": {"spec": 0, "tracking": 1, "search": 2, "tools": 3, "fleet": 3},
}
ROOT_FILES = {"__init__.py", "errors.py"}
"""The only modules at the root: the package and the errors every room raises."""
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
        for path in sorted(room.rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            if not (path.parent / "__init__.py").is_file():
                continue
            modules[".".join((PACKAGE, *parts))] = path
    return modules


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def sub_room_of(module: str) -> str | None:
    """The sub-room of a module inside a room that has them (``experiments.search``); else None."""
    parts = module.split(".")
    room = room_of(module)
    if room not in SUB_LEVELS or len(parts) < 3:
        return None
    return parts[2] if parts[2] in SUB_LEVELS[room] else None


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
            if other is None or other not in LEVELS:
                continue
            if other == room:
                bad += sideways_within(room, module, target)
            elif LEVELS[other] >= LEVELS[room]:
                bad.append(f"{module} imports {target} ({room} is level {LEVELS[room]}, {other} {LEVELS[other]})")
    return sorted(set(bad))


def sideways_within(room: str, module: str, target: str) -> list[str]:
    """The same rule one level down: a sub-room imports its own and lower sub-rooms only."""
    here, there = sub_room_of(module), sub_room_of(target)
    if here is None or there is None or here == there:
        return []
    levels = SUB_LEVELS[room]
    if levels[there] < levels[here]:
        return []
    return [f"{module} imports {target} ({room}.{here} is level {levels[here]}, {room}.{there} {levels[there]})"]


def test_every_room_has_a_level() -> None:
    rooms = {room_of(m) for m in package_files()} - {None}
    assert rooms <= set(LEVELS), f"rooms without a level in this test: {rooms - set(LEVELS)}"
    assert {"devices", "service", "common"} <= rooms


def test_every_module_of_a_room_with_sub_rooms_sits_in_one() -> None:
    for module in package_files():
        room = room_of(module)
        if room in SUB_LEVELS and module != f"{PACKAGE}.{room}":
            assert sub_room_of(module) is not None, f"{module} is in no sub-room of {room}/ ({sorted(SUB_LEVELS[room])})"


def test_the_root_holds_only_the_package_and_its_errors() -> None:
    assert {p.name for p in ROOT.glob("*.py")} == ROOT_FILES
    assert not list(ROOT.glob("*.whl")), "a wheel file at the root: nothing uses it"


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


def test_the_checker_catches_edges_between_sub_rooms(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text(
        "from modeltailor.experiments.search.run import run_search\n"
        "from modeltailor.experiments.fleet import jobs\n"
        "from modeltailor.experiments.tracking.tracker import Tracker\n"
        "from modeltailor.experiments.spec import files\n"
        "def later():\n    from ..tools.pick import pick\n"
    )
    edges = upward_edges({"modeltailor.experiments.tracking.fake": fake})
    assert [e.split(" (")[0] for e in edges] == [
        "modeltailor.experiments.tracking.fake imports modeltailor.experiments.fleet",
        "modeltailor.experiments.tracking.fake imports modeltailor.experiments.fleet.jobs",
        "modeltailor.experiments.tracking.fake imports modeltailor.experiments.search.run",
        "modeltailor.experiments.tracking.fake imports modeltailor.experiments.search.run.run_search",
        "modeltailor.experiments.tracking.fake imports modeltailor.experiments.tools.pick",
        "modeltailor.experiments.tracking.fake imports modeltailor.experiments.tools.pick.pick",
    ]
    sideways = tmp_path / "sideways.py"
    sideways.write_text("from modeltailor.experiments.fleet.jobs import JobStore\n")
    assert upward_edges({"modeltailor.experiments.tools.sideways": sideways}) != []


@pytest.mark.parametrize("module", sorted(package_files()))
def test_every_module_imports_by_its_dotted_name(module: str) -> None:
    importlib.import_module(module)


def heavy_modules_loaded(modules: list[str]) -> list[str]:
    """The heavy libraries a fresh interpreter holds after importing ``modules``."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = ('torch', 'torch_pruning', 'stable_baselines3', 'gymnasium', 'mlflow', 'ray', 'matplotlib')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return [m for m in result.stdout.strip().split(",") if m]


LIGHT = sorted(m for m in package_files() if room_of(m) in {"devices", "common"} or sub_room_of(m) == "spec")
"""What a board installs (devices/, common/) and the specs and result contract: no heavy library at all."""


def test_devices_common_and_specs_load_without_heavy_libraries() -> None:
    assert heavy_modules_loaded(LIGHT) == []


API = ["modeltailor.service.api", "modeltailor.service.serve_cli", "modeltailor.service.cli"]
"""The HTTP API starts torch-free: it answers queries from MLflow and launches jobs as processes."""


def test_the_api_loads_without_torch() -> None:
    assert heavy_modules_loaded(API) == ["mlflow"]
