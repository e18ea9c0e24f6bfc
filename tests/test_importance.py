"""DropNet activation importance inside Torch-Pruning's pruner."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from modeltailor.compressors.importance import (
    ActivationImportance,
    GradientTaylorImportance,
    activation_sites,
    mean_activations,
)
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.pruning import ChannelPruningCompressor, count_params
from modeltailor.errors import CompressionError
from modeltailor.models import build_model


def _data(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "shufflenet", "vgg"])
def test_pruner_with_activation_importance(name):
    torch.manual_seed(0)
    model = build_model(name, input_size=16).eval()
    example = torch.zeros(1, 3, 16, 16)
    before = count_params(model)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=ActivationImportance(_data()),
        pruning_ratio=0.5,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    assert count_params(model) < before
    assert model(example).shape == (1, 10)


def _dead_filter_model(k: int) -> tuple[nn.Module, nn.Conv2d]:
    torch.manual_seed(0)
    model = build_model("resnet20", input_size=16).eval()
    conv, bn = model.features[1].conv1[0], model.features[1].conv1[1]
    with torch.no_grad():
        conv.weight[k].zero_()
        bn.bias[k] = -1.0  # eval-mode BN of a zero output is its bias: ReLU gives 0
    return model, conv


def test_dead_filter_has_lowest_importance_and_is_pruned():
    k = 5
    model, conv = _dead_filter_model(k)
    example = torch.zeros(1, 3, 16, 16)
    importance = ActivationImportance(_data())
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    channels = conv.out_channels
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(channels)))
    scores = importance(group)
    assert scores.shape == (channels,)
    assert int(scores.argmin()) == k and float(scores[k]) == 0.0
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=importance,
        pruning_ratio=0.0,
        pruning_ratio_dict={conv: 1.0 - (channels - 1 + 0.5) / channels},
        ignored_layers=[model.classifier],
        round_to=None,
    )
    pruner.step()
    assert conv.out_channels == channels - 1
    assert bool((conv.weight.flatten(1).abs().sum(1) > 0).all())  # the dead filter is gone
    assert model.features[1].conv2[0].in_channels == channels - 1


def test_activation_sites_and_means():
    model = build_model("resnet20", input_size=16).eval()
    sites = activation_sites(model)
    block = model.features[1]
    assert sites[block.conv1[0]] == (block.conv1[2], False)  # the ReLU after Conv-BN
    assert sites[block.conv2[0]] == (block.conv2[1], True)  # no ReLU: BN output, rectified
    means = mean_activations(model, _data(8), batches=2)
    assert means[block.conv1[0]].shape == (block.conv1[0].out_channels,)
    assert bool((means[block.conv1[0]] >= 0).all())
    assert model.training is False


def test_importance_is_cached_per_model_and_refreshed_after_pruning():
    model = build_model("resnet20", input_size=16).eval()
    importance = ActivationImportance(_data(8))
    first = importance.activations(model)
    assert importance.activations(model) is first
    pruner = tp.pruner.BasePruner(
        model, torch.zeros(1, 3, 16, 16), importance=importance, pruning_ratio=0.25,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    refreshed = importance.activations(model)
    assert refreshed is not first
    conv = model.features[1].conv1[0]
    assert refreshed[conv].shape == (conv.out_channels,)


def test_gradient_taylor_importance_prunes():
    model = build_model("resnet20", input_size=16).eval()
    x = _data(16)
    y = torch.arange(16) % 10
    before = count_params(model)
    pruner = tp.pruner.BasePruner(
        model, torch.zeros(1, 3, 16, 16), importance=GradientTaylorImportance(x, y),
        pruning_ratio=0.5, ignored_layers=[model.classifier],
    )
    pruner.step()
    assert count_params(model) < before
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_compressor_prunes_the_dead_filter_by_activation_and_leaves_input_untouched():
    k = 5
    model, conv = _dead_filter_model(k)
    channels = conv.out_channels
    before = {n: p.clone() for n, p in model.state_dict().items()}
    x = _data()
    compressor = ChannelPruningCompressor("activation", round_to=1, calibration=(x, torch.zeros(len(x), dtype=torch.long)))
    keep = (channels - 1) / channels
    policy = Policy((UnitAction("features.1.conv1.0", keep=keep),))
    pruned = compressor.apply(model, policy, torch.zeros(1, 3, 16, 16))
    kept = pruned.features[1].conv1[0]
    assert kept.out_channels == channels - 1
    assert bool((kept.weight.flatten(1).abs().sum(1) > 0).all())  # the dead filter is the one removed
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    # l2 magnitude also sees a zero filter; with the dead filter given large weights only activation finds it
    with torch.no_grad():
        conv.weight[k].fill_(1.0)
        model.features[1].conv1[1].bias[k] = -1e4
    by_activation = ChannelPruningCompressor("activation", 1, calibration=(x, x.new_zeros(len(x)).long()))
    by_l2 = ChannelPruningCompressor("l2", 1)
    dead = model.features[1].conv1[0].weight[k].clone()

    def has_dead(m: nn.Module) -> bool:
        return any(torch.equal(w, dead) for w in m.features[1].conv1[0].weight)

    assert not has_dead(by_activation.apply(model, policy, torch.zeros(1, 3, 16, 16)))
    assert has_dead(by_l2.apply(model, policy, torch.zeros(1, 3, 16, 16)))


@pytest.mark.parametrize("name", ["activation", "taylor"])
def test_data_driven_importance_needs_calibration_data(name):
    with pytest.raises(CompressionError, match=f"importance '{name}' ranks channels on data"):
        ChannelPruningCompressor(name)


def test_config_accepts_data_driven_importance():
    from modeltailor.experiments.spec.deployment import load_config

    assert load_config(None, {"search.importance": "activation"}).search.importance == "activation"
