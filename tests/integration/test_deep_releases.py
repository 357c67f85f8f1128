"""A commit's tree can nest directories ~1,200 levels deep (a path of ~2,400 bytes: git takes it, and a
build stores it). Deploying, healing, watching and removing old releases of such an artifact must not
crash with a RecursionError (Python 3.11's os.walk and recursive helpers fail at about 1,000 levels),
nor leave a release half removed; an artifact whose paths cannot fit below ``PATH/releases/<hex>/``
(PATH_MAX) is refused before anything is written, in one line."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from graven.build.workspace import remove_tree
from graven.errors import InputError
from graven.fstree import make_dirs
from helpers_deploy import World, env_toml, make_world, staging_prod
from helpers_repo import nest, run_cli

LEVELS = 1_200  # past Python's recursion limit, well within PATH_MAX
DEEP = "a/" * LEVELS


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """pytest's own clean-up of old temp directories (shutil.rmtree) cannot remove these trees."""
    yield
    assert remove_tree(tmp_path) is None


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch, env_toml("app", staging_prod(keep=1)))
    make_dirs(made.repo / DEEP.rstrip("/"))  # pathlib's mkdir(parents=True) recurses once per level
    yield made
    made.close()


def test_a_deep_release_is_healed(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    # heal opened a directory by opening its parent first (recursively) and removed an added tree
    # recursively: RecursionError, the release left as the drift made it
    world.commit({DEEP + "f": "one\n", DEEP + "g": "two\n"})
    assert world.deploy(world.build(), "staging").ok
    release = (world.env_dir("staging") / "current").resolve()
    bottom = release / DEEP
    os.chmod(bottom, 0o755)
    (bottom / "f").chmod(0o644)
    (bottom / "f").write_text("tampered\n")
    (bottom / "g").unlink()
    os.chmod(release, 0o755)
    (release / "added").mkdir()
    nest(release / "added", LEVELS)
    nest(release / "added", 2_100, "ab")  # past PATH_MAX too: only a walk by descriptors reaches it
    code, _out, err = run_cli(capsys, "drift", "--full")
    assert code == 1, err
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err[-2000:]
    code, _out, err = run_cli(capsys, "drift", "--full")
    assert code == 0, err
    assert (bottom / "f").read_text() == "one\n" and (bottom / "g").read_text() == "two\n"
    assert not (release / "added").exists()


def test_old_deep_releases_are_removed(world: World) -> None:
    # keep = 1: the third deploy removes the first release, whose removal recursed once per level
    # (RecursionError after the switch, a .trash-* directory left half removed)
    digests = []
    for n in range(3):
        world.commit({DEEP + "f": f"version {n}\n"})
        digests.append(world.build())
        assert world.deploy(digests[-1], "staging").ok
    releases = world.env_dir("staging") / "releases"
    assert sorted(os.listdir(releases)) == sorted(d.removeprefix("sha256:") for d in digests[1:])


def test_a_path_too_long_for_the_release_directory_is_refused_before_anything_is_written(
    world: World,
) -> None:
    # a path of 3,999 bytes is valid in a manifest (at most 4,096), but not below PATH/releases/<hex>/:
    # the deploy failed half-way with ENAMETOOLONG, then crashed removing what it had made
    longest = "a/" * 1_999 + "f"
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=world.repo, input=b"x\n", capture_output=True, check=True
    ).stdout.decode()
    world_git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(
        [*world_git, "update-index", "--add", "--cacheinfo", f"100644,{blob.strip()},{longest}"],
        cwd=world.repo,
        check=True,
    )
    subprocess.run([*world_git, "commit", "-q", "-m", "long"], cwd=world.repo, check=True)
    digest = world.build()
    from graven.service.deploy_plan import plan_deploy

    for attempt in (
        lambda: world.deploy(digest, "staging"),
        lambda: plan_deploy(world.ctx(), digest, "staging", world.options()),
    ):
        with pytest.raises(InputError, match=r"a path of 3999 bytes \(1999 levels deep\)") as refused:
            attempt()
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 500
    assert not world.env_dir("staging").exists()


def test_watch_sees_changes_at_the_bottom_of_a_deep_tree(tmp_path: Path) -> None:
    # watching a tree called os.walk, which recursed once per level: RecursionError, watch ended
    from graven.drift.notify import InotifyNotifier

    nest(tmp_path, LEVELS)
    changed = threading.Event()

    def callback(key: str | None, _overflow: bool, _name: str | None) -> None:
        if key == "k":
            changed.set()

    notifier = InotifyNotifier(callback)
    try:
        notifier.watch("k", tmp_path, recursive=True)
        assert notifier.failures == []
        (tmp_path / DEEP / "f").write_text("changed\n")
        assert changed.wait(10)
    finally:
        notifier.close()
