"""common/jsonl_log.py: concurrent writers never interleave, a finished append survives kill -9,
a torn last line is skipped by readers and fenced off by the next writer."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modeltailor.common.jsonl_log import JsonlLog, LogContents
from modeltailor.errors import ModelTailorError


def test_records_read_back_in_order(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "sub" / "dir" / "log.jsonl")
    assert log.read() == LogContents(records=[], skipped=0)
    log.append({"b": 2, "a": [1, 2.5, None], "s": "x\ny"})
    log.extend([{"n": 1}, {"n": 2, "nested": {"k": "v"}}])
    log.extend([])
    log.append({"n": 3})
    contents = log.read()
    assert contents.records == [{"b": 2, "a": [1, 2.5, None], "s": "x\ny"}, {"n": 1},
                                {"n": 2, "nested": {"k": "v"}}, {"n": 3}]
    assert contents.skipped == 0
    lines = log.path.read_text().splitlines()
    assert lines[0] == '{"a":[1,2.5,null],"b":2,"s":"x\\ny"}'  # compact, keys sorted, one line
    assert len(lines) == 4


def _write_records(path: str, writer: int, count: int) -> None:
    log = JsonlLog(Path(path))
    for i in range(count):
        log.append({"writer": writer, "i": i, "pad": "x" * 4096})


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_records, args=(str(path), w, 100)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=30)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 400
    records = [json.loads(line) for line in lines]  # every line parses on its own
    assert sorted((r["writer"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(100)]
    assert all(r["pad"] == "x" * 4096 for r in records)
    for w in range(4):  # each writer's records in the order it appended them
        assert [r["i"] for r in records if r["writer"] == w] == list(range(100))
    assert JsonlLog(path).read() == LogContents(records=records, skipped=0)


def test_a_torn_line_is_skipped_and_fenced_off(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "log.jsonl")
    log.extend([{"n": 1}, {"n": 2}])
    with open(log.path, "a") as handle:
        handle.write('{"a": 1, "b')  # a writer killed mid-record
    assert log.read() == LogContents(records=[{"n": 1}, {"n": 2}], skipped=1)
    log.append({"n": 3})
    assert log.read() == LogContents(records=[{"n": 1}, {"n": 2}, {"n": 3}], skipped=1)
    assert log.path.read_text().splitlines()[-2:] == ['{"a": 1, "b', '{"n":3}']


def test_blank_lines_are_ignored_and_non_objects_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"n":1}\n\n  \n[1,2]\n"text"\n\xff\xfe\n{"n":2}\n')
    assert JsonlLog(path).read() == LogContents(records=[{"n": 1}, {"n": 2}], skipped=3)


WRITER = """
import sys
from pathlib import Path
from modeltailor.common.jsonl_log import JsonlLog
log = JsonlLog(Path(sys.argv[1]))
i = 0
while True:
    log.append({"i": i, "pad": "y" * 65536})
    print(i, flush=True)
    i += 1
"""


def test_kill_9_loses_no_finished_append(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(20, process.kill)  # a hung writer fails the test instead of hanging it
    watchdog.start()
    try:
        printed: list[int] = []
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(int(line))
            if len(printed) >= 50:
                process.send_signal(signal.SIGKILL)
                break
        rest, _ = process.communicate(timeout=10)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == -signal.SIGKILL
    printed += [int(line) for line in rest.split()]  # printed before the kill landed
    assert len(printed) >= 50
    contents = JsonlLog(path).read()
    assert contents.skipped <= 1
    assert all(set(r) == {"i", "pad"} and r["pad"] == "y" * 65536 for r in contents.records)
    indices = [r["i"] for r in contents.records]
    assert indices == list(range(len(indices)))  # in order, none twice, none missing
    assert set(printed) <= set(indices)  # a finished append is never lost

    JsonlLog(path).append({"i": "after"})  # the dead writer's lock is free; a torn line is fenced off
    after = JsonlLog(path).read()
    assert after.records == [*contents.records, {"i": "after"}]
    assert after.skipped == contents.skipped


def test_a_folder_as_the_path_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "experience"
    folder.mkdir()
    log = JsonlLog(folder)
    with pytest.raises(ModelTailorError, match="is a folder") as raised:
        log.append({"n": 1})
    assert str(folder) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ModelTailorError, match="is a folder") as raised:
        log.read()
    assert str(folder) in str(raised.value)
    assert list(folder.iterdir()) == []


def test_a_path_under_a_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    path = tmp_path / "plain" / "log.jsonl"
    with pytest.raises(ModelTailorError, match="cannot be written") as raised:
        JsonlLog(path).append({"n": 1})
    assert str(path) in str(raised.value)
