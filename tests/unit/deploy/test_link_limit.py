"""A file system limits the links to one inode: 65,000 on ext4 (xfs, btrfs and tmpfs allow far more).

Files whose content repeats within an artifact are hard links to its first copy, and unchanged files are
links to the live release's inode, so an artifact with many identical files (empty ``__init__.py``,
``.gitkeep``, the same LICENSE in every package), or fewer of them in each of the releases kept, reached
the limit, and every deploy failed with "cannot write the release ...: Too many links" on ext4 while
it worked on xfs. A duplicate that cannot be linked is now written from the store, and the duplicates
after it are links to that copy. Here the limit is made small by hand; the real ext4 limit takes
65,000 files to reach."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from graven.deploy.materialize import build_release, check_release
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.model.manifest import FileEntry, TreeManifest
from graven.store.local import LocalStore

LIMIT = 3


@pytest.fixture
def link_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.link

    def limited(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.lstat(src).st_nlink >= LIMIT:
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), src)
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", limited)


def _manifest(store: LocalStore, files: dict[str, bytes]) -> TreeManifest:
    entries = []
    with store.batch() as batch:
        for path, data in files.items():
            entries.append(FileEntry(path, batch.add(data).hex, len(data), executable=False))
    return TreeManifest.of(entries)


@pytest.mark.usefixtures("link_limit")
def test_duplicates_past_the_link_limit_are_copies_and_the_release_is_exact(
    tmp_path: Path, store: LocalStore
) -> None:
    files = {f"pkg{i}/__init__.py": b"" for i in range(8)}
    files["pkg0/main.py"] = b"x = 1\n"
    manifest = _manifest(store, files)
    table = StatTable()
    stats = build_release(store, manifest, tmp_path / "r1", table, fork=False)
    assert stats.files == 9
    assert stats.copied == 1 + 3  # main.py and the empty file, then a copy for each link limit reached
    assert stats.linked == 5
    links = {os.lstat(tmp_path / "r1" / p).st_ino: os.lstat(tmp_path / "r1" / p).st_nlink for p in files}
    assert max(links.values()) <= LIMIT
    table.record(os.lstat(tmp_path / "r1"), DIR_SHA)  # the root's record is the deployer's, once renamed
    check = check_release(tmp_path / "r1", manifest, table, rehash=False)
    assert check.ok and check.by_stat, check.problems  # every inode has its record, by stat


@pytest.mark.usefixtures("link_limit")
def test_a_next_release_copies_what_the_live_one_cannot_lend_another_link(
    tmp_path: Path, store: LocalStore
) -> None:
    files = {f"d{i}/empty": b"" for i in range(4)}
    first = _manifest(store, files)
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table, fork=False)
    files["new.txt"] = b"new\n"
    second = _manifest(store, files)
    build_release(store, second, tmp_path / "r2", table, reuse_root=tmp_path / "r1", fork=False)
    for root, manifest in ((tmp_path / "r1", first), (tmp_path / "r2", second)):
        check = check_release(root, manifest, table, rehash=False)
        assert check.ok, check.problems
