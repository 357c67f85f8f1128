"""The stat table records the group of each release beside its deployer (graven.deploy-stat/v5): the gid
of PATH/releases/<hex> when graven renamed it into place, which every path it made there has (the
deployer's egid, or the group of a setgid environment directory). A v4 table is still read: its owners
with no group recorded."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from graven.deploy.recordkey import tag
from graven.deploy.statdb import STAT_FORMAT, StatTable, recorded_deployer, recorded_owner

KEY = b"k" * 32
SHA = "ab" * 32
R1, R2, R3 = "1" * 64, "2" * 64, "3" * 64


def _table(tmp_path: Path) -> tuple[StatTable, os.stat_result]:
    (tmp_path / "f").write_bytes(b"v1\n")
    st = os.lstat(tmp_path / "f")
    table = StatTable()
    table.record(st, SHA)
    table.set_owner(R1, 1000)
    table.set_group(R1, 2000)
    table.set_owner(R2, 0)
    table.set_group(R2, 0)
    table.set_owner(R3, 1001)  # an owner taken over from a v4 table: no group recorded yet
    return table, st


def test_groups_are_saved_loaded_and_read_alone(tmp_path: Path) -> None:
    table, st = _table(tmp_path)
    table.save(tmp_path / "stat", KEY)
    assert STAT_FORMAT == "graven.deploy-stat/v5"
    assert (tmp_path / "stat").read_bytes().startswith(b"GRVNSTAT\x00\x05")
    loaded = StatTable.load(tmp_path / "stat", KEY)
    assert loaded.owners == {R1: 1000, R2: 0, R3: 1001}
    assert loaded.groups == {R1: 2000, R2: 0}
    assert [loaded.group(r) for r in (R1, R2, R3, "4" * 64)] == [2000, 0, None, None]
    assert set(loaded.inodes) == {st.st_ino}
    assert [recorded_deployer(tmp_path / "stat", KEY, r) for r in (R1, R2, R3, "4" * 64)] == [
        (1000, 2000),
        (0, 0),
        (1001, None),
        (None, None),
    ]
    assert recorded_owner(tmp_path / "stat", KEY, R1) == 1000
    loaded.forget_owner(R1)  # a deleted release: its owner and its group
    loaded.save(tmp_path / "stat", KEY)
    again = StatTable.load(tmp_path / "stat", KEY)
    assert again.owners == {R2: 0, R3: 1001} and again.groups == {R2: 0}


def test_the_largest_ids_are_ids_and_none_is_no_id(tmp_path: Path) -> None:
    """A uid or gid of 2**32 - 2 is recorded as it is; 2**32 - 1 (the kernel's 'no change', never an
    id) stands for none recorded."""
    table = StatTable()
    table.set_owner(R1, 2**32 - 2)
    table.set_group(R1, 2**32 - 2)
    table.set_group(R2, 5)  # a group without an owner: kept as such
    table.save(tmp_path / "stat", KEY)
    loaded = StatTable.load(tmp_path / "stat", KEY)
    assert loaded.owners == {R1: 2**32 - 2} and loaded.groups == {R1: 2**32 - 2, R2: 5}


def test_groups_count_only_under_the_key_and_whole(tmp_path: Path) -> None:
    table, _st = _table(tmp_path)
    table.save(tmp_path / "stat", KEY)
    assert recorded_deployer(tmp_path / "stat", b"o" * 32, R1) == (None, None)
    body = (tmp_path / "stat").read_bytes()[:-32]
    for cut in (body[:-1], body[:-4], body + b"\0"):  # a group cut short or missing, one byte more
        (tmp_path / "bad").write_bytes(cut + tag(KEY, cut))
        assert StatTable.load(tmp_path / "bad", KEY) == StatTable()
        assert recorded_deployer(tmp_path / "bad", KEY, R1) == (None, None)


def test_a_v4_table_keeps_its_records_and_owners_and_records_no_group(tmp_path: Path) -> None:
    """A table the graven before this one wrote (v4: the records and each release's owner) is trusted
    as before; its releases have no group recorded until a deploy finds them intact."""
    (tmp_path / "f").write_bytes(b"v1\n")
    st = os.lstat(tmp_path / "f")
    table = StatTable()
    table.record(st, SHA)
    table.save(tmp_path / "stat", KEY)
    data = (tmp_path / "stat").read_bytes()[:-32]
    v4 = b"".join(
        [
            b"GRVNSTAT\x00\x04",
            data[10:-4],  # the head and the records, without the count of releases (zero)
            struct.pack(">I", 2),
            bytes.fromhex(R1) + struct.pack(">I", 1000),
            bytes.fromhex(R2) + struct.pack(">I", 0),
        ]
    )
    (tmp_path / "stat").write_bytes(v4 + tag(KEY, v4))
    loaded = StatTable.load(tmp_path / "stat", KEY)
    assert loaded.inodes == table.inodes
    assert loaded.owners == {R1: 1000, R2: 0} and loaded.groups == {}
    assert recorded_deployer(tmp_path / "stat", KEY, R1) == (1000, None)
    loaded.save(tmp_path / "stat", KEY)  # written as v5, the owners kept
    assert (tmp_path / "stat").read_bytes().startswith(b"GRVNSTAT\x00\x05")
    assert StatTable.load(tmp_path / "stat", KEY).owners == {R1: 1000, R2: 0}
