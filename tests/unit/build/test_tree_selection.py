"""Which entries a step build's outputs become: an empty directory that an exclude pattern ending in
"/" names is left out (it was kept: the pattern matched only what lies below it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graven.build.tree import collect_tree
from graven.core.globs import Selection
from graven.errors import UnsafeInputError
from graven.model.manifest import DirEntry, FileEntry
from graven.store.local import LocalStore


def test_an_excluded_empty_directory_is_no_entry(tmp_path: Path) -> None:
    out = tmp_path / "work" / "out"
    (out / "var" / "empty").mkdir(parents=True)
    (out / "var" / "kept").mkdir()
    (out / "app.py").write_text("x = 1\n")
    store = LocalStore.at(tmp_path / "objects")
    with store.batch() as batch:
        entries = collect_tree(tmp_path / "work", ["out"], Selection.of(["**"], ["out/var/empty/"]), batch)
    assert [(type(e), e.path) for e in entries] == [(FileEntry, "out/app.py"), (DirEntry, "out/var/kept")]
    store.close()


def test_an_excluded_name_that_is_not_utf8_is_left_out(tmp_path: Path) -> None:
    # README: a path a step build may not hold (a name that is not UTF-8) is left out by [artifact]
    # exclude; the walk refused it by name before asking the selection
    out = tmp_path / "work" / "out"
    (out / "junk").mkdir(parents=True)
    (out / "app.py").write_text("x = 1\n")
    (Path(os.fsdecode(bytes(out / "junk") + b"/bad\xff"))).write_text("x")
    (Path(os.fsdecode(bytes(out) + b"/cache\xff.tmp"))).write_text("x")
    store = LocalStore.at(tmp_path / "objects")
    with store.batch() as batch:
        entries = collect_tree(
            tmp_path / "work", ["out"], Selection.of(["**"], ["out/junk/**", "out/*.tmp"]), batch
        )
    assert [(type(e), e.path) for e in entries] == [(FileEntry, "out/app.py")]
    store.close()


@pytest.mark.parametrize("name", [b"out/bad\xff", b"out/d\xff/x", b"out/empty\xff/"])
def test_a_selected_name_that_is_not_utf8_is_refused(tmp_path: Path, name: bytes) -> None:
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    target = Path(os.fsdecode(bytes(work) + b"/" + name.rstrip(b"/")))
    if name.endswith(b"/"):
        target.mkdir()
    else:
        target.parent.mkdir(exist_ok=True)
        target.write_text("x")
    store = LocalStore.at(tmp_path / "objects")
    refused = pytest.raises(UnsafeInputError, match=r"\\xff.*: file name is not valid UTF-8")
    with store.batch() as batch, refused:
        collect_tree(work, ["out"], Selection.of(["**"], []), batch)
    store.close()
