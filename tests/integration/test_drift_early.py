"""`graven drift --full` forks its walker before importing the check (graven.service.drift_early): the
walker serves the check only for the release it walks, holds the check lock shared as the check does,
and finds every kind of tampering in its part of the tree as in the other."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from test_drift_cli import CASES, Tamper, drift, found

from graven.deploy.lock import check_lock_path
from graven.drift import walk as drift_walk
from graven.service import drift_early
from graven.service.context import Context
from graven.service.drift import check
from graven.service.drift_check import _save_split
from graven.service.drift_early import start_early
from helpers_deploy import World, make_world
from helpers_services import unavailable

SPLIT = ([""], ["app"])  # the walker forked early walks app/; the check itself the rest


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    made.commit({"app/current.py": "->main.py", "app/lib/util.py": "x = 1\n"})
    yield made
    made.close()


def _deployed(world: World, split: tuple[list[str], list[str]] | None = SPLIT) -> tuple[str, Path]:
    """Build and deploy staging with a plan of the split (a release this small gets none by itself)."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    if split is not None:
        _save_split(env / ".graven" / "drift" / "split", digest.removeprefix("sha256:"), split)
    return digest, env / "releases" / digest.removeprefix("sha256:")


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_early_walker_serves_the_check(world: World) -> None:
    digest, _release = _deployed(world)
    ctx = world.ctx()
    with start_early(ctx, ["staging"]) as early:
        (pid,) = early.started.values()
        (report,) = check(ctx, ["staging"], full=True, early=early)
        assert early.started == {}  # taken
    assert _reaped(pid)
    (plain,) = check(world.ctx(), ["staging"], full=True)
    assert report.clean and plain.clean
    assert (report.files, report.hashed, report.differences) == (plain.files, plain.hashed, plain.differences)
    assert report.digest == digest


@pytest.mark.parametrize(("tamper", "expected"), CASES, ids=[c[0].__name__ for c in CASES])
def test_tampering_is_found_in_either_part(
    world: World, capsys: pytest.CaptureFixture[str], tamper: Tamper, expected: set[tuple[str, str]]
) -> None:
    _digest, release = _deployed(world)
    started: list[dict[str, int]] = []
    real = drift_early.start_early

    def spy(ctx: Context, envs: Sequence[str] = ()) -> drift_early.EarlyWalks:
        early = real(ctx, envs)
        started.append(early.started)
        return early

    drift_early.start_early = spy  # the CLI imports it when it runs
    try:
        tamper(release)
        code, doc = drift(capsys, "--full", "staging")
    finally:
        drift_early.start_early = real
    assert started and list(started[0]) == ["staging"]  # the CLI forked it early
    assert code == 1
    assert expected <= found(doc)


def test_a_walker_of_another_release_is_reaped_unused(world: World) -> None:
    _deployed(world)
    with start_early(world.ctx(), ["staging"]) as early:
        (pid,) = early.started.values()
        assert early.take("staging", "0" * 64) is None
        assert _reaped(pid)
        assert early.take("staging", "0" * 64) is None


def test_walkers_not_taken_are_reaped_and_the_lock_released(world: World) -> None:
    _deployed(world)
    lock = check_lock_path(world.env_dir("staging") / ".graven" / "lock")
    fd = os.open(lock, os.O_RDONLY)
    try:
        with start_early(world.ctx(), ["staging"]) as early:
            (pid,) = early.started.values()
            with pytest.raises(BlockingIOError):  # held shared, as a check holds it: no deployer now
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _reaped(pid)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(fd)


def test_nothing_starts_without_a_plan_a_live_release_or_a_safe_fork(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_early(world.ctx(), ["staging"]) as early:  # never deployed
        assert early.started == {}
    _deployed(world, split=None)
    with start_early(world.ctx(), ["staging"]) as early:  # no plan of the split yet
        assert early.started == {}
    digest, _release = _deployed(world)
    with monkeypatch.context() as patched:
        patched.setattr(drift_early, "can_fork", lambda: False)
        with start_early(world.ctx(), ["staging"]) as early:
            assert early.started == {}
    assert world.deploy(digest, "prod").ok
    _save_split(world.env_dir("prod") / ".graven" / "drift" / "split", digest.removeprefix("sha256:"), SPLIT)
    with start_early(world.ctx(), ["prod", "staging"]) as early:  # the first one only
        assert list(early.started) == ["prod"]
        reports = check(world.ctx(), ["prod", "staging"], full=True, early=early)
    assert [r.clean for r in reports] == [True, True]


def test_the_walkers_lock_is_released_when_the_check_takes_it(world: World) -> None:
    digest, _release = _deployed(world)
    lock = check_lock_path(world.env_dir("staging") / ".graven" / "lock")
    fd = os.open(lock, os.O_RDONLY)
    try:
        with start_early(world.ctx(), ["staging"]) as early:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            walk = early.take("staging", digest.removeprefix("sha256:"))
            assert walk is not None
            assert walk.child.result() is not None  # the child (which shares the lock) is done
            # the check holds its own lock from here: a deployer of this environment waits for the
            # check of this environment only, not for the others the command still checks
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_a_walker_not_taken_is_stopped_not_waited_for(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    _deployed(world)

    def slow_walk(*_args: object) -> bytes:
        time.sleep(60)
        return b""

    monkeypatch.setattr(drift_walk, "raw_walk", slow_walk)
    started = time.monotonic()
    with start_early(world.ctx(), ["staging"]) as early:
        (pid,) = early.started.values()
    assert _reaped(pid)
    assert time.monotonic() - started < 20


def test_a_scan_that_does_not_use_its_walker_stops_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from graven.drift.scan import scan_release
    from graven.drift.walk import ForkedWalk

    def slow_walk(*_args: object) -> bytes:
        time.sleep(60)
        return b""

    monkeypatch.setattr(drift_walk, "raw_walk", slow_walk)
    started = time.monotonic()
    child = ForkedWalk(str(world.root), ["x"], frozenset(["x"]))
    scan = scan_release(
        world.root / "no-such-release",
        lambda: None,  # type: ignore[arg-type,return-value]
        full=True,
        hasher=None,  # type: ignore[arg-type]
        child=child,
    )
    assert scan.root_missing
    assert _reaped(child.pid)
    child.cancel()  # reaped already: nothing to do
    assert time.monotonic() - started < 20


def test_the_early_walker_holds_its_part_to_the_recorded_owner(world: World) -> None:
    """The walker forked early took the release directory's owner as the deployer's: after a `chown`
    of that directory alone, every path of its part was 'another owner's'. It takes the uid the stat
    table records, as the check does: only the release directory is drift."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    _digest, release = _deployed(world)
    os.chown(release, 12345, -1)
    ctx = world.ctx()
    with start_early(ctx, ["staging"]) as early:
        assert list(early.started) == ["staging"]
        (report,) = check(ctx, ["staging"], full=True, early=early)
        assert early.started == {}  # taken: its part of the tree was its own
    assert [(d.path, d.kind, d.actual) for d in report.differences] == [
        (".", "attributes", f"owner uid 12345 (deployed as {os.geteuid()})")
    ]
