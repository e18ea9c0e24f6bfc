"""A corpus of tiny third-party-style CNN classifiers, for testing bring-your-own architectures.

None of these comes from modeltailor's own zoo, and none imports modeltailor: each is written the
way a different library or author would write it (config lists, ``OrderedDict`` names, a
``nn.ModuleDict`` and functional ops, a 1x1-conv classifier, ``x.view``/``x.reshape`` flattening,
channel shuffles, concatenations, squeeze-and-excitation gating, a log-softmax output, ...). The
tests use them end to end: the tool must find their prunable units, freeze what must be frozen,
compress them and still give a working classifier.

Every factory is ``make_<name>(num_classes=10, in_channels=1) -> nn.Module``; the model takes
``(N, in_channels, H, W)`` for H = W = 16 or 32 (and other sizes) and returns a plain
``(N, num_classes)`` tensor of logits (log-probabilities for ``make_softmax_head``). They are tiny
(a few thousand to about 30k parameters, 8 to 32 channels wide) so a CPU test can train one for a
couple of epochs on 16x16 grayscale digits in seconds. ``CORPUS`` maps each short name to its
factory's name.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# 1. MobileNetV2-style inverted residuals, classified by a 1x1 conv then a global average
#    (torchvision-like config table; no nn.Linear anywhere).
# --------------------------------------------------------------------------------------------


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers.extend(
            [
                ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class ConvHeadNet(nn.Module):
    # t (expansion), c (output channels), n (repeats), s (first stride)
    settings = [
        (1, 16, 1, 1),
        (2, 24, 2, 2),
        (2, 32, 2, 2),
    ]

    def __init__(self, num_classes: int = 10, in_channels: int = 1, last_channel: int = 48):
        super().__init__()
        input_channel = 16
        features: list[nn.Module] = [ConvBNReLU6(in_channels, input_channel, stride=1)]
        for t, c, n, s in self.settings:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(last_channel, num_classes, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(x))
        return x.mean((2, 3))


def make_conv_head(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ConvHeadNet(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 2. ShuffleNet v1-style units: grouped 1x1 -> channel shuffle -> depthwise 3x3 -> grouped 1x1;
#    add in stride-1 units, concatenate with an avg-pooled shortcut in stride-2 units.
# --------------------------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        self.groups = groups
        branch_out = out_planes - in_planes if stride == 2 else out_planes
        mid_planes = out_planes // 2
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        if self.stride == 2:
            return F.relu(torch.cat([out, res], 1))
        return F.relu(out + res)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, groups: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        blocks: list[nn.Module] = []
        for out_planes, num_blocks in ((32, 2), (48, 2)):
            for i in range(num_blocks):
                stride = 2 if i == 0 else 1
                blocks.append(ShuffleUnit(in_planes, out_planes, stride, groups))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def make_shufflenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ShuffleNet(num_classes, in_channels, groups=2)


# --------------------------------------------------------------------------------------------
# 3. Residual stages with squeeze-and-excitation (SENet-style, Linear reduce/expand).
# --------------------------------------------------------------------------------------------


class SELayer(nn.Module):
    def __init__(self, channel: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y


class SEBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, reduction: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SELayer(planes, reduction)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True)
        )
        self.layer1 = SEBasicBlock(16, 24, stride=2)
        self.layer2 = SEBasicBlock(24, 32, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def make_squeeze_excite(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return SENet(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 4. DenseNet-like: every layer concatenates its output onto its input; transitions between.
# --------------------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, num_input_features: int, growth_rate: int, bn_size: int):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module(
            "conv", nn.Conv2d(num_input_features, num_output_features, 1, stride=1, bias=False)
        )
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        growth_rate: int = 8,
        block_config: tuple[int, ...] = (3, 3),
        num_init_features: int = 16,
        bn_size: int = 2,
    ):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, growth_rate, bn_size)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_features, num_features // 2)
                self.features.add_module(f"transition{i + 1}", trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def make_densenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return DenseNet(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 5. Inception-like: parallel 1x1 / 1x1->3x3 / pool->1x1 branches concatenated, stacked twice.
# --------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x)]
        return torch.cat(outputs, 1)


class TinyInception(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = BasicConv2d(in_channels, 16, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(16, 8, 8, 12, 4)  # -> 24
        self.maxpool3 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception4a = Inception(24, 12, 12, 16, 4)  # -> 32
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool1(x)
        x = self.inception3a(x)
        x = self.maxpool3(x)
        x = self.inception4a(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(self.dropout(x))


def make_inception(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return TinyInception(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 6. MobileNetV3-like depthwise-separable stack: hardswish activations, hard-sigmoid gating.
# --------------------------------------------------------------------------------------------


class HardSqueezeExcite(nn.Module):
    """Squeeze-excite with 1x1 convs and a hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze: int = 8):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.relu(self.fc1(scale))
        scale = F.hardsigmoid(self.fc2(scale))
        return scale * x


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_se: bool, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn_dw = norm_layer(cin)
        self.act = nn.Hardswish()
        self.se = HardSqueezeExcite(cin) if use_se else nn.Identity()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_pw = norm_layer(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act(self.bn_dw(self.dw(x)))
        x = self.se(x)
        x = F.hardswish(self.bn_pw(self.pw(x)))
        if self.has_skip:
            x = x + shortcut
        return x


class MobileNetV3ish(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001)
        self.conv_stem = nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False)
        self.bn1 = norm_layer(16)
        self.act1 = nn.Hardswish()
        cfg = [  # cout, stride, use_se
            (24, 2, False),
            (24, 1, True),
            (32, 2, True),
            (32, 1, False),
        ]
        blocks = []
        cin = 16
        for cout, stride, use_se in cfg:
            blocks.append(DepthwiseSeparable(cin, cout, stride, use_se, norm_layer))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Linear(cin, 64)
        self.act2 = nn.Hardswish()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.act2(self.conv_head(x)))


def make_depthwise_hardswish(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return MobileNetV3ish(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 7. VGG-style, flattened with x.view(x.size(0), -1) into a hidden Linear, then a reshape step.
# --------------------------------------------------------------------------------------------

VGG_CFG = [8, 8, "M", 16, 16, "M", 32]


class VGGish(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG_CFG:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(c * 4, hidden)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        x = x.view(x.size(0), -1)
        x = self.drop(F.relu(self.fc1(x)))
        x = x.reshape(len(x), -1)
        return self.fc2(x)


def make_flatten_view(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return VGGish(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 8. ResNet-ish written with functional ops only in forward; modules in a plain nn.ModuleDict.
# --------------------------------------------------------------------------------------------


class FunctionalResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.layers = nn.ModuleDict(
            {
                "stem": nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                "stem_bn": nn.BatchNorm2d(16),
                "b1_conv1": nn.Conv2d(16, 16, 3, padding=1, bias=False),
                "b1_bn1": nn.BatchNorm2d(16),
                "b1_conv2": nn.Conv2d(16, 16, 3, padding=1, bias=False),
                "b1_bn2": nn.BatchNorm2d(16),
                "split_a": nn.Conv2d(16, 16, 3, padding=1, bias=False),
                "split_a_bn": nn.BatchNorm2d(16),
                "split_b": nn.Conv2d(16, 8, 1, bias=False),
                "split_b_bn": nn.BatchNorm2d(8),
                "b2_conv1": nn.Conv2d(24, 24, 3, padding=1, bias=False),
                "b2_bn1": nn.BatchNorm2d(24),
                "b2_conv2": nn.Conv2d(24, 24, 3, padding=1, bias=False),
                "b2_bn2": nn.BatchNorm2d(24),
            }
        )
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layers
        x = F.relu(m["stem_bn"](m["stem"](x)))
        y = F.relu(m["b1_bn1"](m["b1_conv1"](x)))
        y = m["b1_bn2"](m["b1_conv2"](y))
        x = F.relu(x + y)
        x = F.max_pool2d(x, 2)
        a = m["split_a_bn"](m["split_a"](x))
        b = m["split_b_bn"](m["split_b"](F.avg_pool2d(x, 3, stride=1, padding=1)))
        x = F.relu(torch.cat([a, b], 1))
        y = F.relu(m["b2_bn1"](m["b2_conv1"](x)))
        y = m["b2_bn2"](m["b2_conv2"](y))
        x = F.relu(x + y)
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)


def make_functional(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return FunctionalResNet(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# 9. Keras-like nn.Sequential stack ending in AdaptiveAvgPool2d(3) (3x3, not 1x1) and an MLP.
# --------------------------------------------------------------------------------------------


def make_adaptive_large(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    # "valid" (unpadded) convs, Keras-style: 16x16 -> 14 -> 12 -> pool 6 -> 3x3 grid
    c = 16
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, c, 3),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Sequential(nn.Linear(c * 9, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, num_classes)),
    )


# --------------------------------------------------------------------------------------------
# 10. pytorch/examples-MNIST-style net whose forward returns log-probabilities.
# --------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 5, 1, 2)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(32)
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.dropout(torch.flatten(x, 1))
        return F.log_softmax(self.fc(x), dim=1)


def make_softmax_head(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return Net(num_classes, in_channels)


CORPUS: dict[str, str] = {
    "conv_head": "make_conv_head",
    "shufflenet": "make_shufflenet",
    "squeeze_excite": "make_squeeze_excite",
    "densenet": "make_densenet",
    "inception": "make_inception",
    "depthwise_hardswish": "make_depthwise_hardswish",
    "flatten_view": "make_flatten_view",
    "functional": "make_functional",
    "adaptive_large": "make_adaptive_large",
    "softmax_head": "make_softmax_head",
}
