"""CompressionEnv: one step per compressible unit, reward at the last step.

The env orchestrates only. It is handed the model analysis (units), a policy evaluator
(compress -> recover -> measure), a reward function, the baseline and an action limiter;
observation features and rewards are pure functions in `features.py` and `reward.py`.

Action: float32 `Box(-1, 1, (1,))`, mapped linearly to a keep ratio in [min_keep, max_keep]; with
low-rank or int8 offered, `Box(-1, 1, (3,))`: amount, method selector (> 0: low-rank, where the
unit's root layer can be factorized) and int8 flag (> 0). With `int8_model` every unit runs in
int8 in every episode (the whole graph quantized, adds and pooling too) and there is no flag: the
agent searches the structure under int8 latency. With `downsample` 2 every episode's model runs
its first convolution at twice its stride (a deployment setting, `search.downsample`: the units'
costs are then those of the downsampled model). For a unit inside a skippable residual
block (identity shortcut), the lowest `skip_fraction` of the action range means "remove the whole
block" (depth compression); other units cannot choose it, so impossible combinations are mapped
away rather than masked.
The keep ratio is then capped by the limiter (`limiter.py`): under a budget, AMC-style, so that
even if every later unit is pruned as hard as allowed the predicted latency / memory stays within
it; without one (`NoLimit`, the default), not at all. The limiter is told every episode's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.units import ModelAnalysis, Unit
from modeltailor.env.features import OBS_SIZE, DeploymentContext, DeploymentFeatures, observe
from modeltailor.env.limiter import ActionLimiter, NoLimit, ReadOnlyLimiter, Trial
from modeltailor.env.records import EpisodeRecord, Outcome
from modeltailor.env.reward import Resources, RewardFunction
from modeltailor.errors import EpisodeFailed

log = logging.getLogger(__name__)


SKIP = 0.0  # keep ratio recorded for a skipped unit


@dataclass(frozen=True)
class ActionRange:
    min_keep: float = 0.2
    max_keep: float = 1.0
    skip_fraction: float = 0.0  # 0 disables skipping

    @property
    def skip_below(self) -> float:
        return -1.0 + 2.0 * self.skip_fraction

    def to_keep(self, action: float, skippable: bool = False) -> float:
        """Keep ratio for an action; SKIP (0) in the skip region of a skippable unit."""
        a = float(np.clip(action, -1.0, 1.0))
        if skippable and self.skip_fraction > 0:
            if a < self.skip_below:
                return SKIP
            a = -1.0 + 2.0 * (a - self.skip_below) / (1.0 - self.skip_below)
        return self.min_keep + (a + 1.0) / 2.0 * (self.max_keep - self.min_keep)

    def to_action(self, keep: float) -> float:
        if keep == SKIP:
            return -1.0
        return 2.0 * (keep - self.min_keep) / (self.max_keep - self.min_keep) - 1.0

    def lowest(self, skippable: bool) -> float:
        return SKIP if skippable and self.skip_fraction > 0 else self.min_keep


class CompressionEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        analysis: ModelAnalysis,
        evaluator: Callable[[Policy], Outcome],
        reward: RewardFunction,
        baseline: Resources,
        action_range: ActionRange = ActionRange(),
        limiter: ActionLimiter | None = None,
        class_fraction: float = 1.0,
        lowrank_units: frozenset[str] = frozenset(),
        int8: bool = False,
        context: DeploymentContext | None = None,
        int8_units: frozenset[str] | None = None,
        int8_model: bool = False,
        downsample: int = 1,
    ) -> None:
        super().__init__()
        self.analysis = analysis
        self.evaluator = evaluator
        self.reward_fn = reward
        self.baseline = baseline
        self.range = action_range
        self.limiter: ActionLimiter = limiter if limiter is not None else NoLimit()
        self.class_fraction = class_fraction
        self.context = context or DeploymentContext(class_fraction=class_fraction)
        self.units = analysis.units
        self.lowrank_units = frozenset(lowrank_units)
        self.int8 = int8 and not int8_model  # the agent's per-unit flag
        self.int8_model = int8_model  # every unit in int8, always
        self.int8_units = int8_units  # None: every unit may run in int8
        self.downsample = downsample  # every episode's model runs its first conv at this times its stride
        # joint mode: (amount, method selector, int8 flag); otherwise just the amount
        dims = 3 if (self.lowrank_units or self.int8) else 1
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(dims,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-1.0, 2.0, shape=(OBS_SIZE,), dtype=np.float32)
        self.history: list[EpisodeRecord] = []
        self.callbacks: list[Callable[[EpisodeRecord], None]] = []
        self._t = 0
        self._keep: dict[str, float] = {}
        self._method: dict[str, str] = {}
        self._bits: dict[str, int] = {}
        self._previous = 1.0

    def sibling(
        self,
        evaluator: Callable[[Policy], Outcome],
        reward: RewardFunction | None = None,
        limiter: ActionLimiter | None = None,
        context: DeploymentContext | None = None,
    ) -> CompressionEnv:
        """The same deployment (units, reward, baseline, actions, observations) on another
        evaluator, e.g. the surrogate: an empty history, no callbacks, and this env's limits read
        but never refitted by the sibling's outcomes. `reward`, `limiter` and `context` make it a
        variant of the deployment (another budget, floor or class subset) on the same units."""
        context = context or self.context
        return CompressionEnv(
            self.analysis, evaluator, reward or self.reward_fn, self.baseline, self.range,
            ReadOnlyLimiter(limiter or self.limiter), context.class_fraction, self.lowrank_units, self.int8, context,
            self.int8_units, self.int8_model, self.downsample,
        )

    # gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t, self._keep, self._method, self._bits, self._previous = 0, {}, {}, {}, 1.0
        return self._get_obs(), {}

    def step(self, action: np.ndarray):
        unit = self.units[self._t]
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        method = "lowrank" if unit.name in self.lowrank_units and len(a) > 1 and a[1] > 0 else "prune"
        skippable = unit.block is not None and method == "prune"
        wanted = self.range.to_keep(float(a[0]), skippable)
        keep = min(wanted, self._max_keep(unit, skippable, method))
        self._keep[unit.name] = keep
        self._method[unit.name] = "skip" if keep == SKIP else method
        self._bits[unit.name] = self._bits_for(unit, bool(self.int8 and len(a) > 2 and a[2] > 0))
        self._previous = self.range.to_action(keep)
        self._t += 1
        if self._t < len(self.units):
            return self._get_obs(), 0.0, False, False, {"keep": keep}
        record = self._finish_episode()
        return self._get_obs(), float(record.reward), True, False, self._get_info(record)

    # helpers -------------------------------------------------------------------------------
    def _get_obs(self) -> np.ndarray:
        unit = self.units[min(self._t, len(self.units) - 1)]
        features = DeploymentFeatures(
            self.class_fraction,
            self.limiter.budget_fraction(self.analysis.total_macs),
            self.range.skip_fraction > 0,
            self.lowrank_units, self.int8 or self.int8_model, self.context,
        )
        obs = observe(self.analysis, unit, self._keep, self._previous, features)
        return np.clip(obs, -1.0, 2.0).astype(np.float32)

    def _get_info(self, record: EpisodeRecord) -> dict[str, Any]:
        return {
            "accuracy": record.accuracy,
            "latency_ms": record.latency_ms,
            "memory_bytes": record.memory_bytes,
            "feasible": record.feasible,
            "episode": record.episode,
        }

    def evaluate(self, policy: Policy) -> EpisodeRecord:
        """Evaluate a whole `policy` as given (no limiter), recorded as the next episode.

        For one-shot searchers (greedy sensitivity, evolution) that propose complete policies; they
        count the same evaluations as step-wise ones, one episode per policy. Units the policy
        does not name keep everything; the model is downsampled as every episode of this env is.
        """
        given = {a.unit: a for a in policy.actions}
        self.reset()
        for unit in self.units:
            action = given.get(unit.name)
            self._keep[unit.name] = SKIP if action is not None and action.method == "skip" else (
                action.keep if action is not None else 1.0
            )
            self._method[unit.name] = action.method if action is not None else "prune"
            self._bits[unit.name] = self._bits_for(unit, action is not None and action.bits == 8)
        self._t = len(self.units)
        return self._finish_episode()

    def _bits_for(self, unit: Unit, wanted: bool) -> int:
        """8 where int8 is wanted (always, with `int8_model`) and the unit may run in int8, else 32."""
        allowed = self.int8_units is None or unit.name in self.int8_units
        return 8 if allowed and (wanted or self.int8_model) else 32

    def predicted_within(self, policy: Policy) -> bool:
        """Whether the limiter predicts `policy` within the budget (always, without one)."""
        return self.limiter.fits(self.analysis, policy.keep_ratios(), policy.lowrank_ratios())

    def policy(self) -> Policy:
        return Policy(
            tuple(
                UnitAction(unit=u, method=self._method[u], keep=round(k, 4), bits=self._bits[u])
                for u, k in self._keep.items()
            ),
            downsample=self.downsample,
        )

    def _split(self, decided: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """(channel keep per unit, low-rank ratio per layer) for cost estimates."""
        prune = {u: k for u, k in decided.items() if self._method.get(u, "prune") != "lowrank"}
        lowrank = {u: k for u, k in decided.items() if self._method.get(u) == "lowrank"}
        return prune, lowrank

    def _finish_episode(self) -> EpisodeRecord:
        policy = self.policy()
        try:
            outcome = self.evaluator(policy)
        except EpisodeFailed as exc:
            return self._record(self._failed_record(policy, str(exc)))
        self.limiter.record(outcome)
        resources = Resources(outcome.accuracy, outcome.latency_ms, outcome.memory_bytes)
        record = EpisodeRecord(
            episode=len(self.history),
            policy=policy,
            accuracy=outcome.accuracy,
            latency_ms=outcome.latency_ms,
            latency_p90_ms=outcome.measurement.latency.p90_ms,
            memory_bytes=int(outcome.memory_bytes),
            params=outcome.params,
            macs=outcome.macs,
            reward=float(self.reward_fn(resources, self.baseline)),
            feasible=self.reward_fn.feasible(resources),
            cached=outcome.cached,
            seconds=outcome.seconds,
            kept_channels=outcome.kept_channels,
            architecture=outcome.architecture,
        )
        return self._record(record)

    def _failed_record(self, policy: Policy, failure: str) -> EpisodeRecord:
        """A failed episode: scored as a model with no accuracy at the baseline's cost (the worst
        the reward gives), never feasible, left out of the Pareto set and the finalists."""
        log.warning("episode %d failed: %s", len(self.history), failure)
        worst = Resources(0.0, self.baseline.latency_ms, self.baseline.memory_bytes)
        return EpisodeRecord(
            episode=len(self.history), policy=policy, accuracy=0.0, latency_ms=self.baseline.latency_ms,
            latency_p90_ms=self.baseline.latency_ms, memory_bytes=int(self.baseline.memory_bytes), params=0,
            macs=0, reward=float(self.reward_fn(worst, self.baseline)), feasible=False, cached=False, seconds=0.0,
            failure=failure,
        )

    def _record(self, record: EpisodeRecord) -> EpisodeRecord:
        self.history.append(record)
        for callback in self.callbacks:
            callback(record)
        return record

    def _max_keep(self, unit: Unit, skippable: bool, method: str) -> float:
        """The limiter's cap for this unit, every later unit assumed at its lowest setting."""
        rest = {u.name: self.range.lowest(u.block is not None) for u in self.units[self._t + 1 :]}
        prune, lowrank = self._split(self._keep)
        trial = Trial(self.analysis, unit.name, method, {**prune, **rest}, lowrank)
        cap = self.limiter.max_keep(trial, self.range.min_keep, self.range.max_keep)
        return self.range.lowest(skippable) if cap is None else cap
