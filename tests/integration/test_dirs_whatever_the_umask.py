"""The directories graven makes get their mode whatever the umask. Under umask 000 (a daemon's, some
CI runners') they were world-writable: any user could replace ``PATH/.graven/stat`` with a directory
(every deploy then failed) or delete the store's packs; under 077 the environment's own directories
were 0700, and the service user could not read a release whose files are 0444."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from graven.service.drift import check
from graven.store.local import LOOSE_THRESHOLD
from helpers_deploy import World


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.lstat().st_mode))


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o077])
def test_an_environment_s_directories_are_0755(world: World, mask: int) -> None:
    digest = world.build()
    with _umask(mask):
        assert world.deploy(digest, "staging").ok
        check(world.ctx(), ["staging"])  # makes .graven/drift
    env = world.env_dir("staging")
    made = [world.root, env, env / "releases", env / ".graven", env / ".graven" / "drift"]
    assert {str(p): _mode(p) for p in made} == {str(p): "0o755" for p in made}


def test_directories_that_were_there_keep_their_mode(world: World) -> None:
    world.root.mkdir(mode=0o750)
    os.chmod(world.root, 0o750)
    with _umask(0o077):
        assert world.deploy(world.build(), "staging").ok
    assert _mode(world.root) == "0o750"
    assert _mode(world.env_dir("staging")) == "0o755"


@pytest.mark.parametrize("mask", [0o000, 0o002])
def test_the_store_s_directories_are_never_writable_by_others(world: World, mask: int) -> None:
    world.commit({"app/big.bin": os.urandom(LOOSE_THRESHOLD + 1)})  # stored loose, in a directory
    with _umask(mask):
        world.build()
    objects = world.home / "objects"
    made = [objects, *(p for p in objects.rglob("*") if p.is_dir())]
    assert len(made) > 4  # objects, sha256, pack, tmp and a loose object's directory
    assert {str(p): _mode(p) for p in made} == {str(p): "0o755" for p in made}


def test_a_deploy_never_sets_the_process_umask(world: World) -> None:
    """A deploy read the umask by setting it to 022 and back: for that moment every other thread of
    the process (a library caller's, the other deploy of a second Context) made its files under 022,
    not the caller's 077. It is read from /proc/self/status instead, as the release still needs it."""
    v1 = world.build()
    v2 = world.version(2)
    set_to: list[int] = []
    real = os.umask

    def recording(mask: int) -> int:
        set_to.append(mask)
        return real(mask)

    with _umask(0o077), pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "umask", recording)
        assert world.deploy(v1, "staging").ok
        assert world.deploy(v2, "staging").ok
    assert set_to == []
    assert _mode(world.env_dir("staging") / "current" / "app") == "0o555"  # read-only whatever the umask


def test_a_private_environment_directory_keeps_its_mode_and_checks_clean(world: World) -> None:
    """A release's files are 0444 whatever the umask (a service user reads them): an artifact's
    secrets are kept from other users by the mode of PATH, made by the operator before the first
    deploy, which deploys, drift checks and heals keep (docs/formats/environments-v1.md)."""
    from graven.service.drift_heal import heal

    env = world.env_dir("staging")
    env.mkdir(parents=True, mode=0o700)
    os.chmod(env, 0o700)
    with _umask(0o077):
        assert world.deploy(world.build(), "staging").ok
        assert world.deploy(world.version(2), "staging").ok
        (report,) = check(world.ctx(), ["staging"])
        heal(world.ctx(), "staging")
    assert report.clean
    assert _mode(env) == "0o700"
    assert _mode(env / "current" / "config" / "prod.toml") == "0o444"
