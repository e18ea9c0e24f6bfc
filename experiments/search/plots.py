"""Plots and formatting for search reports.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so no display
is needed and pyplot's global backend/state is left alone (safe in threads and Ray workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_UNITS = ("B", "KB", "MB", "GB", "TB")
_PANELS = (("latency_ms", "latency (ms)"), ("memory_bytes", "memory (MB)"))


def format_bytes(n: float) -> str:
    """Human-readable size with decimal units: 1_200_000 -> "1.2 MB", 512 -> "512 B"."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _xy(points: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    scale = 1e6 if key == "memory_bytes" else 1.0
    xs = [float(p[key]) / scale for p in points]
    ys = [100.0 * float(p["accuracy"]) for p in points]
    return xs, ys


def _front_2d(points: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Points no other point beats on both this panel's cost and accuracy, by cost."""
    front: list[dict[str, Any]] = []
    for point in sorted(points, key=lambda p: (float(p[key]), -float(p["accuracy"]))):
        if not front or float(point["accuracy"]) > float(front[-1]["accuracy"]):
            front.append(point)
    return front


def _draw_panel(
    ax: Axes,
    key: str,
    episodes: Sequence[dict[str, Any]],
    pareto: Sequence[dict[str, Any]],
    baseline: dict[str, Any],
    chosen: dict[str, Any] | None,
) -> None:
    if episodes:
        ax.scatter(*_xy(episodes, key), s=12, color="tab:blue", alpha=0.25, label="episodes")
    if pareto:
        ax.scatter(*_xy(pareto, key), s=22, color="tab:orange", zorder=4, label="Pareto set (3-D)")
    front = _front_2d(episodes, key)
    if front:
        ax.step(
            *_xy(front, key),
            where="post",
            color="tab:orange",
            lw=1.2,
            alpha=0.8,
            label="best accuracy at this cost",
        )
    ax.scatter(
        *_xy([baseline], key),
        marker="*",
        s=220,
        color="tab:red",
        zorder=5,
        edgecolors="black",
        linewidths=0.5,
        label="baseline",
    )
    if chosen is not None:
        ax.scatter(
            *_xy([chosen], key),
            marker="o",
            s=260,
            facecolors="none",
            zorder=6,
            edgecolors="tab:green",
            linewidths=2.5,
            label="chosen",
        )
    ax.set_xlabel(dict(_PANELS)[key])
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)


def plot_pareto(
    episodes: list[dict[str, Any]],
    pareto: list[dict[str, Any]],
    baseline: dict[str, Any],
    chosen: dict[str, Any] | None,
    path: Path,
) -> Path:
    """Write a two-panel PNG (accuracy vs latency, accuracy vs memory) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (key, _label) in zip(axes, _PANELS, strict=True):
        _draw_panel(ax, key, episodes, pareto, baseline, chosen)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Compression search: {len(episodes)} episodes, {len(pareto)} on the Pareto front")
    fig.savefig(path, dpi=90, format="png")
    return path


def campaign_plot(points: Sequence[tuple[str, str, dict[str, Any]]], path: Path) -> Path:
    """Every deployment's chosen model: accuracy (test) vs speedup over its baseline, one colour per
    device; `points` are (deployment, device, result row with accuracy and speedup)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    devices = sorted({device for _, device, _ in points})
    colours = {d: f"C{i % 10}" for i, d in enumerate(devices)}
    for name, device, row in points:
        x, y = float(row["speedup"]), 100.0 * float(row["accuracy"])
        marker = "o" if row.get("objective_met", True) else "x"
        ax.scatter([x], [y], s=70, color=colours[device], marker=marker, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for device in devices:
        ax.scatter([], [], color=colours[device], label=device)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("speedup over the deployment's baseline (x)")
    ax.set_ylabel("accuracy on the deployment's classes (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="device (x: objective missed)", fontsize=8)
    fig.suptitle(f"Campaign: {len(points)} deployments, chosen models")
    fig.savefig(path, dpi=120, format="png")
    return path
