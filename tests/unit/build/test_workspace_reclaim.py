"""A step build's workspace (the checkout and the scratch copy, in the temp directory) left by a graven
killed with SIGKILL is removed by the next step build; a live build's workspace, and a directory that
is not a workspace, are left alone."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from graven.build.workspace import LOCK_NAME, Workspace, reclaim


@pytest.fixture
def tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _in_child() -> tuple[int, Path]:
    """A child process that makes a workspace (with a read-only directory in it, as Go leaves its
    module cache), reports its path and waits to be killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            ws = Workspace.create(nested=1)
            (ws.root / "src" / "ro").mkdir()
            (ws.root / "src" / "ro").chmod(0o555)
            os.write(write_end, str(ws.root).encode())
            os.close(write_end)
            while True:
                time.sleep(1)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        root = Path(pipe.read().decode())
    return pid, root


def _top(root: Path) -> Path:
    return root.parent if root.name.startswith("level-") else root


def test_a_killed_gravens_workspace_is_removed_by_the_next_build(tmpdir: Path) -> None:
    pid, root = _in_child()
    assert (_top(root) / LOCK_NAME).is_file()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    ws = Workspace.create()
    try:
        assert not _top(root).exists()
        assert sorted(p.name for p in tmpdir.iterdir()) == [ws.root.name]
    finally:
        ws.remove()
    assert list(tmpdir.iterdir()) == []


def test_a_live_builds_workspace_and_other_directories_are_left_alone(tmpdir: Path) -> None:
    pid, root = _in_child()
    not_ours = tmpdir / "graven-build-by-hand"
    not_ours.mkdir()
    (not_ours / "data").write_text("kept\n")
    try:
        assert reclaim(tmpdir) == []
        ws = Workspace.create()
        ws.remove()
        assert root.is_dir() and (not_ours / "data").is_file()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert reclaim(tmpdir) == [_top(root)]
    assert (not_ours / "data").is_file()


def test_a_workspace_in_use_by_this_process_is_not_reclaimed(tmpdir: Path) -> None:
    """flock locks belong to open files: this process's own live workspace is as locked as another's
    (``build --check`` makes its second workspace while the first may still exist)."""
    first = Workspace.create()
    try:
        second = Workspace.create()
        second.remove()
        assert first.root.is_dir()
    finally:
        first.remove()


def test_a_workspace_whose_removal_was_interrupted_is_removed_by_the_next_build(
    tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM while a build removes its workspace (its last step: the signal comes as the
    build ends, or a second Ctrl-C cuts the clean-up of the first) leaves part of it; the lock file
    must be among what stays, or no later build could tell it from a directory being made, and the
    checkout would stay in the temp directory for good."""
    ws = Workspace.create(nested=1)
    for name in ("src", "home", "tmp"):
        (ws.root / name / "f").write_text("x\n")
    real = os.rmdir

    def interrupted(*args: object, **kwargs: object) -> None:  # the first directory removed
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rmdir", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            ws.remove()
    finally:
        monkeypatch.setattr(os, "rmdir", real)
    top = _top(ws.root)
    assert top.is_dir()
    assert reclaim(tmpdir) == [top]
    assert list(tmpdir.iterdir()) == []
