"""The persistent latency cache serves a latency only where it would be measured again the same way
(same host, CPU, ONNX Runtime, device settings, runs and warm-up) and while it is young; its
counters say where each latency came from; --resume refuses settings that change an episode."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from onnx import TensorProto, helper

from modeltailor.devices import cache as cache_module
from modeltailor.devices.base import DeviceDefaults
from modeltailor.devices.cache import (
    MAX_AGE_ENV,
    CachedDevice,
    identity_hash,
    measurement_identity,
)
from modeltailor.devices.local import LocalOrtDevice
from modeltailor.devices.measurement import LatencyStats, Measurement
from modeltailor.devices.memory import onnx_memory
from modeltailor.errors import ConfigError
from modeltailor.experiments.spec import files
from modeltailor.experiments.spec.deployment import load_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def relu_model(width: int = 2) -> bytes:
    """A one-node ONNX model; `width` changes its architecture signature."""
    value = helper.make_tensor_value_info
    shape = [1, 1, width, width]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["out"])], "relu",
        [value("input", TensorProto.FLOAT, shape)], [value("out", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@dataclass
class CountingDevice(DeviceDefaults):
    """Answers a fixed latency (a new one on every call) and counts the calls; describes `settings`."""

    name: str = "fake-1t"
    settings: dict[str, Any] = field(default_factory=lambda: {"kind": "fake", "threads": 1, "onnxruntime": "1.0"})
    calls: int = 0

    @property
    def kind(self) -> str:
        return "fake"

    def measure(self, onnx_bytes: bytes) -> Measurement:
        self.calls += 1
        ms = float(self.calls)
        latency = LatencyStats(ms, ms, ms, 0.0, ms, ms, 10)
        return Measurement(latency, onnx_memory(onnx_bytes), self.name)

    def describe(self) -> dict[str, Any]:
        return dict(self.settings)


def measured_twice(first: CountingDevice, second: CountingDevice, path: Path) -> CachedDevice:
    """`first` fills the cache at `path` with one model; a new CachedDevice on `second` measures it again."""
    CachedDevice(first, path).measure(relu_model())
    again = CachedDevice(second, path)
    again.measure(relu_model())
    return again


def test_a_repeat_counts_as_a_repeat_and_a_later_run_as_a_hit_from_an_earlier_run(tmp_path):
    path = tmp_path / "latency.json"
    inner = CountingDevice()
    run = CachedDevice(inner, path)
    first = run.measure(relu_model())
    run.measure(relu_model())
    run.measure(relu_model(width=3))
    assert (run.hits_earlier_runs, run.repeats_this_run, run.measured, inner.calls) == (0, 1, 2, 2)

    later_inner = CountingDevice()
    later = CachedDevice(later_inner, path)
    served = later.measure(relu_model())
    later.measure(relu_model())
    assert (later.hits_earlier_runs, later.repeats_this_run, later.measured, later_inner.calls) == (2, 0, 0, 0)
    assert served.latency == first.latency
    stats = later.stats()
    assert stats["enabled"] and stats["path"] == str(path) and stats["max_age_days"] == 7.0
    assert (stats["hits_earlier_runs"], stats["repeats_this_run"], stats["measured"], stats["expired"]) == (2, 0, 0, 0)


def test_entries_say_when_and_where_they_were_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "host_name", lambda: "node-a")
    path = tmp_path / "latency.json"
    device = CachedDevice(CountingDevice(), path)
    device.measure(relu_model())
    (key, entry), = json.loads(path.read_text()).items()
    when = datetime.fromisoformat(entry["measured_at"])
    assert entry["host"] == "node-a" and when.tzinfo is not None
    assert abs((datetime.now(UTC) - when).total_seconds()) < 600
    name, identity, _signature = key.split("|")
    assert name == "fake-1t" and identity == identity_hash(device.identity) and len(identity) == 12


def test_an_entry_from_another_host_is_not_served(tmp_path, monkeypatch):
    path = tmp_path / "latency.json"
    monkeypatch.setattr(cache_module, "host_name", lambda: "node-a")
    CachedDevice(CountingDevice(), path).measure(relu_model())
    monkeypatch.setattr(cache_module, "host_name", lambda: "node-b")
    other = CachedDevice(CountingDevice(), path)
    other.measure(relu_model())
    assert (other.hits_earlier_runs, other.measured, other.device.calls) == (0, 1, 1)
    assert len(json.loads(path.read_text())) == 2  # one entry per host


def test_an_entry_recorded_on_another_host_is_not_served_even_under_this_hosts_key(tmp_path):
    path = tmp_path / "latency.json"
    CachedDevice(CountingDevice(), path).measure(relu_model())
    data = json.loads(path.read_text())
    for entry in data.values():
        entry["host"] = "somewhere-else"
    path.write_text(json.dumps(data))
    again = CachedDevice(CountingDevice(), path)
    again.measure(relu_model())
    assert (again.hits_earlier_runs, again.measured) == (0, 1)


def test_an_entry_from_another_cpu_is_not_served(tmp_path, monkeypatch):
    path = tmp_path / "latency.json"
    monkeypatch.setattr(cache_module, "cpu_model", lambda: "CPU A")
    CachedDevice(CountingDevice(), path).measure(relu_model())
    monkeypatch.setattr(cache_module, "cpu_model", lambda: "CPU B")
    other = CachedDevice(CountingDevice(), path)
    other.measure(relu_model())
    assert (other.hits_earlier_runs, other.measured) == (0, 1)


@pytest.fixture
def fake_ort_timing(monkeypatch):
    """LocalOrtDevice answers without timing anything (its describe() stays the real one)."""
    calls: list[str] = []

    def measure(self: LocalOrtDevice, onnx_bytes: bytes) -> Measurement:
        calls.append(self.name)
        return Measurement(LatencyStats(1.0, 1.0, 1.0, 0.0, 1.0, 1.0, self.runs), onnx_memory(onnx_bytes), self.name)

    monkeypatch.setattr(LocalOrtDevice, "measure", measure)
    return calls


def test_an_entry_from_another_onnxruntime_version_is_not_served(tmp_path, monkeypatch, fake_ort_timing):
    path = tmp_path / "latency.json"
    CachedDevice(LocalOrtDevice(), path).measure(relu_model())
    same = CachedDevice(LocalOrtDevice(), path)
    same.measure(relu_model())
    assert (same.hits_earlier_runs, same.measured) == (1, 0)
    monkeypatch.setattr(sys.modules["modeltailor.devices.local"].ort, "__version__", "0.0.1-other")
    upgraded = CachedDevice(LocalOrtDevice(), path)
    upgraded.measure(relu_model())
    assert (upgraded.hits_earlier_runs, upgraded.measured) == (0, 1)
    assert upgraded.identity["device"]["onnxruntime"] == "0.0.1-other"


@pytest.mark.parametrize(
    "changed",
    [
        {"intra_op_threads": 2},
        {"graph_optimization_level": "basic"},
        {"runs": 50},
        {"warmup": 3},
        {"rounds": 2},
        {"min_time_s": 0.5},
    ],
)
def test_an_entry_measured_with_other_profile_settings_is_not_served(tmp_path, fake_ort_timing, changed):
    path = tmp_path / "latency.json"
    CachedDevice(LocalOrtDevice(name="cpu-1t"), path).measure(relu_model())
    other = CachedDevice(LocalOrtDevice(name="cpu-1t", **changed), path)  # same profile name
    other.measure(relu_model())
    assert (other.hits_earlier_runs, other.measured, len(fake_ort_timing)) == (0, 1, 2)


def test_a_remote_devices_identity_holds_its_url_and_server_not_its_counters():
    def remote(url: str = "http://board:8765", ort: str = "1.20", busy: bool = False, measured: int = 0):
        server = {"status": "ok", "onnxruntime": ort, "threads": 1, "machine": {"machine": "aarch64"},
                  "busy": busy, "measured": measured, "timeout_s": 60, "max_model_bytes": 1 << 20}
        return CountingDevice("board", {"kind": "remote", "url": url, "runs": 200, "warmup": 20, "server": server})

    base = identity_hash(measurement_identity(remote()))
    assert identity_hash(measurement_identity(remote(busy=True, measured=41))) == base
    assert identity_hash(measurement_identity(remote(url="http://other:8765"))) != base
    assert identity_hash(measurement_identity(remote(ort="1.21"))) != base
    assert {"host", "cpu", "device"} <= measurement_identity(remote()).keys()


def age_entries(path: Path, days: float) -> None:
    data = json.loads(path.read_text())
    for entry in data.values():
        entry["measured_at"] = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
    path.write_text(json.dumps(data))


def test_an_expired_entry_is_measured_again_and_replaced(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_AGE_ENV, raising=False)
    path = tmp_path / "latency.json"
    CachedDevice(CountingDevice(), path).measure(relu_model())
    age_entries(path, 8)
    later = CachedDevice(CountingDevice(), path)
    later.measure(relu_model())
    assert (later.hits_earlier_runs, later.measured, later.expired, later.device.calls) == (0, 1, 1, 1)
    (entry,) = json.loads(path.read_text()).values()
    assert (datetime.now(UTC) - datetime.fromisoformat(entry["measured_at"])).total_seconds() < 600

    age_entries(path, 6)  # within the default week
    young = CachedDevice(CountingDevice(), path)
    young.measure(relu_model())
    assert (young.hits_earlier_runs, young.measured) == (1, 0)


def test_entries_too_old_to_serve_are_pruned_when_the_file_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_AGE_ENV, raising=False)
    path = tmp_path / "latency.json"
    CachedDevice(CountingDevice(), path).measure(relu_model(2))
    age_entries(path, cache_module.PRUNE_AFTER_DAYS + 1)  # past any default process's maximum age
    stale = json.loads(path.read_text())
    young = CachedDevice(CountingDevice(), path)  # another host's young entry stays: it is servable there
    young.identity["host"] = "elsewhere"
    young.measure(relu_model(3))
    assert young.pruned == 1
    entries = json.loads(path.read_text())
    assert not stale.keys() & entries.keys() and len(entries) == 1
    assert next(iter(entries.values()))["host"] == "elsewhere"
    CachedDevice(CountingDevice(), path).measure(relu_model(4))  # this host's write keeps the other host's entry
    assert len(json.loads(path.read_text())) == 2


def test_the_maximum_age_is_set_by_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "latency.json"
    CachedDevice(CountingDevice(), path).measure(relu_model())
    age_entries(path, 20)
    monkeypatch.setenv(MAX_AGE_ENV, "30")
    month = CachedDevice(CountingDevice(), path)
    month.measure(relu_model())
    assert (month.max_age_days, month.hits_earlier_runs, month.measured) == (30.0, 1, 0)
    monkeypatch.setenv(MAX_AGE_ENV, "0")
    never = CachedDevice(CountingDevice(), path)
    never.measure(relu_model())
    assert (never.hits_earlier_runs, never.measured) == (0, 1)
    monkeypatch.setenv(MAX_AGE_ENV, "a week")
    with pytest.raises(ConfigError, match=f"^{MAX_AGE_ENV}='a week' is not a number of days"):
        CachedDevice(CountingDevice(), path)


def test_entries_without_time_and_host_are_never_served(tmp_path):
    """An older cache's form (key -> latency only) is ignored, not fatal, and replaced."""
    path = tmp_path / "latency.json"
    device = CachedDevice(CountingDevice(), path)
    key = device.key(relu_model())
    path.write_text(json.dumps({key: LatencyStats(9.0, 9.0, 9.0, 0.0, 9.0, 9.0, 10).to_dict()}))
    again = CachedDevice(CountingDevice(), path)
    result = again.measure(relu_model())
    assert (again.hits_earlier_runs, again.measured, result.latency.median_ms) == (0, 1, 1.0)
    assert set(json.loads(path.read_text())[key]) == {"latency", "measured_at", "host"}


def test_without_a_path_only_repeats_within_the_run_are_reused(tmp_path):
    first, second = CachedDevice(CountingDevice()), CachedDevice(CountingDevice())
    for device in (first, second):
        device.measure(relu_model())
        device.measure(relu_model())
    assert (second.hits_earlier_runs, second.repeats_this_run, second.measured) == (0, 1, 1)
    assert second.stats()["enabled"] is False and second.stats()["path"] is None


# -- the search's side: build_device, --no-cache, the baseline -------------------------------------


def test_build_device_uses_the_v3_file_unless_the_cache_is_off(tmp_path):
    from modeltailor.experiments.search.workbench import LATENCY_CACHE, build_device

    assert LATENCY_CACHE == "latency-cache-v3.json"
    on = build_device(load_config(None, {"device.runs": 5}))
    assert on.path == tmp_path / "cache" / LATENCY_CACHE  # MODELTAILOR_CACHE is per test (conftest)
    off = build_device(load_config(None, {"device.cache": False}))
    assert off.path is None and off.stats()["enabled"] is False


def test_search_no_cache_turns_the_persistent_cache_off(tmp_path, monkeypatch):
    from modeltailor.experiments.search import run as run_module
    from modeltailor.service import cli

    seen = []

    def fake_run_search(config, out, reporter=None, resume=False):
        seen.append(config)
        raise ConfigError("stop here")

    monkeypatch.setattr(run_module, "run_search", fake_run_search)
    for flags in ([], ["--no-cache"]):
        monkeypatch.setattr(sys, "argv", ["modeltailor", "search", "--no-tracking", "--out", str(tmp_path / "o"), *flags])
        with pytest.raises(SystemExit):
            cli.main()
    assert [c.device.cache for c in seen] == [True, False]


def test_the_baseline_is_timed_fresh_past_the_cache(tmp_path):
    from modeltailor.compressors.distill import DistillConfig, TeacherLogits
    from modeltailor.compressors.pipeline import PolicyApplier
    from modeltailor.compressors.pruning import ChannelPruningCompressor
    from modeltailor.env.evaluator import EvalData, PolicyEvaluator
    from modeltailor.experiments.search.workbench import _baseline
    from modeltailor.models import build_model
    from tests.conftest import synthetic_images

    torch.manual_seed(0)
    shape = (1, 1, 16, 16)
    teacher = build_model("resnet20", in_channels=1, input_size=16, num_classes=4, width=0.25).eval()
    x, y = synthetic_images(32, 1, 16, 4)
    inner = CountingDevice()
    cached = CachedDevice(inner, tmp_path / "latency.json")
    evaluator = PolicyEvaluator(
        teacher=teacher, compressor=PolicyApplier(ChannelPruningCompressor(round_to=2)),
        data=EvalData(x[:16], y[:16], x[16:], y[16:]), teacher_logits=TeacherLogits(teacher, x[:16]),
        recovery=DistillConfig(steps=1, batch_size=8), device=cached, input_shape=shape,
    )
    evaluator.measure(teacher)  # an earlier figure for the same architecture, in the cache
    assert (cached.measured, inner.calls) == (1, 1)
    baseline = _baseline(evaluator, teacher, teacher, shape)
    assert inner.calls == 2 and baseline.latency_ms == 2.0  # the device was asked again
    assert (cached.hits_earlier_runs, cached.repeats_this_run, cached.measured) == (0, 0, 1)


# -- --resume --------------------------------------------------------------------------------------

TINY_RESUME = {"search.episodes": 3, "tracking.enabled": False}


def resumed(tmp_path: Path, changes: dict[str, Any]) -> None:
    from modeltailor.experiments.search.run import prepare_out_dir

    out = tmp_path / "out"
    prepare_out_dir(load_config(None, TINY_RESUME), out, resume=False)
    prepare_out_dir(load_config(None, {**TINY_RESUME, **changes}), out, resume=True)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"recovery.episode_steps": 80}, "recovery.episode_steps: 40 -> 80"),
        ({"recovery.lr": 0.1}, "recovery.lr: 0.02 -> 0.1"),
        ({"recovery.val_samples": 100}, "recovery.val_samples: null -> 100"),
        ({"train.epochs": 5}, "train.epochs: 30 -> 5"),
        ({"compute.precision": "bf16"}, 'compute.precision: "fp32" -> "bf16"'),
        ({"classes": [1, 2]}, "classes: null -> [1, 2]"),
        ({"device.runs": 50}, "device.runs: 200 -> 50"),
    ],
)
def test_resume_refuses_settings_that_change_an_episode_naming_them(tmp_path, changes, named):
    with pytest.raises(ConfigError) as info:
        resumed(tmp_path, changes)
    message = str(info.value)
    assert named in message and "\n" not in message
    assert "different deployment" in message and "rerun without --resume into a new --out" in message


@pytest.mark.parametrize(
    "changes",
    [{"recovery.final_steps": 2000}, {"recovery.finalists": 5}, {"compute.device": "cpu"}, {"device.cache": False},
     {"tracking.experiment": "other"}],
)
def test_resume_accepts_settings_that_do_not_change_an_episode(tmp_path, changes):
    resumed(tmp_path, changes)


def test_resume_of_a_folder_whose_stamp_predates_the_recovery_check_warns_and_keeps_its_episodes(tmp_path, caplog):
    from modeltailor.experiments.search.run import prepare_out_dir

    out = tmp_path / "out"
    config = load_config(None, TINY_RESUME)
    prepare_out_dir(config, out, resume=False)
    stamp = json.loads((out / files.DEPLOYMENT).read_text())
    for key in ("recovery", "train", "compute"):
        del stamp[key]
    (out / files.DEPLOYMENT).write_text(json.dumps(stamp))
    (out / files.EPISODES).write_text("")
    with caplog.at_level("WARNING"):
        assert prepare_out_dir(config, out, resume=True) == []
    assert "compute, recovery, train" in caplog.text
    changed = json.loads((out / files.DEPLOYMENT).read_text())
    changed["objective"] = {**changed["objective"], "kind": "tradeoff"}
    del changed["recovery"]
    (out / files.DEPLOYMENT).write_text(json.dumps(changed))
    with pytest.raises(ConfigError, match="objective.kind"):
        prepare_out_dir(config, out, resume=True)


def test_a_campaign_resume_names_the_deployment_and_the_changed_setting(tmp_path):
    from modeltailor.experiments.fleet.campaign import _check_resumable

    config = load_config(None, TINY_RESUME).model_dump(mode="json")
    changed = {**config, "recovery": {**config["recovery"], "alpha": 0.5}}
    with pytest.raises(ConfigError, match=r"deployment 'b' of the campaign .*recovery\.alpha: 0\.9 -> 0\.5"):
        _check_resumable(tmp_path, {"a": config, "b": config}, {"a": config, "b": changed})
    finals = {**config, "recovery": {**config["recovery"], "final_steps": 5}}
    _check_resumable(tmp_path, {"a": config}, {"a": finals})
    with pytest.raises(ConfigError, match="other deployments"):
        _check_resumable(tmp_path, {"a": config}, {"c": config})


# -- two real searches over one cache (slow) ------------------------------------------------------

TINY_SEARCH = {
    "model.kwargs": {"width": 0.5}, "data.input_size": 16, "train.epochs": 3, "search.episodes": 3,
    "search.round_to": 2, "search.calibration_policies": 4, "recovery.episode_steps": 5, "recovery.final_steps": 10, "recovery.finalists": 1,
    "device.runs": 10, "device.warmup": 2, "tracking.enabled": False,
    "search.searcher": "random",  # the cache is the subject: no surrogate pretraining in each of the three searches
}


class Messages:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def start(self, episodes: int) -> None:
        pass

    def episode(self, record: Any, best: Any) -> None:
        pass


@pytest.mark.slow
def test_a_second_search_is_served_from_the_first_and_no_cache_measures_everything(tmp_path):
    from modeltailor.experiments.search.run import run_search

    first_messages, second_messages = Messages(), Messages()
    first = run_search(load_config(None, TINY_SEARCH), tmp_path / "first", first_messages).summary
    second = run_search(load_config(None, TINY_SEARCH), tmp_path / "second", second_messages).summary
    off = run_search(load_config(None, {**TINY_SEARCH, "device.cache": False}), tmp_path / "off").summary
    assert first.latency_cache is not None and second.latency_cache is not None and off.latency_cache is not None
    assert first.latency_cache.hits_earlier_runs == 0 and first.latency_cache.measured > 0
    assert second.latency_cache.hits_earlier_runs > 0
    assert second.latency_cache.identity == first.latency_cache.identity
    assert off.latency_cache.enabled is False and off.latency_cache.hits_earlier_runs == 0
    assert off.latency_cache.measured > 0
    line = next(m for m in second_messages.lines if m.startswith("latency cache:"))
    assert f"{second.latency_cache.hits_earlier_runs} served from earlier runs" in line
    assert any("timed fresh, not from the latency cache" in m for m in first_messages.lines)
    stored = json.loads((tmp_path / "second" / files.SUMMARY).read_text())["latency_cache"]
    assert stored["hits_earlier_runs"] == second.latency_cache.hits_earlier_runs
