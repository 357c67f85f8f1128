"""Racy stat records: a file changed in the same tick of the file system's clock as graven recorded
it keeps its times, so such a record must never be trusted (a time review: on a file system with 1 s
timestamps an activate hook's edit was hard-linked into the next release, and drift said clean)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from graven.deploy import statdb
from graven.deploy.statdb import UNKNOWN_CTIME, StatTable

KEY = b"k" * 32
SHA = "ab" * 32


def _file(path: Path, data: bytes = b"v1\n") -> os.stat_result:
    path.write_bytes(data)
    return os.lstat(path)


def test_a_record_of_this_tick_is_saved_as_unknown_and_never_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = _file(tmp_path / "old"), _file(tmp_path / "new")
    tick = new.st_ctime_ns  # a clock that does not move past the newest record (a 1 s tick, say)
    monkeypatch.setattr(statdb, "_fs_now", lambda fd: lambda: tick)
    monkeypatch.setattr(statdb, "_RACY_WAIT", 0.01)
    table = StatTable()
    table.record(os.lstat(tmp_path / "old"), SHA)
    table.record(new, SHA)
    if old.st_ctime_ns >= tick:  # both made in one tick of this file system: make "old" older
        table.inodes[old.st_ino] = (*table.inodes[old.st_ino][:3], tick - 1, old.st_mode)
        old = os.lstat(tmp_path / "old")
    table.save(tmp_path / "stat", KEY)
    loaded = StatTable.load(tmp_path / "stat", KEY)
    assert loaded.inodes[new.st_ino][3] == UNKNOWN_CTIME
    assert not loaded.matches(new, SHA)  # an edit in the same tick would look exactly like this
    assert loaded.inodes[old.st_ino][3] != UNKNOWN_CTIME


def test_save_waits_for_a_coarse_clock_to_pass_the_newest_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _file(tmp_path / "f")
    readings: Iterator[int] = iter([st.st_ctime_ns, st.st_ctime_ns, st.st_ctime_ns + 4_000_000])
    monkeypatch.setattr(statdb, "_fs_now", lambda fd: lambda: next(readings))
    slept: list[float] = []  # what save() sleeps, counted rather than timed (a busy machine is slow)
    monkeypatch.setattr(statdb, "time", SimpleNamespace(sleep=slept.append))
    table = StatTable()
    table.record(st, SHA)
    table.save(tmp_path / "stat", KEY)
    assert len(slept) == 2 and sum(slept) < 0.01, slept  # a nap per reading not past the record
    assert StatTable.load(tmp_path / "stat", KEY).matches(st, SHA)  # the clock moved on: trusted


def test_with_the_real_clock_records_are_trusted_and_older_than_the_table_file(tmp_path: Path) -> None:
    table = StatTable()
    files = [_file(tmp_path / f"f{i}", b"x" * i) for i in range(50)]
    for st in files:
        table.record(st, SHA)
    table.save(tmp_path / "stat", KEY)
    loaded = StatTable.load(tmp_path / "stat", KEY)
    recorded_at = os.stat(tmp_path / "stat").st_mtime_ns  # what a drift check takes as their time
    for st in files:
        ctime = loaded.inodes[st.st_ino][3]
        assert ctime == UNKNOWN_CTIME or (ctime < recorded_at and loaded.matches(st, SHA))
    assert sum(loaded.matches(st, SHA) for st in files) == len(files)  # a fine clock: none racy


def test_a_changed_file_never_matches_a_smudged_or_a_kept_record(tmp_path: Path) -> None:
    path = tmp_path / "f"
    st = _file(path)
    table = StatTable()
    table.record(st, SHA)
    table.save(tmp_path / "stat", KEY)
    time.sleep(0.01)
    path.write_bytes(b"v2\n")  # same size
    assert not StatTable.load(tmp_path / "stat", KEY).matches(os.lstat(path), SHA)


def test_a_whole_second_clock_is_waited_for_so_a_fresh_release_stays_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review on ext4 with 1 s timestamps: every record of a fresh release fell in the save's
    second, so every one was written unknown and each next deploy copied every file instead of
    linking it. With whole-second times the save waits (up to 2.1 s) for the next second."""
    st = _file(tmp_path / "f")
    second = st.st_ctime_ns - st.st_ctime_ns % 1_000_000_000
    table = StatTable()
    table.record(st, SHA)
    table.inodes[st.st_ino] = (SHA, st.st_size, second, second, st.st_mode)  # as a coarse fs stamps it
    readings = iter([second] * 30 + [second + 1_000_000_000] * 5)
    monkeypatch.setattr(statdb, "_fs_now", lambda fd: lambda: next(readings))
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    table.save(tmp_path / "stat", KEY)
    assert StatTable.load(tmp_path / "stat", KEY).inodes[st.st_ino][3] == second  # trusted
    assert len(slept) == 30  # waited for the clock's next second, well past the usual 50 ms


def test_a_table_written_before_racy_records_were_known_is_ignored(tmp_path: Path) -> None:
    """A review: a v2 table (graven 0.3.0) may hold a record an activate hook's edit in the same
    second left matching; after an upgrade the next deploy linked the edited file. v2 reads as empty."""
    from graven.deploy.recordkey import tag

    st = _file(tmp_path / "f")
    table = StatTable()
    table.record(st, SHA)
    table.save(tmp_path / "stat", KEY)
    data = (tmp_path / "stat").read_bytes()[: -len(tag(KEY, b""))]
    assert data.startswith(b"GRVNSTAT\x00\x05")
    old = b"GRVNSTAT\x00\x02" + data[10:-4]  # the layout of v3: no owners nor groups
    (tmp_path / "stat").write_bytes(old + tag(KEY, old))
    assert StatTable.load(tmp_path / "stat", KEY).inodes == {}
