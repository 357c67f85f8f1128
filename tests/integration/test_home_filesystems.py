"""A GRAVEN_HOME on a file system where SQLite cannot keep its write-ahead log (a FAT through FUSE).

The first write there failed with "disk I/O error: the file system of GRAVEN_HOME is full or failing;
free some space (df)": on a FAT with space to spare, that sent the operator to the wrong fix. The error
now names the file system and what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

CliResult = tuple[int, str, str]


def test_a_home_on_a_fat_names_the_file_system_not_a_full_disk(
    fat: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    home = fat / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    code, out, err = run_cli("keys", "generate")
    assert code != 0, (out, err)
    (line,) = err.splitlines()
    assert line == (
        f"graven: error: cannot open the database {home / 'graven.db'}: disk I/O error on a fuse.fusefat "
        "file system, where SQLite cannot keep graven's database (its write-ahead log needs shared memory "
        "maps and POSIX locks); put GRAVEN_HOME on a local file system (ext4, xfs, btrfs, tmpfs), or set "
        "GRAVEN_DB_URL to a PostgreSQL database"
    )
    assert not list((home / "keys").iterdir())  # no key was written before its trust could be logged
