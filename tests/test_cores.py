"""The host core lock across real processes: a timing is exclusive, work steps share, and a
waiting timing closes a turnstile so it is not starved.

Every child is a separate Python process (`subprocess`) that records, with the host-wide monotonic
clock, when it asked for the lock, when it got in and when it was about to leave. The assertions
are orderings (B got in after A's last moment inside), not durations; a child that must be seen
blocked is found in /proc/locks (a blocked flock waiter) rather than guessed with a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modeltailor.common import cores
from modeltailor.errors import ConfigError

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from modeltailor.common import cores

spec = json.loads(sys.argv[1])
folder = Path(spec["folder"])
name = spec["name"]

def mark(event, **extra):
    with open(folder / f"{name}.log", "a") as f:
        f.write(json.dumps({"event": event, "t": time.monotonic(), **extra}) + "\n")
    (folder / f"{name}.{event}").touch()

def wait_file(path, limit=20.0):
    end = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > end:
            mark("gave-up")
            sys.exit(3)
        time.sleep(0.005)

if spec.get("after"):
    wait_file(folder / spec["after"])
for round_ in range(spec.get("repeat", 1)):
    mark("request")
    with getattr(cores, spec["kind"])():
        mark("enter")
        if spec.get("nested"):
            with getattr(cores, spec["nested"])():
                mark("nested")
        if spec.get("forever"):
            time.sleep(60)
        time.sleep(spec.get("hold", 0.0))
        if spec.get("until"):  # stay inside until the test says so (or we saw the other one inside)
            wait_file(folder / spec["until"])
        mark("leave")
mark("done")
"""

LIMIT = 20.0
"""Seconds any wait in a test may take before it fails (a deadlock must fail, not hang)."""


class Child:
    """One process running CHILD with `spec`; its events are files and a log in `folder`."""

    def __init__(self, folder: Path, name: str, kind: str, **spec) -> None:
        self.folder, self.name = folder, name
        payload = json.dumps({"folder": str(folder), "name": name, "kind": kind, **spec})
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, payload], env=dict(os.environ))

    def has(self, event: str) -> bool:
        return (self.folder / f"{self.name}.{event}").exists()

    def wait_for(self, event: str) -> None:
        end = time.monotonic() + LIMIT
        while not self.has(event):
            assert self.proc.poll() is None or self.has(event), f"{self.name} exited ({self.proc.returncode}) before '{event}'"
            assert time.monotonic() < end, f"{self.name} never reached '{event}'"
            time.sleep(0.005)

    def events(self, event: str) -> list[float]:
        lines = (self.folder / f"{self.name}.log").read_text().splitlines()
        return [record["t"] for record in map(json.loads, lines) if record["event"] == event]

    def t(self, event: str) -> float:
        (value,) = self.events(event)
        return value

    def finish(self) -> None:
        assert self.proc.wait(timeout=LIMIT) == 0, f"{self.name} failed ({self.proc.returncode})"
        assert not self.has("gave-up")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=LIMIT)


def blocked_on_flock(pid: int) -> bool:
    """Whether process `pid` waits for a flock (a '->' line of /proc/locks)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    return any(
        "->" in line and "FLOCK" in line and str(pid) in line.split("->", 1)[1].split()[3:4]
        for line in text.splitlines()
    )


def wait_blocked(child: Child | None, pid: int | None = None, limit: float = 3.0) -> None:
    """Until `pid` (or the child) is seen blocked in flock; then it must not have got in.

    If /proc/locks never shows it (another pid namespace), fall back to a grace period: the
    ordering assertions of the tests hold either way, this only makes the interleaving certain.
    """
    pid = pid if pid is not None else child.proc.pid
    end = time.monotonic() + limit
    while time.monotonic() < end and not blocked_on_flock(pid):
        if child is not None:
            assert not child.has("enter"), f"{child.name} got in although the lock was held"
        time.sleep(0.005)
    if child is not None:
        assert not child.has("enter"), f"{child.name} got in although the lock was held"


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """A fresh lock folder for the children (inherited through the environment) and an events folder."""
    monkeypatch.setenv(cores.LOCK_ENV, str(tmp_path / "locks"))
    events = tmp_path / "events"
    events.mkdir()
    return events


@pytest.fixture
def children():
    started: list[Child] = []
    yield started
    for child in started:  # a failed assertion must not leave processes behind
        child.kill()


def spawn(children: list[Child], folder: Path, name: str, kind: str, **spec) -> Child:
    child = Child(folder, name, kind, **spec)
    children.append(child)
    return child


def release(folder: Path, name: str) -> None:
    (folder / name).touch()


# --- (a) a timing keeps work steps out -----------------------------------------------------------


def test_work_step_waits_for_a_timing_in_another_process(folder, children):
    timer = spawn(children, folder, "timer", "timing", until="release-timer")
    timer.wait_for("enter")
    worker = spawn(children, folder, "worker", "working")
    worker.wait_for("request")
    wait_blocked(worker)
    release(folder, "release-timer")
    timer.finish()
    worker.finish()
    assert worker.t("enter") >= timer.t("leave")


# --- (b) work steps share --------------------------------------------------------------------------


def test_work_steps_of_two_processes_overlap(folder, children):
    # each stays inside until it has seen the other inside: both are in at once, or they time out
    one = spawn(children, folder, "one", "working", until="two.enter")
    two = spawn(children, folder, "two", "working", until="one.enter")
    one.finish()
    two.finish()
    assert max(one.t("enter"), two.t("enter")) <= min(one.t("leave"), two.t("leave"))


# --- (c) timings exclude each other ----------------------------------------------------------------


def test_a_timing_waits_for_another_processes_timing(folder, children):
    first = spawn(children, folder, "first", "timing", until="release-first")
    first.wait_for("enter")
    second = spawn(children, folder, "second", "timing")
    second.wait_for("request")
    wait_blocked(second)
    release(folder, "release-first")
    first.finish()
    second.finish()
    assert second.t("enter") >= first.t("leave")


def test_contending_timings_never_overlap(folder, children):
    racers = [spawn(children, folder, f"r{i}", "timing", after="go", repeat=4, hold=0.03) for i in range(3)]
    release(folder, "go")
    for racer in racers:
        racer.finish()
    spans = sorted((enter, leave) for r in racers for enter, leave in zip(r.events("enter"), r.events("leave"), strict=True))
    assert len(spans) == 12
    for (_, leave), (enter, _) in zip(spans[:-1], spans[1:], strict=True):
        assert enter >= leave, spans


# --- (d) the turnstile ---------------------------------------------------------------------------


def test_timing_waits_for_a_running_step_and_later_steps_queue_behind_it(folder, children):
    long_step = spawn(children, folder, "step", "working", until="release-step")
    long_step.wait_for("enter")
    timer = spawn(children, folder, "timer", "timing", hold=0.2)
    timer.wait_for("request")
    wait_blocked(timer)  # waits for the running step
    late = spawn(children, folder, "late", "working")
    late.wait_for("request")
    wait_blocked(late)  # a step may share with the running one, but not jump ahead of the timing
    release(folder, "release-step")
    for child in (long_step, timer, late):
        child.finish()
    assert timer.t("enter") >= long_step.t("leave")
    assert late.t("enter") >= timer.t("leave")


def test_steps_run_again_after_the_timing(folder, children):
    # the turnstile is a pass-through: once no timing waits, steps of two processes still share
    timer = spawn(children, folder, "timer", "timing", hold=0.1)
    timer.finish()
    one = spawn(children, folder, "one", "working", until="two.enter")
    two = spawn(children, folder, "two", "working", until="one.enter")
    one.finish()
    two.finish()


# --- (e) nesting in one thread ---------------------------------------------------------------------


@pytest.mark.parametrize(("outer", "inner"), [("timing", "timing"), ("working", "timing"),
                                              ("timing", "working"), ("working", "working")])
def test_nesting_in_one_thread_does_not_deadlock(folder, children, outer, inner):
    child = spawn(children, folder, "nest", outer, nested=inner, until="release-nest")
    child.wait_for("nested")  # a deadlock fails here after LIMIT seconds
    if outer == "timing":
        # leaving the inner block did not give up the outer timing
        other = spawn(children, folder, "other", "working")
        other.wait_for("request")
        wait_blocked(other)
        release(folder, "release-nest")
        child.finish()
        other.finish()
        assert other.t("enter") >= child.t("leave")
    else:
        release(folder, "release-nest")
        child.finish()


def test_nesting_in_this_thread_releases_everything(folder, children):
    with cores.timing():
        with cores.timing():
            pass
        with cores.working():
            pass
    with cores.working():
        with cores.timing():
            pass
    # all released: another process gets a timing at once
    other = spawn(children, folder, "other", "timing")
    other.finish()


def test_threads_of_one_process_exclude_each_other(folder):
    inside, release_, order = threading.Event(), threading.Event(), []

    def timer() -> None:
        with cores.timing():
            inside.set()
            release_.wait(LIMIT)
            order.append("timer leaves")

    thread = threading.Thread(target=timer)
    thread.start()
    assert inside.wait(LIMIT)
    stepper = threading.Thread(target=_step_into(order))
    stepper.start()
    wait_blocked(None, os.getpid())
    assert order == []
    release_.set()
    thread.join(LIMIT)
    stepper.join(LIMIT)
    assert order == ["timer leaves", "step enters"]


def _step_into(order: list[str]):
    def step() -> None:
        with cores.working():
            order.append("step enters")

    return step


@pytest.mark.parametrize("kind", ["timing", "working"])
def test_unusable_lock_folder_is_a_one_line_error(tmp_path, monkeypatch, kind):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(cores.LOCK_ENV, str(tmp_path / "a-file" / "locks"))
    with pytest.raises(ConfigError, match=r"core lock folder '.*a-file/locks' cannot be used .*MODELTAILOR_CORES_LOCK"):
        with getattr(cores, kind)():
            pytest.fail("entered without the lock")
    # nothing is left held in this thread: with a usable folder both work again
    monkeypatch.setenv(cores.LOCK_ENV, str(tmp_path / "locks"))
    with cores.timing():
        pass
    with cores.working():
        pass


# --- (f) off ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["off", "OFF", "0", "false", "no"])
def test_lock_dir_off(monkeypatch, setting):
    monkeypatch.setenv(cores.LOCK_ENV, setting)
    assert cores.lock_dir() is None


def test_lock_dir_default_and_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(cores.LOCK_ENV, raising=False)
    monkeypatch.setenv("MODELTAILOR_CACHE", str(tmp_path / "cache"))
    assert cores.lock_dir() == tmp_path / "cache" / "locks"
    monkeypatch.setenv(cores.LOCK_ENV, str(tmp_path / "elsewhere"))
    assert cores.lock_dir() == tmp_path / "elsewhere"
    with cores.timing():
        pass
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["cores.gate", "cores.work"]


def test_off_creates_no_lock_files_and_never_blocks(tmp_path, monkeypatch, children):
    monkeypatch.setenv(cores.LOCK_ENV, "off")
    monkeypatch.setenv("MODELTAILOR_CACHE", str(tmp_path / "cache"))
    events = tmp_path / "events"
    events.mkdir()
    # two timings and a step, all inside at once: each waits inside until it saw the next one in
    a = spawn(children, events, "a", "timing", until="b.enter")
    b = spawn(children, events, "b", "timing", until="c.enter")
    c = spawn(children, events, "c", "working", until="a.enter")
    with cores.timing(), cores.working():
        for child in (a, b, c):
            child.finish()
    assert not (tmp_path / "cache").exists()
    assert not list(tmp_path.rglob("cores.*"))


# --- (g) a killed holder ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["timing", "working"])
def test_a_killed_holder_releases_the_lock(folder, children, kind):
    holder = spawn(children, folder, "holder", kind, forever=True)
    holder.wait_for("enter")
    waiter = spawn(children, folder, "waiter", "timing")
    waiter.wait_for("request")
    wait_blocked(waiter)
    os.kill(holder.proc.pid, signal.SIGKILL)
    assert holder.proc.wait(timeout=LIMIT) == -signal.SIGKILL
    waiter.finish()  # got the lock (the kernel dropped the dead holder's flock)
    assert not holder.has("leave")


# --- the latency measurement takes the timing lock -------------------------------------------------


def tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [vi("x", TensorProto.FLOAT, [1, 8])], [vi("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime release this project supports loads
    return model.SerializeToString()


def test_local_device_measures_only_after_a_running_step(folder, children):
    from modeltailor.devices.local import LocalOrtDevice

    device = LocalOrtDevice(warmup=1, runs=5, rounds=1)
    session = device.session(tiny_onnx())
    device.time_rounds(session)  # unlocked: nothing else holds the cores
    step = spawn(children, folder, "step", "working", until="release-step")
    step.wait_for("enter")
    result: dict[str, object] = {}

    def measure() -> None:
        try:
            result["rounds"] = device.time_rounds(session)
        finally:
            result["end"] = time.monotonic()

    thread = threading.Thread(target=measure)
    thread.start()
    wait_blocked(None, os.getpid())
    assert "end" not in result, "the measurement ran while another process held a work step"
    release(folder, "release-step")
    thread.join(LIMIT)
    step.finish()
    assert result["end"] >= step.t("leave")
    assert sum(len(r) for r in result["rounds"]) == 5
