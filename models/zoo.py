"""Built-in model zoo: small CIFAR-style CNNs in plain torch.

Every model takes `in_channels`, `input_size` and `num_classes` (and a `width` multiplier) and ends
with global average pooling, flatten and an `nn.Linear` stored as `classifier`. Layers are plain
Conv-BN-ReLU modules (no functional activations), so BN folding, ONNX export and Torch-Pruning's
dependency graph all see every operation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from modeltailor.errors import ConfigError

Segments = list[torch.Tensor]


def scaled(channels: int, width: float, divisor: int = 4) -> int:
    """`channels * width` rounded to a multiple of `divisor` (never below `divisor`)."""
    return max(divisor, int(round(channels * width / divisor)) * divisor)


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d, followed by ReLU unless `relu=False`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)


class ZooModel(nn.Module):
    """`features` then pooling and `classifier`; records the input shape it was built for."""

    def __init__(
        self, features: nn.Module, out_features: int, in_channels: int, input_size: int, num_classes: int
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = input_size
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------------------- ResNet-20


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN with a residual add; 1x1 Conv-BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, 3, stride)
        self.conv2 = ConvBNReLU(out_channels, out_channels, 3, relu=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBNReLU(in_channels, out_channels, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=False)
        # removable whole (depth compression). With an identity shortcut and a non-negative input
        # (the previous ReLU) the block without its residual branch is relu(x) = x: nothing is
        # left. With a projection shortcut (a strided 1x1 conv) what is left is relu(shortcut(x)):
        # `skip_path` (search.skip_projection lets a search use it).
        self.skippable = True
        self.projection = not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))

    def skip_path(self) -> nn.Module:
        """What replaces the block when it is skipped: nothing, or its shortcut then the ReLU."""
        return ProjectionPath(self.shortcut) if self.projection else nn.Identity()


class ProjectionPath(nn.Module):
    """A skipped projection block: relu(shortcut(x)), the shortcut keeping its name (so pruning
    finds its channels under the same unit names)."""

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x))


def cifar_resnet(
    in_channels: int = 3, input_size: int = 32, num_classes: int = 10, width: float = 1.0, depth: int = 20
) -> nn.Module:
    """CIFAR ResNet (He et al. 2016) of `depth` = 6n + 2: 3 stages of n BasicBlocks, 16/32/64 channels."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"a CIFAR ResNet needs depth = 6n + 2 (20, 32, 44, 56, 110), got {depth!r}")
    stages = [scaled(c, width) for c in (16, 32, 64)]
    layers: list[nn.Module] = [ConvBNReLU(in_channels, stages[0], 3)]
    current = stages[0]
    for index, channels in enumerate(stages):
        for block in range((depth - 2) // 6):
            stride = 2 if index > 0 and block == 0 else 1
            layers.append(BasicBlock(current, channels, stride))
            current = channels
    return ZooModel(nn.Sequential(*layers), current, in_channels, input_size, num_classes)


def resnet20(
    in_channels: int = 3, input_size: int = 32, num_classes: int = 10, width: float = 1.0
) -> nn.Module:
    """CIFAR ResNet-20: 3 stages of 3 BasicBlocks (0.27 M parameters, 41 M MACs at 32x32)."""
    return cifar_resnet(in_channels, input_size, num_classes, width, depth=20)


def resnet56(
    in_channels: int = 3, input_size: int = 32, num_classes: int = 10, width: float = 1.0
) -> nn.Module:
    """CIFAR ResNet-56: 3 stages of 9 BasicBlocks (0.86 M parameters, 126 M MACs at 32x32)."""
    return cifar_resnet(in_channels, input_size, num_classes, width, depth=56)


# ------------------------------------------------------------------------------------------- VGG

VGG_CONFIG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")


def vgg(
    in_channels: int = 3,
    input_size: int = 32,
    num_classes: int = 10,
    width: float = 1.0,
    config: Sequence[int | str] = VGG_CONFIG,
) -> nn.Module:
    """Plain VGG-style net: 3x3 Conv-BN-ReLU, 2x2 max pooling ('M') while the map is >= 2 px."""
    layers: list[nn.Module] = []
    current, size = in_channels, input_size
    for item in config:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        channels = scaled(int(item), width)
        layers.append(ConvBNReLU(current, channels, 3))
        current = channels
    return ZooModel(nn.Sequential(*layers), current, in_channels, input_size, num_classes)


# ----------------------------------------------------------------------------------- MobileNetV2

# (expansion t, output channels c, repeats n, first stride s), CIFAR-sized
MOBILENETV2_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
    (6, 160, 1, 2),
)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual if stride 1 and same shape."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU(in_channels, hidden, 1))
        layers.append(ConvBNReLU(hidden, hidden, 3, stride, groups=hidden))
        layers.append(ConvBNReLU(hidden, out_channels, 1, relu=False))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.skippable = self.use_residual  # x + branch(x) without the branch is x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def mobilenetv2(
    in_channels: int = 3,
    input_size: int = 32,
    num_classes: int = 10,
    width: float = 1.0,
    last_channels: int = 320,
) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018) for small images: stride-1 stem, 9 inverted residuals."""
    stem = scaled(32, width, 8)
    layers: list[nn.Module] = [ConvBNReLU(in_channels, stem, 3)]
    current = stem
    for expansion, channels, repeats, stride in MOBILENETV2_CONFIG:
        out = scaled(channels, width, 8)
        for i in range(repeats):
            layers.append(InvertedResidual(current, out, stride if i == 0 else 1, expansion))
            current = out
    last = scaled(last_channels, max(1.0, width), 8)
    layers.append(ConvBNReLU(current, last, 1))
    return ZooModel(nn.Sequential(*layers), last, in_channels, input_size, num_classes)


# ------------------------------------------------------------------------------------- ShuffleNet
#
# ShuffleNetV2 units (Ma et al. 2018): channel split, one branch of 1x1 / depthwise 3x3 / 1x1,
# concat, channel shuffle. Torch-Pruning's dependency graph treats a view/transpose shuffle as an
# element-wise op, so it would pair the wrong channels across it, and a chunk(2) split breaks as
# soon as pruning makes the two halves unequal. Here a stage's feature map travels as a list of
# four channel *segments* and the shuffle is a reordering of that list: the only tensor ops are
# convs and torch.cat, which the graph maps index by index, and every segment keeps whatever width
# pruning leaves it. Each branch ends in two 1x1 "heads" (same cost as one conv of twice the width)
# so its output is already two segments.


class ShuffleDown(nn.Module):
    """Stride-2 unit: both branches see the whole input; returns four segments."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        quarter, half = out_channels // 4, out_channels // 2
        self.branch1 = ConvBNReLU(in_channels, in_channels, 3, 2, groups=in_channels, relu=False)
        self.head1a = ConvBNReLU(in_channels, quarter, 1)
        self.head1b = ConvBNReLU(in_channels, quarter, 1)
        self.branch2 = nn.Sequential(
            ConvBNReLU(in_channels, half, 1),
            ConvBNReLU(half, half, 3, 2, groups=half, relu=False),
        )
        self.head2a = ConvBNReLU(half, quarter, 1)
        self.head2b = ConvBNReLU(half, quarter, 1)

    def forward(self, x: torch.Tensor) -> Segments:
        left, right = self.branch1(x), self.branch2(x)
        return [self.head1a(left), self.head2a(right), self.head1b(left), self.head2b(right)]


class ShuffleUnit(nn.Module):
    """Stride-1 unit on segments [s0, s1, s2, s3]: process (s2, s3) into (y0, y1), keep (s0, s1).

    The output order [s1, y0, s0, y1] is the channel shuffle: the next unit processes s0 (passed
    through once) together with y1 (just computed), so every segment is processed within two units
    and information flows between the two halves as in ShuffleNetV2.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        quarter, half = channels // 4, channels // 2
        self.branch = nn.Sequential(
            ConvBNReLU(half, half, 1),
            ConvBNReLU(half, half, 3, groups=half, relu=False),
        )
        self.head_a = ConvBNReLU(half, quarter, 1)
        self.head_b = ConvBNReLU(half, quarter, 1)

    def forward(self, segments: Segments) -> Segments:
        s0, s1, s2, s3 = segments
        mid = self.branch(torch.cat([s2, s3], dim=1))
        return [s1, self.head_a(mid), s0, self.head_b(mid)]


class ShuffleStage(nn.Module):
    """A stride-2 unit followed by stride-1 units; returns the concatenated segments."""

    def __init__(self, in_channels: int, out_channels: int, repeats: int) -> None:
        super().__init__()
        self.down = ShuffleDown(in_channels, out_channels)
        self.units = nn.ModuleList(ShuffleUnit(out_channels) for _ in range(repeats - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        segments = self.down(x)
        for unit in self.units:
            segments = unit(segments)
        return torch.cat(segments, dim=1)


def shufflenet(
    in_channels: int = 3,
    input_size: int = 32,
    num_classes: int = 10,
    width: float = 1.0,
    stages: Sequence[int] = (48, 96, 192),
    repeats: Sequence[int] = (3, 4, 3),
    last_channels: int = 512,
) -> nn.Module:
    """ShuffleNetV2-style net (0.5x channels, stride-1 stem) whose shuffle Torch-Pruning can track."""
    if len(stages) != len(repeats) or min(repeats, default=0) < 1:
        raise ConfigError("shufflenet needs one repeat count >= 1 per stage: fix 'stages'/'repeats'")
    stem = scaled(24, width, 8)
    layers: list[nn.Module] = [ConvBNReLU(in_channels, stem, 3)]
    current = stem
    for channels, repeat in zip(stages, repeats, strict=True):
        out = scaled(channels, width, 8)
        layers.append(ShuffleStage(current, out, repeat))
        current = out
    last = scaled(last_channels, max(1.0, width), 8)
    layers.append(ConvBNReLU(current, last, 1))
    return ZooModel(nn.Sequential(*layers), last, in_channels, input_size, num_classes)


# ---------------------------------------------------------------------------------------- registry

ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg": vgg,
    "mobilenetv2": mobilenetv2,
    "shufflenet": shufflenet,
}


def build_model(
    name: str, *, in_channels: int = 3, input_size: int = 32, num_classes: int = 10, **kwargs
) -> nn.Module:
    """A fresh zoo model; `kwargs` go to its factory (e.g. `width=0.5`)."""
    factory = ZOO.get(name)
    if factory is None:
        raise ConfigError(f"unknown model '{name}': choose one of {', '.join(ZOO)}")
    for key, value in (("in_channels", in_channels), ("input_size", input_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model '{name}' needs {key} to be a positive integer, got {value!r}")
    _check_kwargs(name, factory, kwargs)
    return factory(in_channels=in_channels, input_size=input_size, num_classes=num_classes, **kwargs)


def _check_kwargs(name: str, factory: Callable[..., nn.Module], kwargs: dict) -> None:
    params = inspect.signature(factory).parameters
    unknown = [key for key in kwargs if key not in params]
    if unknown:
        options = [p for p in params if p not in ("in_channels", "input_size", "num_classes")]
        raise ConfigError(
            f"model '{name}' has no option {', '.join(map(repr, unknown))}: "
            f"its options are {', '.join(options)}"
        )
    width = kwargs.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model '{name}' needs width > 0, got {width!r}")
