"""The surrogate: predictors of accuracy, latency and memory fitted on the experience, behind the
evaluator interface, so the same `CompressionEnv` runs on it in milliseconds per episode.

A real episode (compress, recover, export, measure) costs seconds; an agent needs thousands of
episodes to learn. Following Once-for-All and APQ, every real episode ever measured for a (model,
data) becomes a training `Sample`, and three regressors learn from them:

- **accuracy**: the drop from the deployment's own baseline accuracy (so deployments with other
  class subsets, whose baselines differ, share what they learned), over the policy encoding and the
  class subset;
- **latency** and **memory**: log of the ratio to the deployment's baseline, over the same
  features plus a one-hot of the device key (a device profile's measurement identity: another host
  or ORT version is another device). Ratios to each device's own baseline transfer well between
  devices, so a device with few or no real episodes yet is predicted from the others (its one-hot
  all zeros until it has `MIN_DEVICE_SAMPLES`).

  On the searched deployment's own device the search may hand a `LatencyFn` instead: the budget
  limiter's latency model, calibrated on that device's own measurements (and refitted on every
  real episode). Ratios do not transfer between thread counts: fitted on two cpu-1t deployments'
  96 episodes, the regressor predicted 32 cpu-2t episodes 37% too slow (median), 20% after 8 of
  that device's own, where the limiter's model was within 6.7% from its calibration alone (digits
  ResNet-20, 7 classes, 2026-12-04), so the search thought most within-budget models were over it.

The policy encoding (`PolicyEncoder`): per unit the channel fraction the compressor really keeps
(rounded as it rounds; 0 for a removed block), the rank ratio of a factorized unit and an int8
flag; then the estimated MACs and parameter ratios of the whole model and the class subset
(multi-hot and fraction). Equal encodings are equal models.

Which regressor (`KINDS`: a Gaussian process, extremely randomized trees, a small MLP ensemble, an
additive model) is picked by measurement: the one with the best cross-validated Kendall tau on the
samples at hand (`select_kind`); `Surrogate.scores` keeps every candidate's score. Predictions steer the search
only: every reported number is measured by a real episode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from modeltailor.compressors.policy import Policy
from modeltailor.compressors.pruning import channels_to_keep
from modeltailor.compressors.units import ModelAnalysis, estimate_macs, estimate_params
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import MemoryStats
from modeltailor.env.records import Outcome
from modeltailor.env.reward import Resources
from modeltailor.errors import ModelTailorError

KINDS: tuple[str, ...] = ("gp", "trees", "mlp", "additive")
"""Regressors `select_kind` chooses among: a Gaussian process (Matern kernel plus noise),
extremely randomized trees, an ensemble of five small MLPs (Once-for-All's predictor), and an
additive model (Bayesian ridge over each feature and its square: a sum of one smooth curve per
unit: the per-layer sensitivity greedy search and AIMET assume). Trees and a GP with one length
scale treat every unit alike until they have seen many episodes; the additive model weighs each
unit from the start, and answers what the others can only extrapolate: one unit compressed, the
rest untouched (the probes `agent.surrogate_search` allocates from)."""
DEFAULT_KIND = "trees"
"""Below `SELECT_MIN` samples there is too little to cross-validate on: extremely randomized trees
then. bench/surrogate.py, fitted on 12 real episodes (digits ResNet-20, 3 shuffles), held-out
accuracy Kendall tau: trees 0.635, MLP 0.517, GP 0.409 (2026-12-03, episodes with BatchNorm
re-estimated after the recovery); trees 0.37 against the GP's 0.16 in the run before."""
SELECT_MIN = 20
FOLDS = 5
MIN_DEVICE_SAMPLES = 3
"""Real episodes on a device before its latency and memory can be predicted."""
SURROGATE_DEVICE = "surrogate"

LatencyFn = Callable[[Policy], float]
"""A policy's predicted latency (ms) on the searched deployment's device (see the module doc)."""


@dataclass(frozen=True)
class Sample:
    """One real episode as the surrogate learns from it (ratios against its own deployment's baseline)."""

    policy: Policy
    classes: tuple[int, ...] | None
    accuracy_drop: float
    latency_ratio: float
    memory_ratio: float
    device: str


@dataclass(frozen=True)
class PolicyEncoder:
    """Fixed-length features of (policy, class subset) for one model's compressible units."""

    analysis: ModelAnalysis
    num_classes: int
    round_to: int = 1

    @property
    def size(self) -> int:
        return 3 * len(self.analysis.units) + 3 + self.num_classes

    def encode(self, policy: Policy, classes: Sequence[int] | None) -> np.ndarray:
        actions = {a.unit: a for a in policy.actions}
        row: list[float] = []
        keep: dict[str, float] = {}
        ranks: dict[str, float] = {}
        for unit in self.analysis.units:
            action = actions.get(unit.name)
            built, rank, bits = 1.0, 1.0, 0.0
            if action is not None:
                if action.method == "skip":
                    built = 0.0
                elif action.method == "lowrank":
                    rank = action.keep
                    ranks[unit.name] = rank
                else:
                    built = channels_to_keep(unit.channels, action.keep, self.round_to) / max(unit.channels, 1)
                bits = 1.0 if action.bits == 8 and action.method != "skip" else 0.0
            keep[unit.name] = built
            row += [built, rank, bits]
        macs = estimate_macs(self.analysis, keep, ranks) / max(self.analysis.total_macs, 1)
        params = estimate_params(self.analysis, keep, ranks) / max(self.analysis.total_params, 1)
        hot = np.ones(self.num_classes) if not classes else np.isin(np.arange(self.num_classes), list(classes))
        return np.r_[row, macs, params, hot.mean(), hot.astype(float)].astype(np.float64)

    def encode_all(self, policies: Sequence[Policy], classes: Sequence[int] | None) -> np.ndarray:
        return np.array([self.encode(p, classes) for p in policies]).reshape(len(policies), self.size)


# --- regressors ------------------------------------------------------------------------------

class Regressor:
    """A fitted regressor of one target: `predict(x)` -> (mean, std) per row."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        if kind not in KINDS:
            raise ModelTailorError(f"surrogate kind '{kind}' is unknown: use one of {', '.join(KINDS)}")
        self.kind, self.seed = kind, seed
        self._models: list[Any] = []
        self._mean = np.zeros(1)
        self._scale = np.ones(1)
        self._y = (0.0, 1.0)

    def fit(self, x: np.ndarray, y: np.ndarray) -> Regressor:
        spread = x.std(axis=0)
        # a column constant in the samples (a class subset never seen) keeps its own scale
        self._mean, self._scale = x.mean(axis=0), np.where(spread > 1e-6, spread, 1.0)
        self._y = (float(y.mean()), float(max(y.std(), 1e-9)))
        xs, ys = self._x(x), (y - self._y[0]) / self._y[1]
        with warnings.catch_warnings():  # convergence chatter of small fits
            warnings.simplefilter("ignore")
            self._models = [_make(self.kind, self.seed + i) for i in range(5 if self.kind == "mlp" else 1)]
            for model in self._models:
                model.fit(self._basis(xs), ys)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = self._x(np.atleast_2d(x))
        if self.kind in ("gp", "additive"):
            mean, std = self._models[0].predict(self._basis(xs), return_std=True)
        elif self.kind == "trees":
            # the trees' own float32 input, validated once: per-tree validation was 90% of a
            # one-row prediction (18 ms of 20 for 100 trees), and a surrogate episode makes three
            rows = np.ascontiguousarray(xs, dtype=np.float32)
            per_tree = np.array([tree.predict(rows, check_input=False) for tree in self._models[0].estimators_])
            mean, std = per_tree.mean(axis=0), per_tree.std(axis=0)
        else:
            each = np.array([m.predict(xs) for m in self._models])
            mean, std = each.mean(axis=0), each.std(axis=0)
        return mean * self._y[1] + self._y[0], std * self._y[1]

    def _x(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._scale

    def _basis(self, xs: np.ndarray) -> np.ndarray:
        """The additive model's features: each standardized column and its square; the others' own."""
        return np.c_[xs, xs**2] if self.kind == "additive" else xs


def _make(kind: str, seed: int) -> Any:
    if kind == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=5.0, length_scale_bounds=(1e-1, 1e3), nu=2.5)
        kernel += WhiteKernel(0.05, (1e-5, 1.0))
        return GaussianProcessRegressor(kernel, normalize_y=False, random_state=seed)
    if kind == "additive":
        from sklearn.linear_model import BayesianRidge

        return BayesianRidge()
    if kind == "trees":
        from sklearn.ensemble import ExtraTreesRegressor

        return ExtraTreesRegressor(n_estimators=100, min_samples_leaf=2, max_features=0.5, random_state=seed)
    from sklearn.neural_network import MLPRegressor

    return MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1e-3, learning_rate_init=3e-3, max_iter=800, random_state=seed)


def kendall_tau(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Kendall's tau-b of two rankings (0 when either is constant)."""
    from scipy.stats import kendalltau

    tau = kendalltau(truth, predicted).statistic
    return 0.0 if tau is None or math.isnan(float(tau)) else float(tau)


def cross_validated_tau(kind: str, x: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = FOLDS) -> float:
    """Kendall tau of out-of-fold predictions against the truth (every sample predicted once)."""
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.zeros(len(y))
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        predicted[part] = Regressor(kind, seed).fit(x[train], y[train]).predict(x[part])[0]
    return kendall_tau(y, predicted)


def select_kind(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[str, dict[str, float]]:
    """The regressor with the best cross-validated Kendall tau, and every candidate's tau
    (`DEFAULT_KIND`, no scores, below `SELECT_MIN` samples)."""
    if len(y) < SELECT_MIN:
        return DEFAULT_KIND, {}
    scores = {kind: cross_validated_tau(kind, x, y, seed) for kind in KINDS}
    return max(KINDS, key=lambda k: (scores[k], -KINDS.index(k))), scores


# --- the surrogate ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """Predicted outcomes of several policies for one deployment (arrays, one entry per policy)."""

    accuracy: np.ndarray
    accuracy_std: np.ndarray
    latency_ms: np.ndarray
    memory_bytes: np.ndarray

    def resources(self, i: int) -> Resources:
        return Resources(float(self.accuracy[i]), float(self.latency_ms[i]), float(self.memory_bytes[i]))

    def shifted(self, deviations: float) -> Prediction:
        """Each accuracy moved by `deviations` standard deviations of its prediction, within [0, 1]."""
        if not deviations:
            return self
        return replace(self, accuracy=np.clip(self.accuracy + deviations * self.accuracy_std, 0.0, 1.0))


@dataclass
class Surrogate:
    """Accuracy, latency and memory regressors fitted on `samples` (see the module doc)."""

    encoder: PolicyEncoder
    samples: list[Sample]
    kind: str
    accuracy: Regressor
    latency: Regressor
    memory: Regressor
    devices: tuple[str, ...]
    """Devices with their own one-hot column (at least `MIN_DEVICE_SAMPLES` real episodes each)."""
    scores: dict[str, float] = field(default_factory=dict)

    def predict(
        self, policies: Sequence[Policy], classes: Sequence[int] | None, device: str, baseline: Resources
    ) -> Prediction:
        return self.predict_encoded(self.encoder.encode_all(policies, classes), device, baseline)

    def predict_encoded(self, x: np.ndarray, device: str, baseline: Resources) -> Prediction:
        """`predict` for rows the encoder already made (for one deployment's class subset)."""
        drop, drop_std = self.accuracy.predict(x)
        costs = np.c_[x, np.tile(device_columns(self.devices, device), (len(x), 1))]
        latency = np.exp(self.latency.predict(costs)[0])
        memory = np.exp(self.memory.predict(costs)[0])
        accuracy = np.clip(baseline.accuracy - drop, 0.0, 1.0)
        return Prediction(accuracy, drop_std, latency * baseline.latency_ms, memory * baseline.memory_bytes)


def fit_surrogate(
    samples: Sequence[Sample], encoder: PolicyEncoder, kind: str | None = None, seed: int = 0
) -> Surrogate:
    """Fit on `samples`; `kind` None picks the accuracy regressor by cross-validated Kendall tau
    (latency and memory, near-monotone in the MACs and parameter ratios, use the same kind)."""
    if not samples:
        raise ModelTailorError("the surrogate needs at least one real episode to learn from")
    samples = list(samples)
    x = np.array([encoder.encode(s.policy, s.classes) for s in samples]).reshape(len(samples), encoder.size)
    drops = np.array([s.accuracy_drop for s in samples])
    scores: dict[str, float] = {}
    if kind is None:
        kind, scores = select_kind(x, drops, seed)
    accuracy = Regressor(kind, seed).fit(x, drops)
    counts = {d: sum(s.device == d for s in samples) for d in {s.device for s in samples}}
    devices = tuple(sorted(d for d, n in counts.items() if n >= MIN_DEVICE_SAMPLES))
    costs = np.c_[x, np.array([device_columns(devices, s.device) for s in samples]).reshape(len(samples), len(devices))]
    latency = Regressor(kind, seed).fit(costs, np.log([max(s.latency_ratio, 1e-6) for s in samples]))
    memory = Regressor(kind, seed).fit(costs, np.log([max(s.memory_ratio, 1e-9) for s in samples]))
    return Surrogate(encoder, samples, kind, accuracy, latency, memory, devices, scores)


def device_columns(devices: Sequence[str], device: str) -> np.ndarray:
    """The device's one-hot among `devices` (all zeros for a device with too few episodes)."""
    return np.array([1.0 if d == device else 0.0 for d in devices])


@dataclass
class SurrogateEvaluator:
    """The evaluator interface on the surrogate: a policy's predicted `Outcome` for one deployment
    (its class subset, device and baseline). Predictions are memoized per policy encoding until
    `surrogate` is replaced."""

    surrogate: Surrogate
    baseline: Resources
    classes: tuple[int, ...] | None
    device: str
    analysis: ModelAnalysis
    round_to: int = 1
    latency: LatencyFn | None = None
    """Latency from this instead of the surrogate's regressor (the device's calibrated model)."""
    accuracy_shift: float = 0.0
    """Standard deviations of its prediction added to each accuracy (negative: a lower bound)."""
    calls: int = 0
    _memo: dict[bytes, Outcome] = field(default_factory=dict, repr=False)
    _fitted: int = field(default=-1, repr=False)

    def __call__(self, policy: Policy) -> Outcome:
        self.calls += 1
        if self._fitted != id(self.surrogate):
            self._memo.clear()
            self._fitted = id(self.surrogate)
        key = self.surrogate.encoder.encode(policy, self.classes).tobytes()
        if key not in self._memo:
            prediction = self.surrogate.predict([policy], self.classes, self.device, self.baseline)
            predicted = prediction.shifted(self.accuracy_shift).resources(0)
            if self.latency is not None:
                predicted = replace(predicted, latency_ms=self.latency(policy))
            self._memo[key] = self._outcome(policy, predicted)
        return self._memo[key]

    def _outcome(self, policy: Policy, predicted: Resources) -> Outcome:
        keep = policy.keep_ratios()
        ranks = policy.lowrank_ratios()
        latency = LatencyStats(predicted.latency_ms, predicted.latency_ms, predicted.latency_ms, 0.0,
                               predicted.latency_ms, 0.0, 0)
        memory = MemoryStats(int(predicted.memory_bytes), 0, int(predicted.memory_bytes), 0)
        channels = {
            u.name: channels_to_keep(u.channels, keep[u.name], self.round_to)
            for u in self.analysis.units if keep.get(u.name, 1.0) > 0 and u.name in keep
        }
        return Outcome(
            accuracy=predicted.accuracy,
            measurement=Measurement(latency, memory, SURROGATE_DEVICE),
            params=int(estimate_params(self.analysis, keep, ranks)),
            macs=int(estimate_macs(self.analysis, keep, ranks)),
            kept_channels=channels,
            seconds=0.0,
            cached=True,  # never a fresh measurement: a limiter must not learn from it
        )


def rank_policies(
    surrogate: Surrogate,
    policies: Sequence[Policy],
    classes: Sequence[int] | None,
    device: str,
    baseline: Resources,
    reward: Callable[[Resources, Resources], float],
    optimism: float = 0.0,
    latency: LatencyFn | None = None,
) -> list[tuple[float, Policy]]:
    """(predicted reward, policy), best first, for policies of one deployment (one batch
    prediction); each accuracy raised by `optimism` standard deviations of its prediction (an
    upper confidence bound: where the surrogate is unsure, it is worth measuring); latencies from
    `latency` when given."""
    if not policies:
        return []
    return rank_encoded(surrogate, surrogate.encoder.encode_all(policies, classes), policies, device, baseline,
                        reward, optimism, latency)


def rank_encoded(
    surrogate: Surrogate,
    x: np.ndarray,
    policies: Sequence[Policy],
    device: str,
    baseline: Resources,
    reward: Callable[[Resources, Resources], float],
    optimism: float = 0.0,
    latency: LatencyFn | None = None,
) -> list[tuple[float, Policy]]:
    """`rank_policies` for policies already encoded (rows of `x`)."""
    predicted = surrogate.predict_encoded(x, device, baseline)
    if latency is not None:
        predicted = replace(predicted, latency_ms=np.array([latency(p) for p in policies]))
    hopeful = predicted.shifted(optimism)
    scored = [(float(reward(hopeful.resources(i), baseline)), p) for i, p in enumerate(policies)]
    return sorted(scored, key=lambda item: -item[0])


def sample_of(
    policy: Policy, accuracy: float, latency_ms: float, memory_bytes: float, baseline: Resources,
    classes: Sequence[int] | None, device: str,
) -> Sample:
    """A real episode's sample: its measured numbers as ratios of its deployment's baseline."""
    return Sample(
        policy=policy,
        classes=tuple(classes) if classes else None,
        accuracy_drop=baseline.accuracy - accuracy,
        latency_ratio=latency_ms / max(baseline.latency_ms, 1e-12),
        memory_ratio=memory_bytes / max(baseline.memory_bytes, 1e-12),
        device=device,
    )
