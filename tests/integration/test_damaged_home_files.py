"""Files of a home damaged underneath graven (a disk, a bad restore, an operator's mistake): every
command gives the right answer (a cache is only a cache) or one line naming the damaged file and what
to do, never an answer as if the damage were the home's real state."""

from __future__ import annotations

import os
import tempfile
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


@pytest.mark.parametrize(
    "command",
    [("show", "{digest}"), ("artifacts",), ("status",), ("log",), ("build", "-C", "{repo}")],
)
def test_a_database_that_is_a_link_to_nothing_is_named_not_taken_for_a_new_home(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, command: tuple[str, ...]
) -> None:
    """graven.db a symlink to a volume that is not mounted: the reading commands answered as in a new
    home (no artifacts, nothing deployed, exit 0), the writing ones with SQLite's 'its directory is
    missing or not writable'."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    digest = _build(run_cli, repo)
    database = graven_home / "graven.db"
    volume = tmp_path / "volume"
    volume.mkdir()
    for extra in ("", "-wal", "-shm"):
        if Path(f"{database}{extra}").exists():
            os.rename(f"{database}{extra}", volume / f"graven.db{extra}")
    database.symlink_to(tmp_path / "unmounted" / "graven.db")
    args = [part.format(digest=digest, repo=repo) for part in command]
    assert_cli_error(run_cli(*args), 2, f"the database {database} is a link to ", "mount or restore")
    assert not (tmp_path / "unmounted").exists()


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


@pytest.mark.needs_root("makes the database unreadable for a user that is not root")
def test_a_database_file_this_user_cannot_open_is_named_with_its_mode_not_its_directory() -> None:
    from graven.db import Database
    from graven.errors import BackendError
    from helpers_deploy import NOBODY, exit_code_as_nobody

    with tempfile.TemporaryDirectory(prefix="graven-test-") as top:  # pytest's tmp_path: root's only
        os.chmod(top, 0o755)
        home = Path(top) / "home"
        home.mkdir()
        path = home / "graven.db"
        Database.open(f"sqlite:///{path}").close()
        for item in (home, *home.iterdir()):
            os.chown(item, NOBODY, NOBODY)
        path.chmod(0)  # an operator's chmod, a restore with the wrong mode

        def open_it() -> int:
            try:
                Database.open(f"sqlite:///{path}").close()
            except BackendError as exc:
                print(exc.message)
                wanted = f"cannot open the database {path}: this user cannot read and write it (mode 0000"
                return 0 if exc.message.startswith(wanted) and "directory" not in exc.message else 3
            return 4

        assert exit_code_as_nobody(open_it) == 0
