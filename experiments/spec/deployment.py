"""Deployment configs: YAML (plus CLI overrides) -> validated pydantic objects, at one boundary.

Field descriptions double as documentation; `modeltailor config-schema` prints them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from modeltailor.common.validation import Strict, read_yaml, validation_line
from modeltailor.errors import ConfigError

log = logging.getLogger(__name__)


RENAMED_KEYS: dict[str, str] = {"agent": "searcher", "registry": "profiles"}
"""Keys that were renamed (old -> new); old YAML files keep working, with a warning."""


def _renamed(section: str, data: Any) -> Any:
    """``data`` with renamed keys moved to their new names (the new name wins if both are set)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old in data and section in _RENAMED_IN.get(old, ()):
            value = data.pop(old)
            log.warning("config key '%s.%s' is now '%s.%s'", section, old, section, new)
            data.setdefault(new, value)
    return data


_RENAMED_IN = {"agent": ("search",), "registry": ("device",)}


class ModelConfig(Strict):
    name: str | None = Field("resnet20", description="built-in zoo model: resnet20, resnet56, vgg, mobilenetv2, shufflenet")
    factory: str | None = Field(None, description="bring your own: 'package.module:factory' (overrides name)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory or zoo model")
    weights: Path | None = Field(None, description="state-dict file (torch.save); zoo models default to a cached teacher")


class DataConfig(Strict):
    name: str = Field("digits", description="digits (embedded), cifar10, cifar100, imagefolder")
    root: Path | None = Field(None, description="local folder for cifar10/cifar100/imagefolder")
    input_size: int = Field(32, ge=4, le=512, description="images are resized to input_size x input_size")
    seed: int = Field(0, description="seed of the train/val/test split")


class DeviceConfig(Strict):
    name: str = Field("cpu-1t", description="a device profile from `modeltailor devices list` (cpu-1t, cpu-2t, a device server, a latency table)")
    profiles: Path | None = Field(None, description="extra device profiles YAML (merged over the built-in and user ones)")
    runs: int = Field(200, ge=5, description="timed runs per latency measurement (after warm-up)")
    warmup: int = Field(20, ge=0, description="untimed warm-up runs")
    cache: bool = Field(
        True,
        description="reuse latencies this host measured in earlier runs with the same device settings, up to "
        "$MODELTAILOR_CACHE_MAX_AGE_DAYS (default 7) days old; false (`--no-cache`) measures every new architecture "
        "(repeats within the search are still reused)",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return _renamed("device", data)


class TradeoffWeights(Strict):
    accuracy: float = 1.0
    latency: float = 0.1
    memory: float = 0.02


class ObjectiveConfig(Strict):
    kind: Literal["budget", "tradeoff", "accuracy"] = Field(
        "budget",
        description="budget: most accurate model within the budgets (reward = accuracy); "
        "tradeoff: weighted sum of accuracy and log latency/memory ratios; "
        "accuracy: fastest (or smallest) model within an accuracy floor",
    )
    max_latency_ratio: float | None = Field(
        None, gt=0, le=1, description="latency budget as a fraction of the baseline's (budget kind: 0.45 if no budget is set)"
    )
    max_latency_ms: float | None = Field(None, gt=0, description="absolute latency budget (ms); overrides the ratio")
    max_memory_ratio: float | None = Field(None, gt=0, le=1, description="memory budget as a fraction of the baseline's")
    max_memory_bytes: int | None = Field(None, gt=0, description="absolute memory budget (bytes)")
    weights: TradeoffWeights = Field(default_factory=TradeoffWeights)
    min_accuracy: float | None = Field(None, gt=0, le=1, description="accuracy kind: absolute floor (fraction)")
    max_accuracy_drop: float = Field(1.0, ge=0, description="accuracy kind: floor = baseline minus this many points")
    minimize: Literal["latency", "memory"] = Field("latency", description="accuracy kind: what to minimize")
    search_slack: float = Field(
        3.0, ge=0, le=100,
        description="accuracy kind: points the floor is relaxed by during the search (its short recovery "
        "underestimates final accuracy) while no correction is learned; finalists are held to the real floor "
        "after the long distillation",
    )
    tighten_step: float = Field(
        0.0, ge=0, lt=1,
        description="accuracy kind: above 0, a latency (memory, with minimize: memory) budget the limiter enforces, "
        "this fraction below the fastest (smallest) model judged within the floor so far; it halves after 3 misses "
        "of the floor in a row (0: no limit, every action as the agent asks)",
    )
    floor_correction: Literal["learned", "slack"] = Field(
        "learned",
        description="accuracy kind: learned = judge each episode by the accuracy its long recovery is predicted to "
        "reach, learned from the finalists of earlier searches of this model, data and recovery (at least 3; "
        "until then search_slack); slack = always relax the floor by search_slack",
    )


SearchMethod = Literal["prune", "lowrank", "int8"]


def _default_methods() -> list[SearchMethod]:
    return ["prune"]


class PPOConfig(Strict):
    """PPO's settings (stable-baselines3): episodes are short and their last step is the expensive one."""

    episodes_per_rollout: int = Field(2, ge=1, le=64, description="episodes per PPO update (n_steps = units x this)")
    n_epochs: int = Field(10, ge=1, le=100, description="passes over each rollout")
    learning_rate: float = Field(1e-3, gt=0, le=1)
    gamma: float = Field(1.0, ge=0, le=1, description="discount: 1, the episode's reward counts for every step")
    gae_lambda: float = Field(0.95, ge=0, le=1)
    ent_coef: float = Field(0.0, ge=0, le=1, description="entropy bonus")
    clip_range: float = Field(0.2, gt=0, le=1)
    log_std_init: float = Field(-0.7, ge=-5, le=2, description="initial log std of the action noise")
    hidden: int = Field(64, ge=4, le=1024, description="width of the two hidden layers (policy and value)")
    warm_noise: Literal["keep", "reset"] = Field(
        "keep", description="with search.warm_start: keep the checkpoint's learned action noise, or reset it to log_std_init"
    )
    minibatch_episodes: int = Field(
        1, ge=1, le=1024, description="ppo-real: episodes per gradient step (the surrogate's PPO uses 4 of its 16)"
    )


class SurrogateConfig(Strict):
    """The surrogate-assisted searchers (ppo, evolution-surrogate): the agent learns on predictors
    fitted on the experience, and real episodes verify its best proposals."""

    seed_episodes: int = Field(
        8, ge=0, le=1000,
        description="real episodes the surrogate needs before it is trusted: with less experience of this model, "
        "data and recovery, a space-filling set of seed episodes makes up the shortfall (out of search.episodes)",
    )
    pretrain_episodes: int = Field(600, ge=0, le=1_000_000, description="surrogate episodes before the first real proposal")
    warm_pretrain_episodes: int = Field(
        150, ge=0, le=1_000_000,
        description="the same for an agent warm-started from an earlier deployment's (it learned there already)",
    )
    round_episodes: int = Field(60, ge=1, le=100_000, description="surrogate episodes between two real episodes")
    warm_margin: float | None = Field(
        None, ge=0, le=10,
        description="a warm-started agent falls back to a cold one only when the space-filling design's first "
        "real episodes beat its own by more than this reward; default: one binomial standard error of an "
        "episode's accuracy on the images episodes are scored on (1.7 points at 96% on 136 images)",
    )
    design_candidates: int = Field(
        30, ge=0, le=100_000,
        description="fresh space-filling designs played on the surrogate each round and ranked with the agent's models "
        "(0: the agent's alone)",
    )
    allocation_candidates: int = Field(
        12, ge=0, le=1000,
        description="ppo: greedy search's allocations computed from the surrogate's predicted per-unit sensitivities, "
        "ranked with the agent's models each round (0: none)",
    )
    rollout_episodes: int = Field(
        16, ge=1, le=1024, description="ppo: episodes per PPO update on the surrogate (search.ppo.episodes_per_rollout is ppo-real's)"
    )


SEARCHER_NAMES = ("ppo", "ppo-real", "evolution-surrogate", "random", "uniform", "greedy", "evolution", "ddpg")
WARM_STARTABLE = ("ppo", "ppo-real")


class SearchConfig(Strict):
    searcher: Literal["ppo", "ppo-real", "evolution-surrogate", "random", "uniform", "greedy", "evolution", "ddpg"] = Field(
        "ppo",
        description="ppo (the default: PPO learns on a surrogate fitted on every real episode of this model and data, "
        "real episodes verify its best proposals), evolution-surrogate (aging evolution on the same surrogate, "
        "Once-for-All's recipe), ppo-real (PPO learning from real episodes only), ddpg (AMC's agent, real "
        "episodes), or a baseline on real episodes: random, uniform, greedy (each unit's sensitivity alone, then "
        "tolerance-based allocations; prune/skip only), evolution (regularized aging evolution)",
    )
    episodes: int = Field(48, ge=1, description="episodes (policies evaluated) in the search")
    seed: int = 0
    min_keep: float = Field(0.2, gt=0, le=1, description="smallest fraction of a unit's channels kept")
    max_keep: float = Field(1.0, gt=0, le=1)
    round_to: int = Field(4, ge=1, description="kept channel counts are multiples of this")
    methods: list[SearchMethod] = Field(
        default_factory=_default_methods,
        description="per-unit methods the agent may choose: prune (channels), lowrank (SVD/Tucker-2 "
        "factorization of the unit's root layer), int8 (ONNX Runtime static quantization)",
    )
    int8_scope: Literal["model", "unit"] = Field(
        "model",
        description="with int8 in methods: model = every candidate runs wholly in int8 (adds and pooling "
        "too) and the agent searches its structure under int8 latency; unit = the agent picks int8 per "
        "unit (partial int8 runs as islands with layout changes between them: measured slower here)",
    )
    skip_blocks: bool = Field(
        True, description="let the agent remove whole residual blocks with an identity shortcut (zoo models)"
    )
    skip_projection: bool = Field(
        False,
        description="with skip_blocks, also blocks whose shortcut is a projection (a strided 1x1 conv at a stage's "
        "start): such a block becomes that 1x1 path, so a stage can shrink to nothing but it (zoo models)",
    )
    downsample: Literal[1, 2] = Field(
        1,
        description="2: every candidate runs its first convolution at twice its stride, so every later layer works "
        "on feature maps half as high and wide (about a quarter of the work) while the model still takes the "
        "same input; the search compresses that model, distilled from the full-resolution teacher",
    )
    calibration_policies: int = Field(
        24, ge=0,
        description="under a latency budget, random policies compressed and measured (no recovery) before the "
        "search to fit the limiter's latency model (about 0.3 s each on ResNet-20); fewer start sooner and "
        "predict less well (0: the baseline and the most compressed model only)",
    )
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO's settings (searcher: ppo)")
    surrogate: SurrogateConfig = Field(
        default_factory=SurrogateConfig, description="the surrogate-assisted searchers' settings (ppo, evolution-surrogate)"
    )
    experience: str = Field(
        "auto",
        description="where real episodes of this model and data are kept for later searches: auto (a file in "
        "modeltailor's cache folder), a folder (e.g. shared storage for a campaign on a cluster), or off",
    )
    warm_start: str | None = Field(
        "auto",
        description="searcher ppo or ppo-real (ignored by the others when auto): null for a cold start, or start from another search's agent: its --out folder or agent checkpoint "
        "file, its MLflow run id, or auto (the most similar finished deployment of the same model and data)",
    )
    lowrank_scheme: Literal["auto", "spatial", "tucker2", "cp"] = Field(
        "auto",
        description="how lowrank factorizes a k x k conv: auto (spatial SVD or Tucker-2, whichever has fewer "
        "parameters), spatial, tucker2, or cp (CP decomposition: 1x1, two depthwise, 1x1; TensorLy's CP-ALS, "
        "slower to build); Linear and 1x1 layers always use SVD",
    )
    importance: Literal["l1", "l2", "fpgm", "lamp", "activation", "taylor"] = Field(
        "l2",
        description="channel ranking: l1/l2 weight magnitude, fpgm, lamp, activation (DropNet: mean "
        "post-activation on training data) or taylor (|w * dL/dw| on training data)",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return _renamed("search", data)

    @model_validator(mode="after")
    def _range(self) -> SearchConfig:
        if self.min_keep >= self.max_keep:
            raise ValueError(f"min_keep ({self.min_keep}) must be below max_keep ({self.max_keep})")
        if self.warm_start not in (None, "auto") and self.searcher not in WARM_STARTABLE:
            raise ValueError(f"warm_start needs searcher: ppo or ppo-real (this search uses {self.searcher}); drop warm_start")
        if not self.experience.strip():
            raise ValueError("experience is empty: give auto, off or a folder")
        if self.skip_projection and not self.skip_blocks:
            raise ValueError("skip_projection needs skip_blocks: true (it lets skipping reach projection blocks too)")
        if self.warm_start is not None and not self.warm_start.strip():
            raise ValueError("warm_start is empty: give a folder, a checkpoint file, an MLflow run id, or auto")
        return self


class RecoveryConfig(Strict):
    episode_steps: int = Field(40, ge=0, description="distillation steps inside each episode")
    final_steps: int = Field(800, ge=0, description="distillation steps for each finalist")
    finalists: int = Field(3, ge=1, description="best distinct policies given the long distillation")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.02, gt=0)
    final_lr: float = Field(0.02, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term vs cross-entropy")
    val_samples: int | None = Field(
        None, ge=10,
        description="validation images the search scores every policy on (baseline, episodes, finalists): "
        "a fixed random sample of the val split; default all. Test accuracy always uses the whole test split",
    )


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1, description="teacher training epochs (when no weights are given)")
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0


class ComputeConfig(Strict):
    """Where torch trains and distils; latency is still measured on the device profile."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device for teacher training and distillation: auto (CUDA when there is a GPU), cpu, cuda"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32, or bf16 autocast for training and distillation (~1.7x faster on CPUs with AVX-512 BF16)"
    )


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<cwd>/mlflow.db")
    experiment: str = "modeltailor"


class DeploymentConfig(Strict):
    name: str = "default"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    classes: list[int | str] | None = Field(
        None, description="class ids or names the deployment needs (default: all); the head is narrowed to them"
    )
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> DeploymentConfig:
    """Read `path` (YAML), apply dotted `overrides` ({"search.episodes": 8}), validate."""
    data = read_deployment_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        where = f"config file '{path}'" if path else "config"
        raise ConfigError(validation_line(exc, where, unknown_hint=UNKNOWN_KEY_HINT)) from None


UNKNOWN_KEY_HINT = " (`modeltailor config-schema` lists the deployment keys)"


def read_deployment_yaml(path: Path) -> dict[str, Any]:
    """The mapping a deployment YAML holds; one-line ConfigErrors naming the file otherwise."""
    return read_yaml(path, f"config file '{path}'", missing="pass a deployment YAML (see examples/)")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b] = value`` for "a.b"; a ConfigError when the file sets ``a`` to a plain value."""
    *parents, leaf = dotted.split(".")
    node = data
    for depth, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(f"config key '{where}' must be a mapping of settings to override '{dotted}', not {node!r}")
    node[leaf] = value


# -- what --resume must find unchanged ----------------------------------------------------------

RESUME_KEYS = ("model", "data", "classes", "device", "objective", "search", "recovery", "train", "compute.precision")
"""The settings an episode's numbers depend on: a --resume that changes one would mix episodes
measured two ways, so it is refused. model, data, classes: what is compressed and scored; device
and search: how each policy is drawn, built and timed; objective: its reward and feasibility;
recovery: the short distillation that sets every episode's accuracy; train: the teacher's recipe (a
new recipe trains another teacher, distilled from and compared with); compute.precision: bf16
autocast changes the distillation's numerics. Free to change (RESUME_FREE and the rest):
compute.device (where torch runs, e.g. resuming a GPU search on a CPU), tracking, the name."""

RESUME_FREE = ("device.cache", "search.experience", "recovery.final_steps", "recovery.final_lr", "recovery.finalists")
"""Inside RESUME_KEYS, settings that do not change an episode: whether the latency cache is read
(its entries are keyed on everything that changes a timing) and the finalization, which runs
after the last episode on all of them."""


def resume_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The RESUME_KEYS of a dumped config (``model_dump(mode="json")``), RESUME_FREE left out:
    what `deployment.json` keeps beside a search's episodes."""
    kept: dict[str, Any] = {}
    for dotted in RESUME_KEYS:
        section, _, leaf = dotted.partition(".")
        if section not in config:
            continue
        if leaf:
            if isinstance(config[section], dict) and leaf in config[section]:
                kept.setdefault(section, {})[leaf] = config[section][leaf]
        else:
            kept[section] = config[section]
    for dotted in RESUME_FREE:
        section, _, leaf = dotted.partition(".")
        if isinstance(kept.get(section), dict):
            kept[section] = {k: v for k, v in kept[section].items() if k != leaf}
    return kept


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in _leaves(value, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: data}


def _shown(leaves: dict[str, Any], key: str) -> str:
    return json.dumps(leaves[key]) if key in leaves else "unset"


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every setting of `resume_settings` that differs, sorted by key.
    Sections `before` does not record (a `deployment.json` written before they were checked) are
    left out: `unrecorded_settings` names them, and the search resumes with a warning."""
    old, new = _leaves(resume_settings(before)), _leaves(resume_settings(now))
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, ...) == new.get(key, ...) or key.split(".")[0] not in before:
            continue
        changes.append(f"{key}: {_shown(old, key)} -> {_shown(new, key)}")
    return changes


def unrecorded_settings(before: dict[str, Any]) -> list[str]:
    """The RESUME_KEYS sections a `deployment.json` from an older modeltailor does not record."""
    return sorted({key.split(".")[0] for key in RESUME_KEYS} - set(before))


def resume_refusal(where: str, changes: list[str], shown: int = 3) -> str:
    """The one-line reason a --resume is refused: the changed settings named, and what to do."""
    named = "; ".join(changes[:shown]) + (f"; and {len(changes) - shown} more" if len(changes) > shown else "")
    return (
        f"--resume: {where} holds episodes of a different deployment ({named}): restore the setting(s), or "
        "rerun without --resume into a new --out"
    )
