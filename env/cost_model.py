"""Predicts a measured resource (latency, memory) from a cheap static proxy (MACs, parameters).

Fitted online: every measured episode adds a point, so the prediction the env uses to keep actions
within a budget follows what the device actually does. Latency is never *reported* from this
model; it only steers the actions, and every reported number is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LinearCostModel:
    """y = intercept + slope * x, least squares over the points seen (through the origin for one)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    intercept: float = 0.0
    slope: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.points.append((float(x), float(y)))
        self._fit()

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x

    def inverse(self, y: float) -> float:
        """The largest x whose predicted cost is at most y (may be negative: unreachable)."""
        if self.slope <= 0:
            return float("inf") if y >= self.intercept else float("-inf")
        return (y - self.intercept) / self.slope

    def _fit(self) -> None:
        xs = np.array([p[0] for p in self.points])
        ys = np.array([p[1] for p in self.points])
        if len(set(xs.tolist())) < 2:
            self.intercept, self.slope = 0.0, float(ys.mean() / max(xs.mean(), 1e-12))
            return
        slope, intercept = np.polyfit(xs, ys, 1)
        if slope <= 0:  # noise on a flat curve: fall back to proportional
            self.intercept, self.slope = 0.0, float(ys.mean() / max(xs.mean(), 1e-12))
            return
        self.intercept, self.slope = float(max(intercept, 0.0)), float(slope)
