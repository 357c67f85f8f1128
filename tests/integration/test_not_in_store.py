"""An artifact the database records but this home's store does not hold (its objects were lost, or
another home recorded it): every command that needs it says so, naming the artifact and how to get it
back, instead of "stored provenance is missing or corrupt: object <some other digest> is missing from
the store" (which named an envelope digest and read as damage with nothing to do about it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable

import pytest

from helpers_deploy import World

CliResult = tuple[int, str, str]
Run = Callable[..., CliResult]


def _lose_objects(world: World) -> None:
    """The home's store, gone: an empty one in its place (as after restoring an older objects/)."""
    objects = world.home / "objects"
    objects.rename(world.home / "objects.lost")
    objects.mkdir(mode=0o700)


@pytest.mark.parametrize(
    "args",
    [
        ("deploy", "{d}", "staging", "--root", "{root}"),
        ("deploy", "{d}", "staging", "--root", "{root}", "--plan"),
        ("show", "{d}"),
        ("export", "{d}", "-o", "{out}/app.tar.zst"),
        ("push", "{d}", "127.0.0.1:9/team/app:v1"),
    ],
)
def test_an_artifact_not_in_this_store_is_named_with_the_way_back(
    world: World, run_cli: Run, args: tuple[str, ...]
) -> None:
    digest = world.version(1)
    for ctx in world.contexts:
        ctx.close()
    _lose_objects(world)
    argv = [a.format(d=digest[7:19], root=world.root, out=world.repo.parent) for a in args]
    code, _, err = run_cli(*argv)
    assert code == 1 and err.count("\n") == 1, err
    assert f"{digest} is recorded in the database but not in this home's store" in err, err
    assert "graven pull" in err and "graven import" in err, err


def test_a_rollback_to_a_release_gone_from_disk_and_store_says_so(world: World, run_cli: Run) -> None:
    first = world.version(1)
    assert world.deploy(first, "staging").ok
    second = world.version(2)
    assert world.deploy(second, "staging").ok
    for ctx in world.contexts:
        ctx.close()
    _lose_objects(world)
    release = world.root / "staging" / "releases" / first.removeprefix("sha256:")
    for path in [release, *release.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(release)
    code, _, err = run_cli("rollback", "staging", "--reason", "bad", "--root", world.root)
    assert code == 1 and err.count("\n") == 1, err
    assert f"{first} is recorded in the database but not in this home's store" in err, err
    assert (world.root / "staging" / "current").readlink().name == second.removeprefix("sha256:")


def test_json_says_it_too(world: World, run_cli: Run) -> None:
    digest = world.version(1)
    for ctx in world.contexts:
        ctx.close()
    _lose_objects(world)
    code, out, _ = run_cli("deploy", digest, "staging", "--root", world.root, "--json")
    error = json.loads(out)["error"]
    assert code == 1 and error["exit_code"] == 1
    assert "not in this home's store" in error["message"]
