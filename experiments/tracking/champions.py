"""When a deployment's champion alias moves: the rule, on the tags of two registered versions.

A version's latency is a measurement, and a measurement on a shared machine carries noise: two
runs of the same deployment must not swap champions because one of them was timed in a quieter
moment. Each version therefore records its latency *spread* beside its latency (the version tag
``latency_spread_ms``): the 90th percentile of every timed run of its final measurement minus the
reported median (the quietest round's median), in milliseconds, never below 0. Load that comes
and goes during a measurement widens it; a steady machine keeps it near 0.

The rule. A new version takes the champion alias of its deployment when

1. the champion was measured under another device profile (other threads, ONNX Runtime version or
   CPU model: the ``profile`` tag differs): its latency no longer compares, so it is replaced; or
2. under the new version's objective and baseline, ``(meets the objective, reward)`` of the new
   version is strictly greater than that of the champion *credited with the noise*: the champion's
   latency taken lower by the combined spread ``s = spread(new) + spread(champion)`` (never below
   1e-9 ms). Whether each meets the objective is judged on its measured values.

So when both meet an accuracy floor (the reward is the log speedup), the new version must be
faster by more than ``s``: ``new_latency < champion_latency - s``. Within a latency budget both
meet, the reward is the accuracy and the champion's credited latency stays within the budget, so
accuracy decides exactly as before; when both miss the budget, the new one must overrun it by
less than the champion's overrun minus the noise. In the weighted trade-off the latency term is
credited the same way. Accuracy and memory are not credited: accuracy is counted on the same
fixed test split and memory is computed from the graph, neither is timed, so their differences
keep their plain meaning (no tolerance). A version registered before spreads were recorded has no
``latency_spread_ms`` tag and counts as spread 0, which is the rule without the noise.

``modeltailor registry revalidate`` applies the same comparison to latencies and spreads it
measures again, side by side, on one device profile (``experiments/tracking/revalidate.py``).

Torch-free: the HTTP API imports the registry, which imports this module.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from modeltailor.env.reward import AccuracyFloorReward, BudgetReward, Resources, TradeoffReward

SPREAD_TAG = "latency_spread_ms"
MIN_LATENCY_MS = 1e-9
"""The champion's credited latency never goes below this (a log reward needs a positive latency)."""


def latency_spread_ms(median_ms: float, p90_ms: float) -> float:
    """A measurement's spread (ms): how far its slow tail (p90) lies above its median, never below 0."""
    return max(0.0, float(p90_ms) - float(median_ms))


def spread_of(tags: dict[str, str]) -> float:
    """The spread a version recorded (ms); 0 for versions registered before it was recorded."""
    try:
        return max(0.0, float(tags.get(SPREAD_TAG) or 0.0))
    except ValueError:
        return 0.0


def objective_reward(settings: dict[str, Any]) -> Any:
    """The reward a summary's objective check describes (BudgetReward, AccuracyFloorReward, ...)."""
    kind = settings.get("reward")
    if kind == "BudgetReward":
        return BudgetReward(settings.get("max_latency_ms"), settings.get("max_memory_bytes"),
                            settings.get("penalty") or 2.0)
    if kind == "AccuracyFloorReward":
        return AccuracyFloorReward(settings.get("min_accuracy") or 0.0, settings.get("minimize") or "latency",
                                   settings.get("penalty") or 20.0)
    return TradeoffReward(settings.get("accuracy_weight") or 1.0, settings.get("latency_weight") or 0.1,
                          settings.get("memory_weight") or 0.02)


def ranking(settings: dict[str, Any], candidate: Resources, baseline: Resources) -> tuple[bool, float]:
    """(meets the objective, its reward): higher is better under that objective."""
    reward = objective_reward(settings)
    return reward.feasible(candidate), float(reward(candidate, baseline))


def outranks(settings: dict[str, Any], new: Resources, champion: Resources, baseline: Resources,
             noise_ms: float = 0.0) -> bool:
    """Whether `new` ranks above `champion` by more than `noise_ms` of latency (rule 2 above)."""
    reward = objective_reward(settings)
    credited = replace(champion, latency_ms=max(champion.latency_ms - max(noise_ms, 0.0), MIN_LATENCY_MS))
    return ((reward.feasible(new), float(reward(new, baseline)))
            > (reward.feasible(champion), float(reward(credited, baseline))))


def resources(tags: dict[str, str], prefix: str = "") -> Resources:
    """A version's accuracy, latency and memory (prefix 'baseline_': its deployment's baseline)."""
    return Resources(float(tags[f"{prefix}accuracy"]), float(tags[f"{prefix}latency_ms"]),
                     float(tags[f"{prefix}memory_bytes"]))


def beats(new_tags: dict[str, str], old_tags: dict[str, str]) -> bool:
    """Whether the new version takes the alias from the old one (the rule in the module docstring)."""
    if new_tags.get("profile") != old_tags.get("profile"):
        return True
    settings = json.loads(new_tags["objective_settings"])
    noise = spread_of(new_tags) + spread_of(old_tags)
    return outranks(settings, resources(new_tags), resources(old_tags), resources(new_tags, "baseline_"), noise)
