"""check_release checks the release directory itself like every directory below it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from graven.deploy.materialize import DIR_MODE, build_release, check_release
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.store.local import LocalStore
from helpers_deploy import exit_code_as_deployer, give_to_deployer

FILES = {"a.txt": b"alpha\n", "dir/b.txt": b"beta\n", "bin/run": b"#!/bin/sh\n"}


@pytest.fixture
def manifest(store: LocalStore) -> TreeManifest:
    entries: list[TreeEntry] = [SymlinkEntry("link", "a.txt"), DirEntry("var/empty")]
    with store.batch() as batch:
        for path, data in FILES.items():
            digest = batch.add(data)
            entries.append(FileEntry(path, digest.hex, len(data), executable=path.startswith("bin/")))
    return TreeManifest.of(entries)


def deployed(store: LocalStore, manifest: TreeManifest, root: Path) -> StatTable:
    """A release as a deployment leaves it: built, and the root's record taken."""
    table = StatTable()
    build_release(store, manifest, root, table)
    table.record(os.lstat(root), DIR_SHA)
    return table


def test_an_untouched_release_checks_by_stat(
    tmp_path: Path, store: LocalStore, manifest: TreeManifest
) -> None:
    table = deployed(store, manifest, tmp_path / "r")
    assert check_release(tmp_path / "r", manifest, table).by_stat


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o500])
def test_a_root_with_another_mode_is_a_problem(
    tmp_path: Path, store: LocalStore, manifest: TreeManifest, mode: int
) -> None:
    root = tmp_path / "r"
    table = deployed(store, manifest, root)
    root.chmod(mode)
    for rehash in (True, False):
        check = check_release(root, manifest, table, rehash=rehash)
        assert not check.ok and check.problems == [f"./: mode {mode:04o}"]
    assert stat.S_IMODE(os.lstat(root).st_mode) == mode
    assert not table.matches(os.lstat(root), DIR_SHA)  # the wrong root was not re-recorded


def test_a_root_with_another_mode_is_a_problem_without_records(
    tmp_path: Path, store: LocalStore, manifest: TreeManifest
) -> None:
    root = tmp_path / "r"
    deployed(store, manifest, root)
    root.chmod(0o777)
    check = check_release(root, manifest, StatTable())
    assert check.problems == ["./: mode 0777"]


def test_a_root_whose_mode_is_put_back_checks_and_is_recorded_again(
    tmp_path: Path, store: LocalStore, manifest: TreeManifest
) -> None:
    root = tmp_path / "r"
    table = deployed(store, manifest, root)
    root.chmod(0o777)
    root.chmod(DIR_MODE)  # right mode, new ctime: every entry is read, then the root is recorded
    check = check_release(root, manifest, table)
    assert check.ok and not check.by_stat
    assert check_release(root, manifest, table).by_stat


def test_a_root_that_is_a_symlink_to_a_good_copy_is_a_problem(
    tmp_path: Path, store: LocalStore, manifest: TreeManifest
) -> None:
    table = deployed(store, manifest, tmp_path / "real")
    (tmp_path / "r").symlink_to(tmp_path / "real")
    check = check_release(tmp_path / "r", manifest, table)
    assert not check.ok and check.problems == ["./: not a directory"]


@pytest.mark.parametrize("locked", ["dir", ""])
def test_a_directory_its_deployer_cannot_read_is_a_problem_not_an_error(
    tmp_path: Path, store: LocalStore, manifest: TreeManifest, locked: str
) -> None:
    """A deployer that is not root checks a release in which a directory (or the release directory
    itself) was made 0000: that is a difference, as drift reports it, so that a rollback rebuilds the
    release from the store (remove_tree opens such a directory up) instead of failing on it for good."""
    root = tmp_path / "r"
    table = deployed(store, manifest, root)
    for dirpath, dirs, names in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + names)]:
            give_to_deployer(Path(name))
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # the deployer needs no path to it
    os.chmod(tmp_path, 0o711)

    def as_deployer() -> int:
        release = Path(f"/proc/self/fd/{holder}/r")
        (release / locked).chmod(0o000)
        check = check_release(release, manifest, table)
        expected = f"{locked or '.'}/: cannot be read (Permission denied)"
        return 0 if not check.ok and expected in check.problems else 3

    try:
        assert exit_code_as_deployer(as_deployer) == 0
    finally:
        os.close(holder)
