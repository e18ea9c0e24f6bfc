"""Predicts a measured resource (latency, memory) of a compressed model before it is built.

Fitted online: every measured episode adds a point, so the prediction the env uses to keep actions
within a budget follows what the device actually does. Latency is never *reported* from these
models; they only steer the actions, and every reported number is measured.

- :class:`LinearCostModel`: y = intercept + slope * x, for memory in parameters (near exact), and
  the plain latency-in-MACs line of limiters built without a calibration.
- :class:`StageLatencyModel`: latency in per-layer costs, grouped by resolution stage::

      latency ~= w0 + sum over stages s of (a_s * padded MACs_s + b_s * outputs_s + c_s * inputs_s)

  A conv's time is taken as a MACs term plus terms for the data it writes and reads. *padded
  MACs*: each layer's MACs with its kept channel counts rounded up to a multiple of the device's
  vector block (`pad`: ONNX Runtime's x86 conv kernels work on blocks of 8 or 16 channels, so 8
  kept channels cost as much as 16); *outputs* / *inputs*: output positions times kept output /
  input channels (memory traffic, layout reorders and per-node work that MACs miss). A skipped
  block contributes nothing, so its whole nodes leave the sum. A stage is the layers of one output
  resolution (output positions = MACs / weights): per-MAC cost differs with resolution and channel
  count; a resolution with under 5% of the MACs joins its nearest stage. Below two points per
  weight, one stage holds every layer. Weights: relative least squares (predicted / measured - 1
  squared, summed), no negative weight (a feature whose weight comes out negative is dropped and the rest
  refitted), so the prediction grows with every kept channel. `pad` is the candidate with the
  lowest mean absolute leave-one-out error (not squared: the extreme points, such as the most
  compressed model, are extrapolations whose large errors say little about the rest). The
  leave-one-out relative errors also give the safety `margin` (their `quantile`), so the budget is
  kept by as much as this device's predictions miss, no more. The keep ratios asked about are first
  rounded to the channel counts the compressor builds (`round_to`): 0.3 of 16 channels in steps of
  8 is 8 channels, not 4.8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from modeltailor.compressors.pruning import channels_to_keep
from modeltailor.compressors.units import LayerCost, ModelAnalysis, estimate_macs

FEATURES = 3
"""Features per stage: padded MACs, outputs, inputs."""
PADS: tuple[int, ...] = (1, 8, 16, 32)
"""Vector blocks tried for `StageLatencyModel.pad` (1: channel counts taken as they are)."""
MIN_STAGE_SHARE = 0.05
"""A resolution holding less of the model's MACs than this joins the nearest stage."""
DEFAULT_MARGIN = 0.1
"""Safety margin while too few points exist for leave-one-out errors."""
MARGIN_RANGE = (0.01, 0.3)
MACS_TOLERANCE = 0.01
"""An outcome whose counted MACs differ more than this from what its channels imply (a factorized
layer) is not fitted on: its channel counts do not describe it."""


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


@dataclass(frozen=True)
class _Layer:
    """A layer as the stage model sees it: cost, resolution (output positions) and channel units."""

    cost: LayerCost
    positions: float
    stage: int
    out_channels: int
    in_channels: int


@dataclass(eq=False)
class StageLatencyModel:
    """Latency from per-stage padded MACs and activations (see the module docstring).

    ``points``: (channel keep per unit as built, 0 for a skipped block; measured latency ms).
    ``round_to``: the compressor's channel rounding, applied to the keep ratios asked about.
    ``stages``: stages fitted: every resolution once there are two points per weight, else one.
    ``quantile``: of the leave-one-out errors, the margin (0.95: about one episode in twenty may
    still overrun, by little).
    """

    analysis: ModelAnalysis
    round_to: int = 1
    quantile: float = 0.95
    points: list[tuple[dict[str, float], float]] = field(default_factory=list)
    pad: int = 1
    stages: int = 1
    weights: np.ndarray = field(default_factory=lambda: np.zeros(1 + FEATURES))
    margin: float = DEFAULT_MARGIN
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self._layers = _stage_layers(self.analysis)
        self._channels = {u.name: u.channels for u in self.analysis.units}
        self._resolutions = 1 + max((layer.stage for layer in self._layers), default=0)
        self._scales: dict[tuple[int, int], np.ndarray] = {}
        self._rows: dict[tuple[int, int], list[np.ndarray]] = {}

    # --- predicting -------------------------------------------------------------------------
    def predict(self, keep: Mapping[str, float], ranks: Mapping[str, float] | None = None) -> float:
        """Latency (ms) of a policy: channel keep per pruned unit (0: block skipped; units not
        named keep everything), rank ratio per low-rank unit; channels rounded as the compressor
        rounds them. 0 before the first point."""
        built = {u: self._built(u, k) for u, k in keep.items()}
        return float(self._features(built, ranks or {}, self.pad, self.stages) @ self.weights)

    def target(self, budget: float) -> float:
        """The predicted latency a policy may have so that it measures within `budget`."""
        return budget / (1.0 + self.margin)

    # --- fitting ----------------------------------------------------------------------------
    def add_outcome(self, kept_channels: Mapping[str, int], macs: float, latency_ms: float) -> bool:
        """Add a measured model (channels per unit as built; a unit it lacks was skipped) and
        refit; False, and nothing added, when its channels do not account for its MACs."""
        keep = {u: kept_channels.get(u, 0) / c for u, c in self._channels.items()}
        if abs(estimate_macs(self.analysis, keep) - macs) > MACS_TOLERANCE * max(macs, 1.0):
            return False
        self.points.append((keep, float(latency_ms)))
        self._fit()
        return True

    def _fit(self) -> None:
        ys = np.array([y for _, y in self.points])
        enough = len(self.points) >= 2 * (FEATURES * self._resolutions + 1)
        self.stages = self._resolutions if enough else 1
        best: tuple[float, int, np.ndarray, np.ndarray] | None = None
        for pad in PADS:
            weights, residuals = _fit_relative(self._design(pad), ys)
            error = float(np.mean(np.abs(residuals))) if len(residuals) else 0.0
            if best is None or error < best[0] - 1e-4:  # a larger block only when clearly better
                best = (error, pad, weights, residuals)
        assert best is not None
        _, self.pad, self.weights, self.residuals = best
        lo, hi = MARGIN_RANGE
        enough = len(self.residuals) >= 5
        self.margin = float(np.clip(np.quantile(self.residuals, self.quantile), lo, hi)) if enough else DEFAULT_MARGIN

    def _design(self, pad: int) -> np.ndarray:
        """Feature rows of every point (cached: a point's features never change)."""
        rows = self._rows.setdefault((pad, self.stages), [])
        for keep, _ in self.points[len(rows):]:
            rows.append(self._features(keep, {}, pad, self.stages))
        return np.array(rows)

    # --- features ---------------------------------------------------------------------------
    def _built(self, unit: str, keep: float) -> float:
        """Fraction of the unit's channels the compressor keeps for `keep` (0 stays 0)."""
        channels = self._channels.get(unit)
        if keep <= 0 or channels is None:
            return max(keep, 0.0)
        return channels_to_keep(channels, keep, self.round_to) / channels

    def _features(self, keep: Mapping[str, float], ranks: Mapping[str, float], pad: int, stages: int) -> np.ndarray:
        """[1, padded MACs, outputs, inputs per stage], each relative to the full model's."""
        if (pad, stages) not in self._scales:
            self._scales[pad, stages] = np.maximum(self._raw({}, {}, pad, stages), 1e-12)
        return np.r_[1.0, self._raw(keep, ranks, pad, stages) / self._scales[pad, stages]]

    def _raw(self, keep: Mapping[str, float], ranks: Mapping[str, float], pad: int, stages: int) -> np.ndarray:
        macs, outputs, inputs = np.zeros(stages), np.zeros(stages), np.zeros(stages)
        for layer in self._layers:
            cost = layer.cost
            out = keep.get(cost.out_unit, 1.0) if cost.out_unit else 1.0
            inp = keep.get(cost.in_unit, 1.0) if cost.in_unit else 1.0
            if out * inp == 0:
                continue  # inside a skipped block: the node is gone
            out_padded = _padded(out, layer.out_channels, pad)
            factor = out_padded if cost.depthwise else out_padded * _padded(inp, layer.in_channels, pad)
            stage = layer.stage if stages > 1 else 0
            macs[stage] += cost.macs * factor * ranks.get(cost.name, 1.0)
            outputs[stage] += layer.positions * out * max(layer.out_channels, 1)
            inputs[stage] += layer.positions * inp * max(layer.in_channels, 1)
        return np.r_[macs, outputs, inputs]


def _padded(keep: float, channels: int, pad: int) -> float:
    """Kept fraction with the kept channel count rounded up to a multiple of `pad`."""
    if channels <= 0 or pad <= 1:
        return keep
    kept = keep * channels
    return math.ceil(kept / pad - 1e-9) * pad / channels


def _stage_layers(analysis: ModelAnalysis) -> list[_Layer]:
    """Each conv/linear layer with its output positions and the stage (resolution) it belongs to."""
    channels = {u.name: u.channels for u in analysis.units}
    positions = {layer.name: layer.macs / max(layer.params, 1) for layer in analysis.layers}
    keys = {name: round(math.log2(max(p, 1.0))) for name, p in positions.items()}
    stage_of = _merge_small_stages(analysis, keys)
    return [
        _Layer(
            cost=layer,
            positions=positions[layer.name],
            stage=stage_of[keys[layer.name]],
            out_channels=channels.get(layer.out_unit, 0) if layer.out_unit else 0,
            in_channels=channels.get(layer.in_unit, 0) if layer.in_unit else 0,
        )
        for layer in analysis.layers
    ]


def _merge_small_stages(analysis: ModelAnalysis, keys: Mapping[str, int]) -> dict[int, int]:
    """Resolution key -> stage index (largest resolution first), small resolutions merged into
    the nearest one."""
    share: dict[int, float] = {}
    for layer in analysis.layers:
        share[keys[layer.name]] = share.get(keys[layer.name], 0.0) + layer.macs / max(analysis.total_macs, 1)
    owner = {key: key for key in share}
    big = [key for key, s in share.items() if s >= MIN_STAGE_SHARE] or [max(share, key=lambda k: share[k])]
    for key in share:
        if key not in big:
            owner[key] = min(big, key=lambda b: (abs(b - key), -b))
    order = sorted(set(owner.values()), reverse=True)
    return {key: order.index(owner[key]) for key in share}


def _fit_relative(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of xs @ w / ys against 1, every negative weight dropped in turn; with the
    leave-one-out residuals (measured / predicted - 1, positive where the prediction was too low),
    from the hat matrix of the columns kept (empty below 3 points: nothing to leave out)."""
    a = xs / ys[:, None]
    columns = list(range(xs.shape[1]))
    while True:
        weights = np.zeros(xs.shape[1])
        solution, *_ = np.linalg.lstsq(a[:, columns], np.ones(len(ys)), rcond=None)
        weights[columns] = solution
        negative = [c for c in columns if weights[c] < 0]
        if not negative:
            break
        columns.remove(min(negative, key=lambda c: weights[c]))
    if len(ys) < 3 or len(ys) <= len(columns):
        return weights, np.zeros(0)
    kept = a[:, columns]
    leverage = np.einsum("ij,ji->i", kept, np.linalg.pinv(kept))
    relative = (1.0 - a @ weights) / np.maximum(1.0 - leverage, 1e-6)  # 1 - predicted / measured
    return weights, 1.0 / np.maximum(1.0 - relative, 1e-6) - 1.0
