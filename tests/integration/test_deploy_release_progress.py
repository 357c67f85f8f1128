"""Progress of the slow parts of a deploy besides writing the release: a release on disk checked entry
by entry (its stat changed, so files are re-hashed) and the old releases that retention removes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ProgressRecorder, assert_counts_up_to
from graven.model.manifest import FileEntry
from graven.service.deploy import deploy
from graven.service.deploy_release import CHECK_STAGE, RETENTION_STAGE
from helpers_deploy import World, env_toml, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    keep_one = {"staging": {"path": "staging", "keep": 1}}
    w = make_world(tmp_path, monkeypatch, env_toml("app", keep_one))
    yield w
    w.close()


def test_a_release_on_disk_whose_stat_changed_reports_its_check(world: World) -> None:
    """After a restore from backup (every mtime changed) going back to a release on disk re-hashes all
    of its files, which said nothing: the check reports the manifest's files from 0 to all of them.
    A release whose stat is as recorded is checked by stat in a moment and draws nothing."""
    v1 = world.version(1)
    v2 = world.version(2)
    assert world.deploy(v1, "staging").ok
    assert world.deploy(v2, "staging").ok
    release = world.env_dir("staging") / "releases" / v1.removeprefix("sha256:")
    for directory, _dirs, names in os.walk(release):
        for name in names:
            os.utime(os.path.join(directory, name), (1_000_000_000, 1_000_000_000))
    files = sum(1 for entry in world.manifest(v1).entries if isinstance(entry, FileEntry))

    recorder = ProgressRecorder()
    result = deploy(world.ctx(recorder), v1, "staging", world.options())
    assert result.ok, result.message
    assert_counts_up_to(recorder.of(CHECK_STAGE), files)

    untouched = ProgressRecorder()
    assert deploy(world.ctx(untouched), v2, "staging", world.options()).ok
    assert untouched.of(CHECK_STAGE) == []


def test_retention_reports_the_old_releases_it_removes(world: World) -> None:
    """A release of many files takes a moment to remove, and a deploy removed old ones silently."""
    digests = [world.version(n) for n in (1, 2, 3)]
    for digest in digests[:2]:
        assert world.deploy(digest, "staging").ok
    recorder = ProgressRecorder()
    result = deploy(world.ctx(recorder), digests[2], "staging", world.options())
    assert result.ok, result.message
    assert recorder.of(RETENTION_STAGE) == [(0, 1), (1, 1)]  # v1 (v2 is the previous one: kept)
    assert not (world.env_dir("staging") / "releases" / digests[0].removeprefix("sha256:")).exists()
