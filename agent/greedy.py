"""Greedy per-unit sensitivity search, in the manner of AIMET's greedy compression-ratio selection.

Phase 1 (probes): each unit is compressed *alone* at a few keep ratios spread over the env's range
(``linspace(max_keep, min_keep, ratios + 1)[1:]``; a unit inside a skippable residual block also
tries removing the block), every other unit at ``max_keep`` (untouched by default), and each probe
is evaluated as a whole policy with ``env.evaluate``. A probe's *drop* is measured against the
reference ``max(env.baseline.accuracy, best probe accuracy)``, so every drop is >= 0. Units are
probed in order of the MACs they control (largest first); when the episode budget (less the share
kept for phase 2) is too small for every probe, each unit gets fewer ratios (``min_keep`` alone at
the least), skip probes go to the largest skippable units, and below one probe per unit only the
largest units are probed (the others stay at ``max_keep``).

Phase 2 (allocations): for a tolerance tau each unit takes its most compressed setting whose drop
is <= tau; between probed ratios the drop is interpolated linearly (anchored at 0 for
``max_keep``) on a 0.05 grid, so tau moves the allocation in small steps. The tolerances worth
trying are the distinct drops of those settings. Under a budget (the all-``max_keep`` reference is
not predicted within it) the allocations come first from the marginal greedy
(`marginal_allocation`: compress, one grid step at a time, the unit with the smallest drop per
MACs saved until the policy is predicted within the budget, then give back what still fits), once
per exponent in ``ALPHAS``; then the tolerance allocations from the smallest tau that
``env.predicted_within`` (found by bisection) towards larger tau, all re-checked every episode as
the limiter's cost models learn. Without a budget
(accuracy and trade-off objectives) the tolerances are swept from small to large, spread evenly
over the phase-2 episodes. Once every allocation was tried, uniform policies from ``max_keep``
down to ``min_keep`` follow (under a budget, only those predicted within; if nothing at all is,
every unit at its lowest setting), and once those too were tried, the first candidate again.
Probe episodes the plan leaves unused go to phase 2.

Only pruning and block skipping are searched: low-rank and int8, when offered, are left alone
(every unit is pruned, in float). Nothing is random; ``seed`` is accepted for the common interface.

Resume (``done`` > 0): the plan depends only on the env and the whole budget (``done +
episodes``), so the probes and allocations already in ``env.history[-done:]`` are recognized by
their policies and not evaluated again; the search continues with the first one missing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from modeltailor.agent.base import SearchResult, search_loop
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.units import estimate_macs, unit_macs
from modeltailor.env.compression_env import SKIP, CompressionEnv
from modeltailor.env.records import EpisodeRecord

log = logging.getLogger(__name__)

GRID = 0.05  # keep-ratio step of the interpolated settings between probed ratios
UNPROBED_SKIP = 2.0
"""A skippable unit whose skip was not probed (short budgets) may still be skipped by an allocation,
at twice its worst probed drop (plus a point): a tight budget may need removing blocks."""
Actions = tuple[UnitAction, ...]


@dataclass(frozen=True)
class Probe:
    """One unit compressed alone: pruned to `keep`, or its block skipped (`method` "skip")."""

    unit: str
    method: str
    keep: float


@dataclass(frozen=True)
class Setting:
    """A setting of one unit in an allocation, with its (measured or interpolated) drop."""

    method: str
    keep: float
    drop: float


@dataclass
class GreedySearcher:
    """Probes each unit alone, then evaluates tolerance-based allocations (see the module doc)."""

    seed: int = 0
    ratios: int = 3
    allocation_share: float = 0.25  # share of the episodes kept for phase 2 (at least one)
    name: str = "greedy"

    def search(self, env: CompressionEnv, episodes: int, *, done: int = 0) -> SearchResult:
        total = done + episodes
        plan = probe_plan(env, total - phase2_episodes(total, self.allocation_share), self.ratios)
        previous = env.history[max(0, len(env.history) - done) :] if done else []
        accuracy = probe_results(env, plan, previous)
        pending = [p for p in plan if p not in accuracy]
        evaluated = {record.policy.actions for record in previous}
        allocations = Allocations(env, total - len(plan))
        log.info("greedy: %d probes (%d pending), then allocations", len(plan), len(pending))

        def play(_i: int) -> EpisodeRecord:
            if pending:
                probe = pending.pop(0)
                record = env.evaluate(probe_policy(env, probe))
                accuracy[probe] = record.accuracy
            else:
                record = env.evaluate(allocations.next(accuracy, evaluated))
            evaluated.add(record.policy.actions)
            return record

        return search_loop(self.name, env, episodes, play)


def phase2_episodes(total: int, share: float) -> int:
    """Episodes kept for the allocations: ``ceil(share * total)``, at least one (if any)."""
    return min(total, max(1, math.ceil(share * total)))


def probe_keeps(env: CompressionEnv, ratios: int) -> list[float]:
    """`ratios` keep ratios spread over [min_keep, max_keep), mildest first, min_keep last."""
    r = env.range
    keeps = [round(float(k), 4) for k in np.linspace(r.max_keep, r.min_keep, ratios + 1)[1:]]
    return [k for k in dict.fromkeys(keeps) if k < r.max_keep]


def skippable(env: CompressionEnv, unit: str) -> bool:
    return env.analysis.unit(unit).block is not None and env.range.skip_fraction > 0


def probe_plan(env: CompressionEnv, probes: int, ratios: int) -> list[Probe]:
    """At most `probes` probes: units by the MACs they control, as many ratios each as fit."""
    order = sorted(env.units, key=lambda u: (-unit_macs(env.analysis, u.name), u.index))
    names = [u.name for u in order]
    per_unit = max(1, min(ratios, probes // max(len(names), 1)))
    plan = [Probe(u, "prune", k) for u in names for k in probe_keeps(env, per_unit)]
    plan += [Probe(u, "skip", SKIP) for u in names if skippable(env, u)]
    return plan[: max(probes, 0)]  # skips of the smaller units go first, then the smaller units


def reference_actions(env: CompressionEnv) -> dict[str, UnitAction]:
    """Every unit at max_keep (the uncompressed model by default): what a probe departs from."""
    keep = round(env.range.max_keep, 4)
    return {u.name: UnitAction(u.name, "prune", keep) for u in env.units}


def probe_policy(env: CompressionEnv, probe: Probe) -> Policy:
    actions = reference_actions(env)
    actions[probe.unit] = UnitAction(probe.unit, probe.method, probe.keep)
    return Policy(tuple(actions.values()))


def probe_results(env: CompressionEnv, plan: Sequence[Probe], records: Sequence[EpisodeRecord]) -> dict[Probe, float]:
    """Accuracy of each probe of `plan` found among `records` (a resumed search's episodes)."""
    wanted = {probe_policy(env, p).actions: p for p in plan}
    return {wanted[r.policy.actions]: r.accuracy for r in records if r.policy.actions in wanted}


def unit_settings(env: CompressionEnv, unit: str, drops: dict[Probe, float]) -> list[Setting]:
    """The settings an allocation may give `unit`, most compressed first: skip (if probed),
    then keep ratios from the lowest probed one up to max_keep on the grid, drops interpolated."""
    pruned = sorted((p.keep, d) for p, d in drops.items() if p.unit == unit and p.method == "prune")
    settings = [Setting("skip", SKIP, d) for p, d in drops.items() if p.unit == unit and p.method == "skip"]
    if not settings and pruned and skippable(env, unit):  # not probed: assumed worse than its worst probe
        settings = [Setting("skip", SKIP, UNPROBED_SKIP * max(d for _, d in pruned) + 0.01)]
    if pruned:
        top = env.range.max_keep
        xs, ys = [k for k, _ in pruned] + [top], [d for _, d in pruned] + [0.0]
        steps = max(1, round((top - xs[0]) / GRID))
        keeps = sorted({round(float(k), 4) for k in [*np.linspace(xs[0], top, steps + 1)[:-1], *xs[:-1]]})
        settings += [Setting("prune", k, float(np.interp(k, xs, ys))) for k in keeps]
    return settings


def allocation(env: CompressionEnv, settings: dict[str, list[Setting]], tau: float) -> Policy:
    """Each unit at its most compressed setting with drop <= tau; max_keep if it has none."""
    actions = reference_actions(env)
    for unit, options in settings.items():
        chosen = next((s for s in options if s.drop <= tau + 1e-12), None)
        if chosen is not None:
            actions[unit] = UnitAction(unit, chosen.method, chosen.keep)
    return Policy(tuple(actions.values()))


def uniform_policies(env: CompressionEnv) -> Iterator[Policy]:
    """Every unit pruned alike, from max_keep down to min_keep on the grid."""
    r = env.range
    steps = max(1, round((r.max_keep - r.min_keep) / GRID))
    for keep in np.linspace(r.max_keep, r.min_keep, steps + 1):
        yield Policy(tuple(UnitAction(u.name, "prune", round(float(keep), 4)) for u in env.units))


class Allocations:
    """Phase 2: which allocation to evaluate next, given the probes and what was evaluated."""

    def __init__(self, env: CompressionEnv, episodes: int) -> None:
        self.env, self.episodes = env, episodes

    def next(self, accuracy: dict[Probe, float], evaluated: set[Actions]) -> Policy:
        """The first candidate not evaluated yet; once all were, the first one again."""
        first = None
        for policy in self.candidates(accuracy):
            if policy.actions not in evaluated:
                return policy
            first = first or policy
        assert first is not None  # every branch of `candidates` yields at least one
        return first

    def candidates(self, accuracy: dict[Probe, float]) -> Iterator[Policy]:
        env = self.env
        reference = max([env.baseline.accuracy, *accuracy.values()])
        drops = {p: reference - a for p, a in accuracy.items()}
        settings = {u.name: unit_settings(env, u.name, drops) for u in env.units}
        taus = sorted({s.drop for options in settings.values() for s in options})
        if env.predicted_within(Policy(tuple(reference_actions(env).values()))):  # no budget bites
            yield from (allocation(env, settings, taus[i]) for i in spread(len(taus), self.episodes))
            yield from (allocation(env, settings, t) for t in taus)
            yield from uniform_policies(env)
            return
        fitting = [p for alpha in ALPHAS if (p := marginal_allocation(env, settings, alpha)) is not None]
        first = smallest_fitting(len(taus), lambda i: env.predicted_within(allocation(env, settings, taus[i])))
        fitting += [allocation(env, settings, t) for t in taus[first:]]
        fitting += [p for p in uniform_policies(env) if env.predicted_within(p)]
        yield from fitting or [lowest_policy(env)]


ALPHAS = (1.0, 0.5, 2.0, 0.0, 1.5, 3.0)
"""Exponents of the MACs saved in the marginal score (drop / saved ** alpha), one allocation each:
1 is drop per MAC; lower favours small drops, higher favours large savings."""


def marginal_allocation(env: CompressionEnv, settings: dict[str, list[Setting]], alpha: float) -> Policy | None:
    """Under a budget: from every unit at max_keep, repeatedly take the one-step compression with
    the smallest drop per share of MACs saved (``drop / saved ** alpha``) until the policy is
    predicted within the budget, then give back, one step at a time, whatever still fits (the
    largest drop recovered per MAC first). None if even the most compressed settings do not fit."""
    total = max(env.analysis.total_macs, 1)
    state = {u: len(options) for u, options in settings.items()}  # len(options): at max_keep

    def policy_of(at: dict[str, int]) -> Policy:
        actions = reference_actions(env)
        for unit, i in at.items():
            if i < len(settings[unit]):
                chosen = settings[unit][i]
                actions[unit] = UnitAction(unit, chosen.method, chosen.keep)
        return Policy(tuple(actions.values()))

    def macs(at: dict[str, int]) -> float:
        policy = policy_of(at)
        return estimate_macs(env.analysis, policy.keep_ratios(), policy.lowrank_ratios()) / total

    def drop(unit: str, i: int) -> float:
        return settings[unit][i].drop if i < len(settings[unit]) else 0.0

    current = macs(state)
    while not env.predicted_within(policy_of(state)):
        moves = []
        for unit, i in state.items():
            if i == 0:
                continue
            after = macs({**state, unit: i - 1})
            if after < current:
                cost = max(drop(unit, i - 1) - drop(unit, i), 0.0) + 1e-6
                moves.append((cost / (current - after) ** alpha, unit, after))
        if not moves:
            return None
        _, unit, current = min(moves)
        state[unit] -= 1
    while True:  # give back what the budget still allows
        back = []
        for unit, i in state.items():
            if i < len(settings[unit]) and env.predicted_within(policy_of({**state, unit: i + 1})):
                gain = max(drop(unit, i) - drop(unit, i + 1), 0.0) + 1e-6
                back.append((-gain / max(macs({**state, unit: i + 1}) - current, 1e-9), unit))
        if not back:
            return policy_of(state)
        _, unit = min(back)
        state[unit] += 1
        current = macs(state)


def lowest_policy(env: CompressionEnv) -> Policy:
    """Every unit at its most compressed setting: skipped where it may be, else at min_keep."""
    keep = round(env.range.min_keep, 4)
    return Policy(
        tuple(UnitAction(u.name, "skip", SKIP) if skippable(env, u.name) else UnitAction(u.name, "prune", keep)
              for u in env.units)
    )


def smallest_fitting(n: int, fits_at: Callable[[int], bool]) -> int:
    """The smallest index in [0, n) where the monotone `fits_at` holds (n if none), by bisection."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_at(mid) else (mid + 1, hi)
    return lo


def spread(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over the interior of [0, n), ascending, without repeats."""
    if n <= 0 or k <= 0:
        return []
    return list(dict.fromkeys(int(round(x)) for x in np.linspace(0, n - 1, k + 2)[1:-1]))
