"""The docs site stays true to the code: rooms and levels, module paths, benchmark pages, the nav.

Parses the markdown and mkdocs.yml only; mkdocs itself is not needed (`make docs` builds the site
with --strict). The reference pages are generated at build time by docs/gen_reference.py and are
not on disk: its PAGES tuple lists them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.test_layers import LEVELS, SUB_LEVELS, package_files

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"


def generated_pages() -> set[str]:
    """The pages docs/gen_reference.py writes at build time (its PAGES tuple, read without running it)."""
    tree = ast.parse((DOCS / "gen_reference.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "PAGES" for t in targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("docs/gen_reference.py has no PAGES tuple")


def nav_pages(nav: object) -> list[str]:
    """Every page path in an mkdocs nav, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def nav() -> list[str]:
    return nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table outside code fences: (header cells, rows of cells)."""
    found: list[tuple[list[str], list[list[str]]]] = []
    block: list[str] = []
    fenced = False
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]] for row in block]
            found.append((cells[0], cells[2:]))
        block = []
    return found


def table_with(markdown: str, first: str, second: str) -> list[list[str]]:
    matches = [rows for header, rows in tables(markdown) if header[:2] == [first, second]]
    assert len(matches) == 1, f"expected one table headed '| {first} | {second} |', found {len(matches)}"
    return matches[0]


def code_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_architecture_rooms_table_matches_the_layer_rules() -> None:
    rows = table_with(ARCHITECTURE.read_text(), "room", "level")
    levels = {code_names(row[0])[0].rstrip("/").removesuffix(".py"): int(row[1]) for row in rows}
    assert levels == LEVELS


def test_architecture_sub_rooms_table_matches_the_layer_rules() -> None:
    rows = table_with(ARCHITECTURE.read_text(), "sub-room", "level")
    sub_levels: dict[str, dict[str, int]] = {}
    for row in rows:
        room, sub = code_names(row[0])[0].strip("/").split("/")
        sub_levels.setdefault(room, {})[sub] = int(row[1])
    assert sub_levels == SUB_LEVELS


def test_architecture_import_diagrams_match_the_layer_rules() -> None:
    """The `a  <-  b, c  <-  d` lines: one level per group, rising left to right, every room once."""
    text = ARCHITECTURE.read_text()
    rules = {"errors": LEVELS, "spec": SUB_LEVELS["experiments"]}
    for first, levels in rules.items():
        lines = [line for line in text.splitlines() if line.strip().startswith(f"{first}  <-")]
        assert len(lines) == 1, f"one import diagram starting with {first!r}"
        groups = [[name.strip() for name in group.split(",")] for group in lines[0].split("<-")]
        assert sorted(name for group in groups for name in group) == sorted(levels)
        group_levels = []
        for group in groups:
            assert len({levels[name] for name in group}) == 1, f"{group} are not one level"
            group_levels.append(levels[group[0]])
        assert group_levels == sorted(set(group_levels)), "levels must rise left to right"


def test_architecture_modules_in_the_rooms_tables_exist() -> None:
    text = ARCHITECTURE.read_text()
    modules = package_files()
    rows = table_with(text, "room", "level") + table_with(text, "sub-room", "level")
    for row in rows:
        room = code_names(row[0])[0].rstrip("/").removesuffix(".py")
        folder = ROOT / room if (ROOT / room).is_dir() else ROOT
        for name in code_names(row[3]):
            if not re.fullmatch(r"\w+\.(py|yaml)", name):
                continue  # a file the module writes (`episodes.jsonl`), not one of the room's
            path = folder / name
            assert path.is_file(), f"architecture.md: {room}: {name} does not exist ({path})"
            if name.endswith(".py"):
                dotted = ".".join(("modeltailor", *path.relative_to(ROOT).with_suffix("").parts))
                dotted = dotted.removesuffix(".__init__")
                assert dotted in modules, f"architecture.md: {dotted} is not a package module"


def test_every_path_the_architecture_page_names_exists() -> None:
    """Paths with a folder (`env/limiter.py`, `experiments/spec/`), in prose, tables and the flow."""
    text = ARCHITECTURE.read_text()
    paths = set(re.findall(r"(?<![\w./~-])((?:[a-z_]+/)+(?:[a-z_]+\.(?:py|yaml))?)(?![\w/])", text))
    assert "env/features.py" in paths and "experiments/spec/" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"architecture.md names paths that do not exist: {missing}"
    dotted = set(re.findall(r"\bmodeltailor(?:\.\w+)+", text))
    modules = package_files()
    unknown = sorted(d for d in dotted if not any(m == d or m.startswith(d + ".") for m in modules))
    assert not unknown, f"architecture.md names modules that do not exist: {unknown}"


def test_every_bench_script_has_a_benchmarks_page_in_the_nav() -> None:
    pages = set(nav())
    scripts = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
    assert scripts
    for stem in scripts:
        page = f"benchmarks/{stem}.md"
        assert (DOCS / page).is_file(), f"bench/{stem}.py has no docs/{page}"
        assert page in pages, f"docs/{page} is not in mkdocs.yml's nav"
        assert f"bench/{stem}.py" in (DOCS / page).read_text(), f"docs/{page} never names bench/{stem}.py"
    extra = sorted(
        p.stem for p in (DOCS / "benchmarks").glob("*.md") if p.stem != "index" and p.stem not in scripts
    )
    assert not extra, f"benchmark pages without a bench script: {extra}"


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav() -> None:
    pages = nav()
    generated = generated_pages()
    assert len(pages) == len(set(pages)), "a page is in the nav twice"
    missing = [p for p in pages if not (DOCS / p).is_file() and p not in generated]
    assert not missing, f"mkdocs.yml's nav lists pages that do not exist: {missing}"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not (on_disk & generated), "a generated page is also on disk"
    orphans = sorted(on_disk - set(pages))
    assert not orphans, f"pages not in mkdocs.yml's nav: {orphans}"


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")))
def test_relative_links_between_pages_resolve(page: str) -> None:
    generated = generated_pages()
    text = re.sub(r"```.*?```", "", (DOCS / page).read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        resolved = (DOCS / page).parent.joinpath(target).resolve()
        relative = resolved.relative_to(DOCS.resolve()).as_posix()
        assert resolved.exists() or relative in generated, f"docs/{page}: link to {target} does not resolve"


def test_readme_links_into_the_docs_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", text)
    assert links, "README.md links to no docs page"
    generated = {f"docs/{p}" for p in generated_pages()}
    missing = [link for link in links if not (ROOT / link).exists() and link not in generated]
    assert not missing, f"README.md links to docs that do not exist: {missing}"
