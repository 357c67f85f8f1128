"""Review of the snapshot of a clean check (graven.drift.clean, graven.service.drift_quick): whenever the
snapshot answers "clean", the full default check and `graven drift --full` must say clean too."""

from __future__ import annotations

import itertools
import mmap
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_drift_cli import drift, found
from test_drift_snapshot import Calls, settled, snapshot_path

from helpers_deploy import World, env_toml, make_world, staging_prod
from helpers_repo import run_cli


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    made.commit({"app/current.py": "->main.py"})
    yield made
    made.close()


def _stat(path: Path) -> tuple[int, ...]:
    st = os.lstat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _resnapshot(world: World, capsys: pytest.CaptureFixture[str], old: bytes | None) -> None:
    """Check until a snapshot other than ``old`` is written (records of the clock tick of a change are
    racy: wait one tick)."""
    for _ in range(50):
        assert drift(capsys, "staging")[0] == 0
        path = snapshot_path(world)
        if path.exists() and path.read_bytes() != old:
            return
        time.sleep(0.02)
    raise AssertionError("no new snapshot was written")


def _hidden_write(world: World, capsys: pytest.CaptureFixture[str], target: Path) -> mmap.mmap | None:
    """Change ``target`` through a shared writable mapping whose page was dirtied (with the same bytes)
    before a clean check recorded the file: the kernel updates the times on the first write fault
    only, so the change leaves (ino, size, mtime, ctime, mode) as recorded. None when writeback
    write-protected the page in between (then the times moved: try again)."""
    target.chmod(0o644)
    fd = os.open(target, os.O_RDWR)
    target.chmod(0o444)
    try:
        mapped = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    mapped[0:1] = mapped[0:1]  # the write fault: the times move now, the content stays
    time.sleep(0.02)
    _resnapshot(world, capsys, snapshot_path(world).read_bytes())  # the new stat is recorded, clean
    before = _stat(target)
    mapped[7:12] = b"OWNED"  # print('hello') -> print('OWNED'): no fault, no new times
    if _stat(target) != before or target.read_bytes() != b"print('OWNED')\n":
        mapped.close()
        return None
    return mapped


def test_drift_found_by_full_is_not_answered_clean_by_the_snapshot(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A change the stat records miss (a write through a mapping) stays found once --full has found it."""
    settled(world, capsys)
    release = (world.env_dir("staging") / "current").resolve()
    mapped = None
    for _attempt in range(5):
        mapped = _hidden_write(world, capsys, release / "app/main.py")
        if mapped is not None:
            break
        assert run_cli(capsys, "heal", "staging")[0] == 0  # a new file: try again
    assert mapped is not None, "the page was written back every time: no stat-preserving write"
    try:
        genuine = snapshot_path(world).read_bytes()  # whoever can write PATH can keep a copy
        code, doc = drift(capsys, "staging", "--full")  # the backstop of the stat records finds it
        assert code == 1 and found(doc) == {("app/main.py", "modified")}, doc
        # the full check dropped the file's record: the default check hashes it and finds it again,
        # and the snapshot (whose record of it is still the file's stat) must not answer instead
        code, doc = drift(capsys, "staging")
        assert code == 1 and found(doc) == {("app/main.py", "modified")}, doc
        snapshot_path(world).write_bytes(genuine)  # nor a copy of it put back
        code, doc = drift(capsys, "staging")
        assert code == 1 and found(doc) == {("app/main.py", "modified")}, doc
        with world.ctx().db.connect() as conn:
            events = [
                r.event
                for r in conn.execute("SELECT event FROM drift_events WHERE env = 'staging' ORDER BY id")
            ]
        assert events == ["found"], events  # no "resolved" while the file is still modified
    finally:
        mapped.close()


def _outside_files(toml: str) -> str:
    """graven.toml whose artifact leaves graven.toml out: builds after a change of only graven.toml
    have the same digest (each with a signed provenance naming its own graven.toml)."""
    return toml.replace("[artifact]\n", '[artifact]\ninclude = ["app/**", "bin/**", "config/**"]\n', 1)


def test_a_legacy_deployment_snapshot_follows_the_newest_provenances_globs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A legacy deployment (no pipeline digest) takes the newest provenance's globs: not in the binding."""
    world = make_world(
        tmp_path, monkeypatch, _outside_files(env_toml("app", staging_prod(ignore=["app/main.py"])))
    )
    try:
        digest = world.build()
        assert world.deploy(digest, "staging").ok
        with world.ctx().db.begin() as conn:  # a deployment recorded before graven kept the digest
            conn.execute("UPDATE deployments SET pipeline_digest = NULL WHERE env = 'staging'")
        release = (world.env_dir("staging") / "current").resolve()
        (release / "app/main.py").chmod(0o644)  # ignored: not drift under these globs
        for _ in range(3):  # checks that could write a snapshot (none may rest on the ignore globs)
            assert drift(capsys, "staging")[0] == 0
            time.sleep(0.02)
        # the same files built again from a commit that ignores nothing: its provenance is the newest
        world.commit({}, _outside_files(env_toml("app", staging_prod())))
        assert world.build() == digest
        code, doc = drift(capsys, "staging", "--full")
        assert code == 1 and found(doc) == {("app/main.py", "mode")}, doc
        code, doc = drift(capsys, "staging")
        assert code == 1 and found(doc) == {("app/main.py", "mode")}, doc
    finally:
        world.close()


def test_a_huge_snapshot_file_is_not_read_into_memory(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever can write PATH must not be able to make every check read gigabytes (a sparse file)."""
    settled(world, capsys)
    path = snapshot_path(world)
    path.unlink()
    with open(path, "wb") as fh:
        fh.truncate(8 << 30)  # sparse: costs no disk
    limit = 1 << 30

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    probe = "import sys\nfrom graven.cli.main import main\nsys.exit(main(['drift', 'staging']))\n"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=120,
    )
    assert done.returncode == 0 and "staging: clean" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert time.monotonic() - started < 30
    assert path.stat().st_size < 1 << 20  # replaced by a real snapshot


def test_a_fifo_in_the_trust_directory_does_not_hang_the_check(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trust fingerprint opens trust files blocking: a FIFO there (policy skips it) hangs checks."""
    settled(world, capsys)
    os.mkfifo(world.home / "trust" / "notes")
    probe = "import sys\nfrom graven.cli.main import main\nsys.exit(main(['drift', 'staging']))\n"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        pytest.fail("graven drift hung on the FIFO in GRAVEN_HOME/trust")
    assert done.returncode == 0 and "staging: clean" in done.stdout, (done.stdout, done.stderr[-2000:])


class _Toggles:
    """Changes made and undone by hand inside the release (never with the deployed stat)."""

    def __init__(self, release: Path) -> None:
        self.release = release
        self.on: dict[str, bool] = dict.fromkeys(("mode", "content", "added", "link", "dir_mode"), False)

    def _in_app(self) -> Any:
        app = self.release / "app"

        class _Open:
            def __enter__(self) -> None:
                self.mode = app.stat().st_mode & 0o777
                app.chmod(0o755)

            def __exit__(self, *_: object) -> None:
                app.chmod(self.mode)

        return _Open()

    def flip(self, name: str) -> None:
        on = not self.on[name]
        main = self.release / "app/main.py"
        if name == "mode":
            main.chmod(0o644 if on else 0o444)
        elif name == "content":
            mode = main.stat().st_mode & 0o777
            with self._in_app():
                main.chmod(0o644)
                main.write_bytes(b"print('hellO')\n" if on else b"print('hello')\n")
                main.chmod(mode)
        elif name == "added":
            with self._in_app():
                if on:
                    (self.release / "app/extra.py").write_text("x\n")
                else:
                    (self.release / "app/extra.py").unlink()
        elif name == "link":
            with self._in_app():
                (self.release / "app/current.py").unlink()
                (self.release / "app/current.py").symlink_to("__init__.py" if on else "main.py")
        else:
            (self.release / "app").chmod(0o755 if on else 0o555)
        self.on[name] = on


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_the_default_check_and_full_agree(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """After each random change, revert by hand, touch, heal or tick, the default check agrees with --full."""
    settled(world, capsys)
    calls = Calls(monkeypatch)
    toggles = _Toggles((world.env_dir("staging") / "current").resolve())
    rng = random.Random(seed)
    quick = 0
    for _step in range(40):
        op = rng.choice([*toggles.on, "touch", "heal", "tick", "tick"])
        if op == "touch":
            os.utime(toggles.release / "app/__init__.py")
        elif op == "heal":
            assert run_cli(capsys, "heal", "staging")[0] == 0
            toggles.on = dict.fromkeys(toggles.on, False)
        elif op == "tick":
            time.sleep(0.02)
        else:
            toggles.flip(op)
        verdicts = []
        for args in ((), (), ("--full",)):
            before = calls.count
            code, doc = drift(capsys, "staging", *args)
            quick += not args and calls.count == before
            verdicts.append((code, found(doc)))
        assert verdicts[0] == verdicts[1] == verdicts[2], (op, toggles.on, verdicts)
        assert (verdicts[0][0] == 0) == (not any(toggles.on.values())), (op, toggles.on, verdicts)
    assert quick >= 5  # the snapshot answered some of them
    with world.ctx().db.connect() as conn:
        rows = list(conn.execute("SELECT event, count FROM drift_events WHERE env = 'staging' ORDER BY id"))
    resolved = [r.event == "resolved" for r in rows]
    assert not any(a and b for a, b in itertools.pairwise(resolved)), rows
