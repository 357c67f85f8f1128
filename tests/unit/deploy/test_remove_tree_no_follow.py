"""remove_tree deletes a tree through directory descriptors: a directory swapped for a symbolic link
(or for another directory) while the tree is being removed stops the removal; nothing outside the tree
is deleted or has its mode changed (the `rm -rf` race)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graven.deploy import materialize
from graven.deploy.statdb import StatTable
from graven.errors import BackendError
from helpers_deploy import exit_code_as_deployer, give_to_deployer


def _world(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o750)
    outside.chmod(0o750)
    (outside / "precious.txt").write_text("keep me\n")
    tree = tmp_path / "env" / "releases" / ".trash-planted"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    (tree / "sub" / "deeper" / "g").write_text("y")
    (tree / "top").write_text("z")
    return tree, outside


class _Listed:
    """What os.scandir gives, already read: a context manager and an iterator."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = iter(entries)

    def __enter__(self) -> _Listed:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def __iter__(self) -> _Listed:
        return self

    def __next__(self) -> os.DirEntry[str]:
        return next(self._entries)


def _swap_after_listing(monkeypatch: pytest.MonkeyPatch, tree: Path, swap: Callable[[], None]) -> None:
    """Run ``swap()`` right after remove_tree has listed ``tree`` (and before it goes below): the
    attacker's window, whichever way the listing is asked for (by path or by descriptor)."""
    real_scandir = os.scandir
    done: list[bool] = []

    def racing_scandir(arg: Any) -> _Listed:
        with real_scandir(arg) as it:
            entries = list(it)
        if not done and "sub" in {e.name for e in entries} and "top" in {e.name for e in entries}:
            done.append(True)
            swap()
        return _Listed(entries)

    monkeypatch.setattr(os, "scandir", racing_scandir)


def test_a_directory_swapped_for_a_symlink_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, outside = _world(tmp_path)

    def to_symlink() -> None:
        os.rename(tree / "sub", tree / "sub.moved")
        os.symlink(outside, tree / "sub")

    _swap_after_listing(monkeypatch, tree, to_symlink)
    with pytest.raises(BackendError, match="cannot remove"):
        materialize.remove_tree(tree, StatTable())
    assert sorted(os.listdir(outside)) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me\n"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o750


def test_a_directory_swapped_for_another_directory_is_not_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, outside = _world(tmp_path)

    def to_other_dir() -> None:
        os.rename(tree / "sub", tree / "sub.moved")
        os.rename(outside, tree / "sub")  # someone else's directory, moved in under the listed name

    _swap_after_listing(monkeypatch, tree, to_other_dir)
    with pytest.raises(BackendError, match="cannot remove"):
        materialize.remove_tree(tree, StatTable())
    moved = tree / "sub"
    assert sorted(os.listdir(moved)) == ["precious.txt"]
    assert stat.S_IMODE(moved.stat().st_mode) == 0o750


def test_a_tree_is_removed_whole_and_a_symlink_at_the_top_is_unlinked_not_followed(tmp_path: Path) -> None:
    tree, outside = _world(tmp_path)
    (tree / "sub" / "deeper").chmod(0o555)
    (tree / "sub").chmod(0o555)
    (tree / "link").symlink_to(outside)
    materialize.remove_tree(tree, StatTable())
    assert not tree.exists()
    top = tmp_path / "env" / "releases" / "top-link"
    top.symlink_to(outside)
    materialize.remove_tree(top, StatTable())
    assert not top.exists() and not top.is_symlink()
    assert sorted(os.listdir(outside)) == ["precious.txt"]
    materialize.remove_tree(tmp_path / "nothing-here")  # gone already: fine


def test_a_directory_without_read_access_is_opened_up_and_removed_by_its_owner(tmp_path: Path) -> None:
    """For a deployer that is not root: a 0000 directory in a tree it owns is made readable through
    its parent (never through a link) and removed."""
    tree = tmp_path / "tree"
    (tree / "locked" / "inner").mkdir(parents=True)
    (tree / "locked" / "inner" / "f").write_text("x")
    give_to_deployer(tree, tree / "locked", tree / "locked" / "inner", tree / "locked" / "inner" / "f")
    (tree / "locked").chmod(0o000)
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # the deployer needs no path to it
    os.chmod(tmp_path, 0o777)  # the deployer removes "tree" from it

    def as_deployer() -> int:
        materialize.remove_tree(Path(f"/proc/self/fd/{holder}/tree"))
        return 0

    try:
        assert exit_code_as_deployer(as_deployer) == 0
    finally:
        os.close(holder)
    assert not tree.exists()


def test_with_parent_nofollow_a_symlinked_parent_is_not_followed(tmp_path: Path) -> None:
    _tree, outside = _world(tmp_path)
    (outside / ".trash-x").mkdir()
    releases = tmp_path / "env" / "releases"
    os.rename(releases, tmp_path / "moved")
    releases.symlink_to(outside)
    with pytest.raises(BackendError, match="cannot remove"):
        materialize.remove_tree(releases / ".trash-x", StatTable(), parent_nofollow=True)
    assert (outside / ".trash-x").is_dir()
    materialize.remove_tree(releases / ".trash-x", StatTable())  # a parent path may be a link otherwise
    assert not (outside / ".trash-x").exists()


def test_an_entry_that_vanishes_meanwhile_does_not_stop_the_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, _outside = _world(tmp_path)

    def vanish() -> None:
        os.unlink(tree / "top")  # listed, then removed by someone else before graven gets to it

    _swap_after_listing(monkeypatch, tree, vanish)
    materialize.remove_tree(tree, StatTable())
    assert not tree.exists()


def test_a_locked_directory_swapped_for_a_symlink_before_its_chmod_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory the deployer cannot read is opened up with chmod(2) through its parent, never via a
    link: one swapped for a symbolic link between the refused open and that chmod makes Python's
    ``os.chmod(..., dir_fd=, follow_symlinks=False)`` raise ValueError (glibc answers EOPNOTSUPP for a
    link; so it does for every name on glibc < 2.32 or without /proc): a BackendError naming the tree,
    never a traceback, and nothing outside the tree changes."""
    tree, outside = _world(tmp_path)
    real_open = os.open
    swapped: list[bool] = []

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "sub" and kwargs.get("dir_fd") is not None and not swapped:
            swapped.append(True)
            os.rename(tree / "sub", tree / "sub.moved")
            os.symlink(outside, tree / "sub")
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(BackendError, match="cannot remove"):
        materialize.remove_tree(tree, StatTable())
    assert swapped
    assert sorted(os.listdir(outside)) == ["precious.txt"]
    assert stat.S_IMODE(outside.stat().st_mode) == 0o750
