"""Feature-map resolution (search.downsample): the first convolution at twice its stride, every later
map a quarter of the size, the model still taking its input, carried by the policy end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from modeltailor.compressors.export import export_onnx
from modeltailor.compressors.pipeline import PolicyApplier
from modeltailor.compressors.policy import Policy, UnitAction
from modeltailor.compressors.resolution import downsampled, first_conv
from modeltailor.compressors.units import analyze_model
from modeltailor.errors import CompressionError
from modeltailor.experiments.search.experience import regime
from modeltailor.experiments.search.run import run_search
from modeltailor.experiments.spec.deployment import load_config
from modeltailor.experiments.spec.summary import PolicyData
from modeltailor.models.zoo import resnet20
from tests.test_search_e2e import TINY

EXAMPLE = torch.zeros(1, 3, 32, 32)


def test_downsampling_keeps_the_input_and_output_and_quarters_the_work():
    model = resnet20().eval()
    smaller = downsampled(model, 2, EXAMPLE)
    assert first_conv(model, EXAMPLE) == "features.0.0"
    assert model.features[0][0].stride == (1, 1) and smaller.features[0][0].stride == (2, 2)  # a copy
    x = torch.randn(4, 3, 32, 32)
    assert smaller(x).shape == model(x).shape == (4, 10)
    full, low = analyze_model(model, EXAMPLE).total_macs, analyze_model(smaller, EXAMPLE).total_macs
    assert 0.24 < low / full < 0.27  # every conv at a quarter of its positions; the classifier unchanged
    assert [u.name for u in analyze_model(smaller, EXAMPLE).units] == [u.name for u in analyze_model(model, EXAMPLE).units]


def test_a_model_that_needs_its_map_size_is_refused_with_the_reason():
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    with pytest.raises(CompressionError, match=r"first convolution '0' at stride 2.*search.downsample"):
        downsampled(fixed, 2, EXAMPLE)
    with pytest.raises(CompressionError, match="runs no nn.Conv2d"):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), EXAMPLE)


def test_the_policy_carries_downsampling_and_old_policies_read_as_before():
    policy = Policy((UnitAction("features.0.0", keep=0.5),), downsample=2)
    data = policy.to_dict()
    assert data["downsample"] == 2 and Policy.from_dict(json.loads(json.dumps(data))) == policy
    assert "downsample" in policy.methods()
    plain = Policy((UnitAction("features.0.0", keep=0.5),))
    older = {k: v for k, v in plain.to_dict().items() if k != "downsample"}  # written before it existed
    assert Policy.from_dict(older) == plain and plain.to_dict()["downsample"] == 1
    assert PolicyData.from_policy(policy).to_policy() == policy  # summary.json's form keeps it
    with pytest.raises(CompressionError, match="downsample 3 is not one of 1, 2"):
        Policy.from_dict({**data, "downsample": 3}, source="p.json")
    with pytest.raises(CompressionError, match="downsample 4"):
        Policy((), downsample=4)


def test_a_downsampled_pruned_model_is_smaller_faster_work_and_its_onnx_matches_torch():
    model = resnet20().eval()
    units = [u.name for u in analyze_model(model, EXAMPLE).units]
    policy = Policy(tuple(UnitAction(u, keep=0.5) for u in units), downsample=2)
    built = PolicyApplier().apply(model, policy, EXAMPLE).eval()
    assert model.features[0][0].stride == (1, 1)  # the teacher untouched
    pruned_only = PolicyApplier().apply(model, Policy(policy.actions), EXAMPLE)
    assert analyze_model(built, EXAMPLE).total_macs < 0.3 * analyze_model(pruned_only, EXAMPLE).total_macs
    x = torch.randn(8, 3, 32, 32)
    session = ort.InferenceSession(export_onnx(built, (3, 32, 32)), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])
    with torch.no_grad():
        np.testing.assert_allclose(got, built(x).numpy(), rtol=1e-3, atol=1e-4)


def test_downsampling_is_its_own_regime_of_the_experience():
    plain = load_config(None, TINY)
    low = load_config(None, {**TINY, "search.downsample": 2})
    assert regime(plain, "t") != regime(low, "t")
    with pytest.raises(Exception, match="downsample"):
        load_config(None, {**TINY, "search.downsample": 3})


@pytest.mark.slow
def test_a_downsampled_search_builds_measures_and_ships_the_lower_resolution(tmp_path: Path):
    settings = {**TINY, "tracking.enabled": False, "search.searcher": "random", "search.episodes": 3,
                "search.downsample": 2, "search.experience": "off"}
    result = run_search(load_config(None, settings), tmp_path / "run")
    summary = result.summary
    assert summary.policy.downsample == 2 and "downsample" in summary.methods
    assert all(e.policy.downsample == 2 for e in summary.pareto)
    saved = Policy.load(tmp_path / "run" / "policy.json")
    assert saved.downsample == 2
    # every episode's model runs at the lower resolution: a quarter of the baseline's work or less
    assert summary.best.macs < 0.3 * summary.baseline.macs
