"""Files of a home damaged underneath graven (a disk, a bad restore, an operator's mistake): every
command gives the right answer (a cache is only a cache) or one line naming the damaged file and what
to do, never an answer as if the damage were the home's real state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import assert_cli_error

Run = Callable[..., tuple[int, str, str]]


def _build(run_cli: Run, repo: Path) -> str:
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    return out.splitlines()[-1]


@pytest.mark.parametrize(
    "command",
    [("show", "{digest}"), ("artifacts",), ("status",), ("verify", "{digest}"), ("build", "-C", "{repo}")],
)
def test_a_database_emptied_to_zero_bytes_is_named_not_taken_for_a_new_home(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, command: tuple[str, ...]
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    digest = _build(run_cli, repo)
    database = graven_home / "graven.db"
    for extra in ("-wal", "-shm"):
        Path(f"{database}{extra}").unlink(missing_ok=True)
    database.write_bytes(b"")  # a truncation, a failed copy, `> graven.db`
    args = [part.format(digest=digest, repo=repo) for part in command]
    assert_cli_error(
        run_cli(*args), 1, f"the database {database} is empty (0 bytes)", "restore it from a backup"
    )
    assert database.stat().st_size == 0  # the evidence is left as it was, no new database made in it


@pytest.mark.parametrize("damage", ["directory", "dangling-symlink"])
def test_a_damaged_pack_lock_is_named_by_the_build_it_stops(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, damage: str
) -> None:
    lock = graven_home / "objects" / "consolidate.lock"
    lock.parent.mkdir(parents=True)
    if damage == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "gone" / "consolidate.lock")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    assert_cli_error(run_cli("build", "-C", repo), 1, f"cannot open {lock}: ", "remove it")
    assert not list((graven_home / "objects" / "tmp").iterdir())  # nothing of the batch left behind
