"""How a bench script ends on bad input (a missing or malformed config, an unknown name): one line
naming it, a non-zero exit, no traceback. Imported by the bench scripts (`python bench/X.py` puts
bench/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable

from modeltailor.errors import ModelTailorError, first_line


def one_line_errors(main: Callable[[], object]) -> None:
    """Run a script's `main`; a ModelTailorError ends it with 'error: <its first line>' (exit 1)."""
    try:
        main()
    except ModelTailorError as exc:
        raise SystemExit(f"error: {first_line(exc)}") from None
