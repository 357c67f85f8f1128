"""A deploy that fails while it builds the new release (after it hard-linked the live release's
unchanged files into it) leaves the stat records of the live files valid: the next deploy links
those files again instead of copying them, and the default drift check trusts them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from graven.deploy import materialize
from graven.deploy.layout import EnvLayout
from graven.deploy.recordkey import load_or_create
from graven.deploy.statdb import StatTable
from graven.errors import GravenError
from helpers_deploy import World, env_toml, make_world, opened_up


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch, env_toml("app", {"staging": {"path": "staging"}}))
    yield made
    made.close()


def _stale_live_files(world: World, digest: str) -> list[str]:
    """The live release's files whose stat no longer matches the record on disk."""
    layout = EnvLayout(world.env_dir("staging"))
    table = StatTable.load(layout.stat_file, load_or_create(world.home / "keys"))
    release = layout.release(digest.removeprefix("sha256:"))
    return [
        entry.path
        for entry in world.manifest(digest).files()
        if not table.matches(os.lstat(release / entry.path), entry.sha256)
    ]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_deploy_failing_after_linking_keeps_the_live_records(
    world: World, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert _stale_live_files(world, v1) == []
    v2 = world.version(2)

    def fail(self: object, entries: object) -> None:
        raise error  # after make_tree linked the unchanged files into the new release

    with monkeypatch.context() as patch:
        patch.setattr(materialize._Builder, "copy", fail)
        with pytest.raises((GravenError, KeyboardInterrupt)):
            world.deploy(v2, "staging")
    assert world.live("staging") == v1
    assert _stale_live_files(world, v1) == []
    assert [p.name for p in (world.env_dir("staging") / "releases").iterdir()] == [v1.removeprefix("sha256:")]

    result = world.deploy(v2, "staging")
    assert result.ok
    files = result.stats["files"]
    assert (result.stats["copied"], result.stats["linked"]) == (1, files - 1)


def test_links_whose_records_were_lost_with_the_failure_are_checked_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links made by work an interrupt cut short (a forked child's, a worker's not yet collected) never
    reach the table: their live files' records went stale, and the next deploy copied them all (17,037
    of 30,001 files after one Ctrl-C) and drift re-hashed them."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)

    def interrupted(self: materialize._Builder, entries: object) -> None:
        assert self.reuse_root is not None
        root, reuse = Path(self.root), Path(self.reuse_root)
        for entry in world.manifest(v1).files():  # linked, and the records of it lost
            target = root / f"{entry.path}.lost"
            if target.parent.is_dir():  # made, and maybe sealed (0555) already
                with opened_up(target.parent):
                    os.link(reuse / entry.path, target)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(materialize._Builder, "copy", interrupted)
        with pytest.raises(KeyboardInterrupt):
            world.deploy(v2, "staging")
    assert world.live("staging") == v1
    assert _stale_live_files(world, v1) == []
    result = world.deploy(v2, "staging")
    assert result.ok
    files = result.stats["files"]
    assert (result.stats["copied"], result.stats["linked"]) == (1, files - 1)
