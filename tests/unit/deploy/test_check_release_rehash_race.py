"""check_release vouches (records the stat of) only the file it hashed: a directory swapped for a good
copy only while a changed file is hashed never gets the bad inode recorded as good, so no later deploy
hard-links it forward. Also: a file owned by someone else is never vouched for."""

from __future__ import annotations

import builtins
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graven.deploy import materialize
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.model.manifest import FileEntry, TreeManifest
from helpers_deploy import opened_up

GOOD, BAD = b"print('good')\n", b"print('EVIL')\n"
SHA = hashlib.sha256(GOOD).hexdigest()


def _release(tmp_path: Path) -> tuple[Path, TreeManifest, StatTable]:
    release = tmp_path / "env" / "releases" / ("a" * 64)
    (release / "lib" / "sub").mkdir(parents=True)
    manifest = TreeManifest.of(
        [FileEntry("lib/sub/app.py", SHA, len(GOOD)), FileEntry("lib/z.py", SHA, len(GOOD))]
    )
    table = StatTable()
    for rel in ("lib/sub/app.py", "lib/z.py"):
        (release / rel).write_bytes(GOOD)
        os.chmod(release / rel, materialize.file_mode(False))
        table.record(os.lstat(release / rel), SHA)
    for directory in (release / "lib" / "sub", release / "lib", release):
        os.chmod(directory, 0o555)
        table.record(os.lstat(directory), DIR_SHA)
    assert materialize.check_release(release, manifest, table).by_stat
    return release, manifest, table


def _tamper(release: Path, stash: Path) -> None:
    """Whoever can write the release puts bad bytes (same size, mode) in place of lib/sub, and keeps a
    good copy of it at hand."""
    lib = release / "lib"
    with opened_up(lib, lib / "sub"):  # a directory moved elsewhere must be writable (its "..")
        os.rename(lib / "sub", stash / "sub.orig")
        (lib / "sub").mkdir()
        (lib / "sub" / "app.py").write_bytes(BAD)
        os.chmod(lib / "sub" / "app.py", materialize.file_mode(False))
    (stash / "sub.good").mkdir()
    (stash / "sub.good" / "app.py").write_bytes(GOOD)
    os.chmod(stash / "sub.good" / "app.py", materialize.file_mode(False))
    for directory in (stash / "sub.good", lib / "sub"):
        os.chmod(directory, 0o555)


def _race_on_open(
    monkeypatch: pytest.MonkeyPatch, name: str, swap: Callable[[], None], back: Callable[[], None]
) -> None:
    """Swap the good copy in just before the check opens ``name`` to hash it, and back right after
    (however it opens it: by path or through a directory descriptor)."""
    real_os_open, real_open = os.open, builtins.open
    done: list[bool] = []

    def hooked(path: Any) -> bool:
        hit = not done and str(path).endswith(name)
        if hit:
            done.append(True)
            swap()
        return hit

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        hit = hooked(path)
        try:
            return real_os_open(path, flags, mode, dir_fd=dir_fd)
        finally:
            if hit:
                back()

    def py_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        hit = hooked(path)
        try:
            return real_open(path, *args, **kwargs)
        finally:
            if hit:
                back()

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(materialize, "open", py_open, raising=False)


def test_a_good_copy_swapped_in_only_for_the_hash_is_not_vouched_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, manifest, table = _release(tmp_path)
    stash = tmp_path / "attacker"
    stash.mkdir()
    _tamper(release, stash)
    lib = release / "lib"

    def swap() -> None:
        with opened_up(lib, lib / "sub", stash / "sub.good"):
            os.rename(lib / "sub", stash / "sub.bad")
            os.rename(stash / "sub.good", lib / "sub")

    def back() -> None:
        with opened_up(lib, lib / "sub", stash / "sub.bad"):
            os.rename(lib / "sub", stash / "sub.good")
            os.rename(stash / "sub.bad", lib / "sub")

    with monkeypatch.context() as patched:
        _race_on_open(patched, "app.py", swap, back)
        check = materialize.check_release(release, manifest, table)
    assert (release / "lib/sub/app.py").read_bytes() == BAD  # the attacker's state, as left
    assert not check.ok
    assert "lib/sub/app.py: content changed since it was deployed" in check.problems
    assert not table.matches(os.lstat(release / "lib/sub/app.py"), SHA)  # never recorded as good
    assert not materialize.check_release(release, manifest, table).ok


def test_a_changed_stat_with_the_right_bytes_is_vouched_for_again(tmp_path: Path) -> None:
    release, manifest, table = _release(tmp_path)
    os.utime(release / "lib/z.py", ns=(1, 1))  # touched: the stat changed, the bytes did not
    check = materialize.check_release(release, manifest, table)
    assert check.ok and check.rehashed == 1
    assert table.matches(os.lstat(release / "lib/z.py"), SHA)


@pytest.mark.needs_root("making a file owned by another user needs root")
def test_a_file_owned_by_someone_else_is_not_vouched_for(tmp_path: Path) -> None:
    release, manifest, table = _release(tmp_path)
    os.chown(release / "lib/z.py", 65534, 65534)  # right bytes, someone else's inode
    check = materialize.check_release(release, manifest, table)
    assert "lib/z.py: content changed since it was deployed" in check.problems
