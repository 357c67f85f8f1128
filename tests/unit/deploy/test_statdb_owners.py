"""The stat table records who deployed each release (since graven.deploy-stat/v4): drift and heal hold every
path to that uid, not to the release directory's owner, which a `chown` of that directory alone
changed. A v3 table is still read, with no owner recorded."""

from __future__ import annotations

import os
from pathlib import Path

from graven.deploy.recordkey import tag
from graven.deploy.statdb import STAT_FORMAT, StatTable, recorded_owner

KEY = b"k" * 32
SHA = "ab" * 32
R1, R2 = "1" * 64, "2" * 64


def _table(tmp_path: Path) -> tuple[StatTable, os.stat_result]:
    (tmp_path / "f").write_bytes(b"v1\n")
    st = os.lstat(tmp_path / "f")
    table = StatTable()
    table.record(st, SHA)
    table.set_owner(R1, 1000)
    table.set_owner(R2, 0)
    return table, st


def test_owners_are_saved_loaded_and_read_alone(tmp_path: Path) -> None:
    table, st = _table(tmp_path)
    table.save(tmp_path / "stat", KEY)
    assert STAT_FORMAT == "graven.deploy-stat/v5"  # v5: each release's group too (test_statdb_groups)
    assert (tmp_path / "stat").read_bytes().startswith(b"GRVNSTAT\x00\x05")
    loaded = StatTable.load(tmp_path / "stat", KEY)
    assert loaded.owners == {R1: 1000, R2: 0}
    assert loaded.owner(R1) == 1000 and loaded.owner("3" * 64) is None
    assert set(loaded.inodes) == {st.st_ino}
    assert [recorded_owner(tmp_path / "stat", KEY, r) for r in (R1, R2, "3" * 64)] == [1000, 0, None]
    loaded.forget_owner(R1)
    loaded.save(tmp_path / "stat", KEY)
    assert StatTable.load(tmp_path / "stat", KEY).owners == {R2: 0}


def test_owners_count_only_under_the_key_and_whole(tmp_path: Path) -> None:
    """Whoever can write PATH cannot name another deployer: the owners are under the table's tag, and a
    table whose parts do not add up is read as empty."""
    table, _st = _table(tmp_path)
    table.save(tmp_path / "stat", KEY)
    assert recorded_owner(tmp_path / "stat", b"o" * 32, R1) is None
    assert StatTable.load(tmp_path / "stat", b"o" * 32).owners == {}
    body = (tmp_path / "stat").read_bytes()[:-32]
    for cut in (body[:-1], body + b"\0"):  # an owner cut short, or one byte more: re-tagged, still refused
        (tmp_path / "bad").write_bytes(cut + tag(KEY, cut))
        assert StatTable.load(tmp_path / "bad", KEY) == StatTable()
        assert recorded_owner(tmp_path / "bad", KEY, R1) is None
    assert recorded_owner(tmp_path / "missing", KEY, R1) is None


def test_a_v3_table_keeps_its_records_and_records_no_owner(tmp_path: Path) -> None:
    """A table an older graven wrote (v3: the records, no owners) is trusted as before; its releases'
    owners are their directories' until a deploy or a heal writes v5."""
    table, st = _table(tmp_path)
    table.owners.clear()
    table.save(tmp_path / "stat", KEY)
    data = (tmp_path / "stat").read_bytes()[:-32]
    old = b"GRVNSTAT\x00\x03" + data[10:-4]  # without the count of owners (zero)
    (tmp_path / "stat").write_bytes(old + tag(KEY, old))
    loaded = StatTable.load(tmp_path / "stat", KEY)
    assert loaded.inodes == table.inodes and loaded.owners == {}
    assert recorded_owner(tmp_path / "stat", KEY, R1) is None
    assert set(loaded.inodes) == {st.st_ino}
