"""Low-rank factorization: replace a layer with a short chain of smaller layers.

Each chosen layer becomes an `nn.Sequential` of plain Conv2d / Linear factors, so the result is
physically smaller and exports to ONNX as ordinary Conv / Gemm nodes:

- `svd`      Linear (or 1x1 conv): truncated SVD, W ~ (U_r sqrt S_r)(sqrt S_r V_r^T), two layers.
- `spatial`  k x k conv: Jaderberg et al. (2014) scheme 2, a (k, 1) conv into r channels then a
             (1, k) conv, from the SVD of the weight reshaped to (cin * k, cout * k).
- `tucker2`  k x k conv: 1x1 (cin -> r_in), k x k core (r_in -> r_out), 1x1 (r_out -> cout), from
             the HOSVD of the weight along its output and input channel modes.
- `cp`       k x k conv: 1x1 (cin -> r), depthwise (k, 1), depthwise (1, k), 1x1 (r -> cout), from
             the rank-r CP decomposition of the kernel (Lebedev et al. 2015; CP-ALS from TensorLy).
             Chosen only by name: `auto` picks between `spatial` and `tucker2`.

A rank is a ratio of the layer's largest useful rank, rounded to a multiple of `round_to` and capped
so the factors have fewer parameters than the layer; a layer no allowed rank makes smaller, and
a depthwise / grouped / dilated conv, is left unchanged (its `LayerPlan` says why).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TypeGuard, cast

import torch
from torch import nn

from modeltailor.compressors.policy import Policy
from modeltailor.compressors.units import Layer, conv_pair
from modeltailor.errors import CompressionError

log = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("auto", "spatial", "tucker2", "cp")
"""Compressor schemes for k x k convs; Linear and 1x1 conv layers always use `svd`."""

CP_ITERATIONS = 60
"""CP-ALS sweeps at most (it stops earlier once the fit no longer improves by 1e-7): about 0.1 s
each for a 64x64 3x3 conv at rank 136; recovery training does the rest."""

Rank = int | tuple[int, int]


@dataclass(frozen=True)
class LayerPlan:
    """What happens to one layer: `scheme` and `rank`, or `scheme=None` and the `reason`."""

    name: str
    scheme: str | None
    rank: tuple[int, ...]
    params_before: int
    params_after: int
    reason: str = ""


# ------------------------------------------------------------------------------- factorizations


def _svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, r) and (r, n) factors of the rank-`rank` truncated SVD, sqrt(S) split to both sides."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _check_rank(rank: int, full: int, what: str) -> None:
    if not 1 <= rank <= full:
        raise CompressionError(f"{what} rank {rank} is outside [1, {full}] for this layer")


def _set(module: nn.Module, weight: torch.Tensor, like: torch.Tensor) -> None:
    module.weight.data = weight.to(dtype=like.dtype, device=like.device).contiguous()


def _copy_bias(target: Layer, source: Layer) -> None:
    if source.bias is not None:
        assert target.bias is not None, "a factor taking over a bias is built with one"
        target.bias.data = source.bias.detach().clone()


def _int_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The padding of a conv that `_require_conv` accepted (zero padding given as integers)."""
    if isinstance(conv.padding, str):
        raise CompressionError(
            f"cannot factorize {_describe(conv)}: only zero padding given as integers is supported"
        )
    return conv_pair(conv.padding)


def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Linear(in, r, bias=False) -> Linear(r, out): the rank-`rank` truncated SVD of `layer`."""
    if not isinstance(layer, nn.Linear):
        raise CompressionError(f"svd_linear needs a Linear layer, got {_describe(layer)}")
    _check_rank(rank, min(layer.in_features, layer.out_features), "svd")
    left, right = _svd_factors(layer.weight, rank)
    first = nn.Linear(layer.in_features, rank, bias=False, device=layer.weight.device)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, device=layer.weight.device)
    _set(first, right, layer.weight)
    _set(second, left, layer.weight)
    _copy_bias(second, layer)
    return nn.Sequential(first, second).train(layer.training)


def svd_conv1x1(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """A 1x1 conv as two 1x1 convs (cin -> r with its stride and padding, r -> cout), like Linear."""
    _require_conv(conv, pointwise=True)
    cout, cin = conv.out_channels, conv.in_channels
    _check_rank(rank, min(cin, cout), "svd")
    left, right = _svd_factors(conv.weight.reshape(cout, cin), rank)
    dev = conv.weight.device
    first = nn.Conv2d(cin, rank, 1, conv_pair(conv.stride), _int_padding(conv), bias=False, device=dev)
    second = nn.Conv2d(rank, cout, 1, bias=conv.bias is not None, device=dev)
    _set(first, right.reshape(rank, cin, 1, 1), conv.weight)
    _set(second, left.reshape(cout, rank, 1, 1), conv.weight)
    _copy_bias(second, conv)
    return nn.Sequential(first, second).train(conv.training)


def spatial_svd(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """(kh, 1) conv cin -> r then (1, kw) conv r -> cout (Jaderberg scheme 2); same output shape."""
    _require_conv(conv)
    cout, cin, kh, kw = conv.weight.shape
    (sh, sw), (ph, pw) = conv_pair(conv.stride), _int_padding(conv)
    _check_rank(rank, min(cin * kh, cout * kw), "spatial")
    # M[(c, i), (o, j)] = W[o, c, i, j]  ~  A[(c, i), r] B[r, (o, j)]
    matrix = conv.weight.permute(1, 2, 0, 3).reshape(cin * kh, cout * kw)
    a, b = _svd_factors(matrix, rank)
    dev = conv.weight.device
    vertical = nn.Conv2d(cin, rank, (kh, 1), (sh, 1), (ph, 0), bias=False, device=dev)
    horizontal = nn.Conv2d(
        rank, cout, (1, kw), (1, sw), (0, pw), bias=conv.bias is not None, device=dev
    )
    _set(vertical, a.T.reshape(rank, cin, kh, 1), conv.weight)
    _set(horizontal, b.reshape(rank, cout, kw).permute(1, 0, 2).reshape(cout, rank, 1, kw), conv.weight)
    _copy_bias(horizontal, conv)
    return nn.Sequential(vertical, horizontal).train(conv.training)


def _mode_basis(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` leading left singular vectors of a mode unfolding, (rows, rank), float64."""
    u, _, _ = torch.linalg.svd(unfolded.detach().double(), full_matrices=False)
    return u[:, :rank]


def tucker2(conv: nn.Conv2d, rank_in: int, rank_out: int) -> nn.Sequential:
    """1x1 cin -> r_in, k x k core r_in -> r_out (stride, padding), 1x1 r_out -> cout (HOSVD)."""
    _require_conv(conv)
    cout, cin, kh, kw = conv.weight.shape
    full_in, full_out = tucker_full_ranks(conv)
    _check_rank(rank_in, full_in, "tucker2 input")
    _check_rank(rank_out, full_out, "tucker2 output")
    weight = conv.weight.detach().double()
    u_out = _mode_basis(weight.reshape(cout, -1), rank_out)
    u_in = _mode_basis(weight.transpose(0, 1).reshape(cin, -1), rank_in)
    core = torch.einsum("ocij,oa,cb->abij", weight, u_out, u_in)
    dev = conv.weight.device
    first = nn.Conv2d(cin, rank_in, 1, bias=False, device=dev)
    middle = nn.Conv2d(
        rank_in, rank_out, (kh, kw), conv_pair(conv.stride), _int_padding(conv), bias=False, device=dev
    )
    last = nn.Conv2d(rank_out, cout, 1, bias=conv.bias is not None, device=dev)
    _set(first, u_in.T.reshape(rank_in, cin, 1, 1), conv.weight)
    _set(middle, core, conv.weight)
    _set(last, u_out.reshape(cout, rank_out, 1, 1), conv.weight)
    _copy_bias(last, conv)
    return nn.Sequential(first, middle, last).train(conv.training)


def cp_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """1x1 cin -> r, depthwise (kh, 1) and (1, kw) convs (the stride and padding split between
    them), 1x1 r -> cout: the rank-`rank` CP decomposition of the kernel (TensorLy's CP-ALS,
    SVD-initialized, so the same layer always gives the same factors)."""
    _require_conv(conv)
    cout, cin, kh, kw = conv.weight.shape
    (sh, sw), (ph, pw) = conv_pair(conv.stride), _int_padding(conv)
    _check_rank(rank, full_rank(conv, "cp"), "cp")
    from tensorly.decomposition import parafac  # only here: the cp scheme is opt-in

    kernel = conv.weight.detach().double().cpu().numpy()
    with warnings.catch_warnings():  # a rank above a mode's size: TensorLy pads its SVD start, and says so
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        weights, (a, b, c, d) = parafac(kernel, rank, n_iter_max=CP_ITERATIONS, init="svd", tol=1e-7, random_state=0)
    # W[o, i, h, w] ~ sum_r weights[r] a[o, r] b[i, r] c[h, r] d[w, r]
    a, b, c, d = (torch.from_numpy(f.copy()) for f in (a * weights, b, c, d))
    dev = conv.weight.device
    first = nn.Conv2d(cin, rank, 1, bias=False, device=dev)
    vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), groups=rank, bias=False, device=dev)
    horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), groups=rank, bias=False, device=dev)
    last = nn.Conv2d(rank, cout, 1, bias=conv.bias is not None, device=dev)
    _set(first, b.T.reshape(rank, cin, 1, 1), conv.weight)
    _set(vertical, c.T.reshape(rank, 1, kh, 1), conv.weight)
    _set(horizontal, d.T.reshape(rank, 1, 1, kw), conv.weight)
    _set(last, a.reshape(cout, rank, 1, 1), conv.weight)
    _copy_bias(last, conv)
    return nn.Sequential(first, vertical, horizontal, last).train(conv.training)


def factorize(layer: Layer, scheme: str, rank: int | tuple[int, ...]) -> nn.Sequential:
    """The factor chain of `layer` for a concrete `scheme` (svd / spatial / tucker2) and rank."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if scheme == "svd" and isinstance(layer, nn.Linear):
        return svd_linear(layer, *ranks)
    if scheme == "svd" and _is_pointwise(layer):
        return svd_conv1x1(layer, *ranks)
    if scheme == "spatial" and isinstance(layer, nn.Conv2d):
        return spatial_svd(layer, *ranks)
    if scheme == "tucker2" and isinstance(layer, nn.Conv2d) and len(ranks) == 2:
        return tucker2(layer, *ranks)
    if scheme == "cp" and isinstance(layer, nn.Conv2d):
        return cp_conv(layer, *ranks)
    raise CompressionError(f"scheme '{scheme}' with rank {rank} does not apply to {_describe(layer)}")


# ------------------------------------------------------------------------------- ranks and sizes


def not_decomposable_reason(layer: nn.Module) -> str | None:
    """Why `layer` cannot be factorized (None if it can): only plain Linear / Conv2d layers can."""
    if isinstance(layer, nn.Linear):
        return None
    if not isinstance(layer, nn.Conv2d):
        return f"{type(layer).__name__} is not a Conv2d or Linear layer"
    if layer.groups > 1:
        kind = "depthwise" if layer.groups == layer.in_channels == layer.out_channels else "grouped"
        return f"{kind} conv (groups={layer.groups}) is not decomposable"
    if tuple(layer.dilation) != (1, 1):
        return f"dilated conv (dilation={tuple(layer.dilation)}) is not supported"
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return "only zero padding given as integers is supported"
    return None


def _require_conv(layer: nn.Module, pointwise: bool = False) -> None:
    """CompressionError unless `layer` is a decomposable Conv2d (1x1 if `pointwise`)."""
    reason = not_decomposable_reason(layer)
    if reason is None and not isinstance(layer, nn.Conv2d):
        reason = "not a Conv2d layer"
    if reason is None and pointwise and not _is_pointwise(layer):
        reason = "not a 1x1 conv"
    if reason:
        raise CompressionError(f"cannot factorize {_describe(layer)}: {reason}")


def _is_pointwise(layer: nn.Module) -> TypeGuard[nn.Conv2d]:
    return isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1)


def _describe(layer: nn.Module) -> str:
    return f"{type(layer).__name__}{tuple(getattr(layer, 'weight', torch.empty(0)).shape)}"


def tucker_full_ranks(conv: nn.Conv2d) -> tuple[int, int]:
    """Largest useful (rank_in, rank_out) of a conv's HOSVD: its mode unfoldings' ranks."""
    cout, cin, kh, kw = conv.weight.shape
    return min(cin, cout * kh * kw), min(cout, cin * kh * kw)


def full_rank(layer: Layer, scheme: str) -> int:
    """Largest useful rank of `layer` under `svd` or `spatial` (the reshaped weight's rank), or
    `cp` (a CP rank has no such bound: the largest whose factors are still smaller than the layer)."""
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    cout, cin, kh, kw = layer.weight.shape
    if scheme == "spatial":
        return min(cin * kh, cout * kw)
    if scheme == "cp":
        return max(1, (layer.weight.numel() - 1) // _per_rank(layer, "cp"))
    return min(cin, cout)


def _per_rank(layer: Layer, scheme: str) -> int:
    """Weights one unit of `svd` / `spatial` / `cp` rank costs."""
    if isinstance(layer, nn.Linear):
        return layer.in_features + layer.out_features
    cout, cin, kh, kw = layer.weight.shape
    if scheme == "cp":
        return cin + kh + kw + cout
    return cin * kh + cout * kw if scheme == "spatial" else cin + cout


def factorized_params(layer: Layer, scheme: str, rank: Rank) -> int:
    """Parameters of the factor chain (bias included), computed without building it."""
    bias = 0 if layer.bias is None else layer.bias.numel()
    if scheme == "tucker2":
        r_in, r_out = rank if isinstance(rank, tuple) else (rank, rank)
        cout, cin, kh, kw = layer.weight.shape
        return cin * r_in + r_in * r_out * kh * kw + r_out * cout + bias
    if isinstance(rank, tuple):
        raise TypeError(f"scheme '{scheme}' takes one rank, got {rank}")
    return int(rank) * _per_rank(layer, scheme) + bias


def layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def default_scheme(layer: Layer, rank: Rank) -> str:
    """`svd` for Linear / 1x1 conv; for a k x k conv `tucker2` with two ranks, else `spatial`."""
    if isinstance(layer, nn.Linear) or _is_pointwise(layer):
        return "svd"
    return "tucker2" if isinstance(rank, tuple) else "spatial"


def worth_factorizing(layer: nn.Module, rank: Rank, scheme: str | None = None) -> bool:
    """True if `layer` can be factorized at `rank` into FEWER parameters than it has."""
    if not_decomposable_reason(layer) is not None:
        return False
    decomposable = cast(Layer, layer)  # no reason not to: a plain Conv2d or Linear
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if min(ranks) < 1:
        return False
    scheme = scheme or default_scheme(decomposable, rank)
    return factorized_params(decomposable, scheme, rank) < layer_params(layer)


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise CompressionError(f"rank ratio {ratio!r} is outside (0, 1]: give the fraction of the full rank kept")


def rank_for(full: int, ratio: float, round_to: int, cap: int | None = None) -> int:
    """`ratio` of `full` rounded to a multiple of `round_to` (at least one, at most `full`).

    With `cap` (the largest rank still worth it), the rank is lowered to a multiple at or below
    `cap`; 0 means no allowed rank is worth it.
    """
    _check_ratio(ratio)
    step = max(1, round_to)
    rank = min(full, max(step, int(round(full * ratio / step)) * step))
    if cap is not None and rank > cap:
        rank = (cap // step) * step
    return max(0, rank)


def _svd_plan(layer: Layer, scheme: str, ratio: float, step: int) -> tuple[int, ...] | None:
    """The `svd` / `spatial` / `cp` rank at `ratio`, capped below the layer's size; None if none is."""
    weights = layer.weight.numel()
    cap = (weights - 1) // _per_rank(layer, scheme)
    rank = rank_for(full_rank(layer, scheme), ratio, step, cap)
    return (rank,) if rank >= 1 and worth_factorizing(layer, rank, scheme) else None


def _tucker_plan(conv: nn.Conv2d, ratio: float, step: int) -> tuple[int, ...] | None:
    """(rank_in, rank_out) at `ratio`, the relatively larger lowered until the chain is smaller."""
    fulls = tucker_full_ranks(conv)
    ranks = [rank_for(f, ratio, step) for f in fulls]
    floor = [min(step, f) for f in fulls]
    while not worth_factorizing(conv, (ranks[0], ranks[1]), "tucker2"):
        movable = [i for i in (0, 1) if ranks[i] > floor[i]]
        if not movable:
            return None
        i = max(movable, key=lambda k: ranks[k] / fulls[k])
        ranks[i] = max(floor[i], ((ranks[i] - 1) // step) * step)
    return ranks[0], ranks[1]


def plan_layer(
    name: str, layer: nn.Module, ratio: float, scheme: str = "auto", round_to: int = 4
) -> LayerPlan:
    """How `layer` is factorized at rank ratio `ratio` (or why it is left unchanged)."""
    _check_ratio(ratio)
    before = layer_params(layer)
    reason = not_decomposable_reason(layer)
    if reason:
        return LayerPlan(name, None, (), before, before, reason)
    decomposable = cast(Layer, layer)  # no reason not to: a plain Conv2d or Linear
    step = max(1, round_to)
    options: dict[str, tuple[int, ...] | None]
    if isinstance(decomposable, nn.Linear) or _is_pointwise(decomposable):
        options = {"svd": _svd_plan(decomposable, "svd", ratio, step)}
    else:
        options = {}
        if scheme in ("auto", "spatial"):
            options["spatial"] = _svd_plan(decomposable, "spatial", ratio, step)
        if scheme in ("auto", "tucker2"):
            options["tucker2"] = _tucker_plan(decomposable, ratio, step)
        if scheme == "cp":
            options["cp"] = _svd_plan(decomposable, "cp", ratio, step)
    allowed = {s: r for s, r in options.items() if r}
    sizes = {
        s: factorized_params(decomposable, s, (r[0], r[1]) if len(r) == 2 else r[0])
        for s, r in allowed.items()
    }
    if not sizes:
        why = f"no rank allowed at ratio {ratio} (round_to={step}) has fewer parameters"
        return LayerPlan(name, None, (), before, before, why)
    best = min(sizes, key=sizes.__getitem__)
    return LayerPlan(name, best, allowed[best], before, sizes[best])


def _macs_per_output_pixel(layer: Layer, scheme: str, rank: tuple[int, ...]) -> float:
    """MACs of the factor chain per output pixel; an input pixel counts as stride_h * stride_w."""
    if isinstance(layer, nn.Linear):
        return float(rank[0] * (layer.in_features + layer.out_features))
    cout, cin, kh, kw = layer.weight.shape
    sh, sw = layer.stride
    if scheme == "svd":
        return float(rank[0] * (cin + cout))
    if scheme == "spatial":  # the vertical conv runs at the output height but the input width
        return float(rank[0] * (cin * kh * sw + cout * kw))
    if scheme == "cp":  # the first 1x1 runs at the input resolution, the vertical one at the input width
        return float(rank[0] * (cin * sh * sw + kh * sw + kw + cout))
    r_in, r_out = rank
    return float(r_in * cin * sh * sw + r_in * r_out * kh * kw + r_out * cout)


def factorized_cost(
    layer: nn.Module, ratio: float, scheme: str = "auto", round_to: int = 4
) -> tuple[float, float]:
    """(parameter fraction, MAC fraction) of `layer` once factorized at `ratio`; (1, 1) if unchanged.

    MACs assume the input is stride times the output (exact for 'same'-padded convs), as a cost
    model needs without running the model.
    """
    plan = plan_layer("", layer, ratio, scheme, round_to)
    if plan.scheme is None:
        return 1.0, 1.0
    decomposable = cast(Layer, layer)  # planned, so a plain Conv2d or Linear
    macs = _macs_per_output_pixel(decomposable, plan.scheme, plan.rank) / decomposable.weight.numel()
    return plan.params_after / plan.params_before, macs


# ------------------------------------------------------------------------------------ the model


def _layer(model: nn.Module, name: str) -> Layer:
    """The Conv2d / Linear called `name` in `model` (CompressionError otherwise)."""
    try:
        module = model.get_submodule(name) if name else None
    except AttributeError:
        module = None
    if module is None:
        raise CompressionError(
            f"low-rank: the model has no layer '{name}': name a Conv2d or Linear from lowrank_candidates(model)"
        ) from None
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise CompressionError(
            f"low-rank: layer '{name}' is a {type(module).__name__}, not a Conv2d or Linear layer"
        )
    return module


def _skipped_owner(model: nn.Module, name: str) -> str | None:
    """The block around `name` that block skipping replaced with an Identity, if any."""
    parts = name.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            return None
        if getattr(module, "skipped_block", None):
            return prefix
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lowrank_candidates(
    model: nn.Module,
    ratio: float = 0.5,
    scheme: str = "auto",
    round_to: int = 4,
    exclude: Collection[str] = (),
) -> dict[str, str]:
    """Layer name -> the scheme it would use at `ratio`; layers that cannot be factorized are left out.

    `exclude` (pass the output layer: class-subset narrowing needs it whole) is left out too.
    """
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or name in exclude:
            continue
        plan = plan_layer(name, module, ratio, scheme, round_to)
        if plan.scheme is not None:
            found[name] = plan.scheme
    return found


@dataclass
class LowRankCompressor:
    """Factorizes each `lowrank` unit (a layer name) at its rank ratio (the action's `keep`)."""

    scheme: str = "auto"
    round_to: int = 4
    name: str = "lowrank"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise CompressionError(
                f"unknown low-rank scheme '{self.scheme}': choose one of {', '.join(SCHEMES)}"
            )

    def apply(self, model: nn.Module, policy: Policy, example: torch.Tensor) -> nn.Module:
        """A copy of `model` with every `lowrank` action's layer factorized; other methods ignored."""
        ranks = {a.unit: a.keep for a in policy.actions if a.method == "lowrank"}
        return self.apply_ranks(model, ranks, example)

    def plan(self, model: nn.Module, ranks: Mapping[str, float]) -> dict[str, LayerPlan]:
        """What `apply_ranks` would do to each named layer (CompressionError for a bad name/ratio).

        A layer inside a residual block already removed by skipping is left as it is (gone).
        """
        plans: dict[str, LayerPlan] = {}
        for name, ratio in ranks.items():
            owner = _skipped_owner(model, name)
            if owner is not None:
                _check_ratio(ratio)
                plans[name] = LayerPlan(name, None, (), 0, 0, f"inside skipped block '{owner}'")
            else:
                layer = _layer(model, name)
                plans[name] = plan_layer(name, layer, ratio, self.scheme, self.round_to)
        return plans

    def apply_ranks(
        self, model: nn.Module, ranks: Mapping[str, float], example: torch.Tensor | None = None
    ) -> nn.Module:
        """A copy of `model` with each layer in `ranks` (name -> rank ratio) factorized.

        `model` is never modified; `example` is accepted for the Compressor interface (unused).
        """
        compressed = copy.deepcopy(model)
        for name, plan in self.plan(compressed, ranks).items():
            if plan.scheme is None:
                log.info("low-rank: layer '%s' left unchanged: %s", name, plan.reason)
                continue
            rank = plan.rank if plan.scheme == "tucker2" else plan.rank[0]
            with torch.no_grad():
                factors = factorize(_layer(compressed, name), plan.scheme, rank)
            _replace(compressed, name, factors)
        return compressed
