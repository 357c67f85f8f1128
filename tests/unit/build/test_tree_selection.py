"""Which entries a step build's outputs become: an empty directory that an exclude pattern ending in
"/" names is left out (it was kept: the pattern matched only what lies below it)."""

from __future__ import annotations

from pathlib import Path

from graven.build.tree import collect_tree
from graven.core.globs import Selection
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
