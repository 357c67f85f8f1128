"""A deploy directory shared by a team is often setgid (``chmod g+s``: new files get its group). The
directories of a release made there inherited the bit when graven created them read-only at once (as
root), and every drift check then reported each of them as ``mode`` drift (0555 expected, 2555 found)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from graven.service.drift import check
from helpers_deploy import World, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    made.root.mkdir()
    os.chmod(made.root, 0o2755)
    yield made
    made.close()


def _dir_modes(release: Path) -> set[int]:
    modes = {stat.S_IMODE(release.lstat().st_mode)}
    for dirpath, dirnames, _files in os.walk(release):
        modes.update(stat.S_IMODE(os.lstat(os.path.join(dirpath, d)).st_mode) for d in dirnames)
    return modes


def test_a_release_in_a_setgid_directory_is_clean_and_its_directories_are_0555(world: World) -> None:
    v1 = world.version(1)
    assert world.deploy(v1, "staging").ok
    assert os.stat(world.env_dir("staging") / "releases").st_mode & stat.S_ISGID  # inherited, as intended
    world.commit({"app/sub/new.py": b"x = 1\n"})
    v2 = world.build()
    assert world.deploy(v2, "staging").ok  # the next version: links the unchanged files of v1
    for digest in (v1, v2):
        release = world.env_dir("staging") / "releases" / digest.removeprefix("sha256:")
        assert _dir_modes(release) == {0o555}, digest
    for full in (False, True):
        (report,) = check(world.ctx(), ["staging"], full=full)
        assert report.clean, [(d.path, d.kind, d.detail) for d in report.differences]
