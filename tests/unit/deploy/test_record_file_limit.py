"""Records files beside a deployment (PATH/.graven/stat, drift/cache, drift/clean) are never read past
a size limit: whoever can write PATH must not make graven read gigabytes from a sparse file."""

from __future__ import annotations

from pathlib import Path

from graven.deploy.recordkey import MAX_RECORD_FILE, read_record_file
from graven.deploy.statdb import StatTable


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)  # costs no disk
    return path


def test_a_file_over_the_limit_is_not_read(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"x" * 100)
    assert read_record_file(small, limit=100) == b"x" * 100
    assert read_record_file(small, limit=99) is None
    huge = _sparse(tmp_path / "stat", MAX_RECORD_FILE + 1)
    assert read_record_file(huge) is None


def test_a_huge_stat_table_is_an_empty_one(tmp_path: Path) -> None:
    table = StatTable.load(_sparse(tmp_path / "stat", 8 << 30), b"k" * 32)
    assert table.inodes == {} and table.dev is None  # files are then checked by content
