"""A step can nest directories as deep as it likes (``mkdir a && cd a``, over and over): deeper than
Python's recursion limit (about 1,000 levels, where ``shutil.rmtree`` and a recursive walk of Python 3.11
raise RecursionError) and than PATH_MAX. Collecting the outputs and removing the workspace must not
crash on such a tree: the outputs are collected or refused in one line, and the workspace goes away."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from graven.build.tree import collect_tree
from graven.build.workspace import copy_tree, remove_tree
from graven.core.globs import Selection
from graven.errors import InputError
from graven.fstree import make_dirs
from graven.model.manifest import FileEntry
from graven.store.local import LocalStore
from helpers_repo import nest

RECURSION_DEEP = 1_200  # past Python's default recursion limit; a path of about 2,400 bytes
PATH_MAX_DEEP = 2_100  # "ab/" 2,100 times: 6,300 bytes, past PATH_MAX (4,096)


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """pytest's own clean-up of old temp directories (shutil.rmtree) cannot remove these trees."""
    yield
    assert remove_tree(tmp_path) is None


@pytest.mark.parametrize("levels", [RECURSION_DEEP, PATH_MAX_DEEP])
def test_a_deep_tree_is_removed(tmp_path: Path, levels: int) -> None:
    top = tmp_path / "graven-build-x"
    nest(top / "work" / "junk", levels, "ab", content=b"deep\n", locked=True)
    os.chmod(top / "work", stat.S_IRUSR | stat.S_IXUSR)  # read-only on the way down too
    assert remove_tree(top) is None
    assert not os.path.lexists(top)


def test_deep_outputs_are_collected(tmp_path: Path) -> None:
    nest(tmp_path / "work" / "out", RECURSION_DEEP, content=b"deep\n", locked=True)
    os.chmod(tmp_path / "work" / "out" / "/".join(["a"] * RECURSION_DEEP) / "locked", 0o700)
    store = LocalStore.at(tmp_path / "objects")
    try:
        with store.batch() as batch:
            entries = collect_tree(tmp_path / "work", ["out/"], Selection.of(["**"], []), batch)
    finally:
        store.close()
    deep = "out/" + "a/" * RECURSION_DEEP
    assert [e.path for e in entries] == [f"{deep}f", f"{deep}locked"]
    assert isinstance(entries[0], FileEntry) and entries[0].size == 5


def test_outputs_past_path_max_are_one_short_line(tmp_path: Path) -> None:
    nest(tmp_path / "work" / "out", PATH_MAX_DEEP, "ab", content=b"deep\n", locked=True)
    store = LocalStore.at(tmp_path / "objects")
    try:
        with store.batch() as batch, pytest.raises(InputError) as raised:
            collect_tree(tmp_path / "work", ["out/"], Selection.of(["**"], []), batch)
    finally:
        store.close()
    message = str(raised.value)
    assert message.startswith("[build] outputs: ") and "out/ab/ab/" in message
    assert "\n" not in message and len(message) < 400, message


def test_a_deep_checkout_is_copied_with_the_commits_modes_and_times(tmp_path: Path) -> None:
    # A commit's tree may be nested as deep (git takes it): the step build's scratch copy of it, and
    # the settling of its modes and times, crashed with a RecursionError.
    deep = "/".join(["d"] * RECURSION_DEEP)
    make_dirs(tmp_path / "src" / deep)
    (tmp_path / "src" / deep / "f").write_text("deep\n")
    make_dirs(tmp_path / "src" / deep)  # exists already: nothing to do
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "src" / deep / "f")
    copy_tree(tmp_path / "src", tmp_path / "work", epoch=1_700_000_000, reverse=True)
    copied = tmp_path / "work" / deep / "f"
    assert copied.read_text() == "deep\n"
    assert copied.stat().st_mtime == 1_700_000_000 and stat.S_IMODE(copied.stat().st_mode) == 0o644
    assert (tmp_path / "work" / "d").stat().st_mtime == 1_700_000_000
