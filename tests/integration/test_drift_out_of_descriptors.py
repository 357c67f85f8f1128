"""A drift check that runs out of file descriptors (EMFILE: `ulimit -n`, a busy `graven watch`) fails with
one line and exit 1: it never reports the files it could not open as drift (nor records a drift found in
the audit log), and never ends in a traceback. The next check, with descriptors to spare, is clean."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from helpers_deploy import World
from helpers_repo import run_cli


def _log_size(world: World) -> int:
    with world.ctx().db.connect() as conn:
        return len(list(conn.execute("SELECT idx FROM log_entries")))


def _emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def _open_failing(what: str) -> Callable[..., int]:
    real_open = os.open

    def fake(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        name = os.fsdecode(path)
        at = name if kwargs.get("dir_fd") is None else f"/releases/?/{name}"
        if what == "file" and at.endswith("/main.py") and "/releases/" in at:
            raise _emfile()
        if what == "dir" and flags & os.O_DIRECTORY and at.endswith("/app") and "/releases/" in at:
            raise _emfile()
        return real_open(path, flags, *args, **kwargs)

    return fake


@pytest.mark.parametrize(
    ("what", "full"),
    [("file", True), ("dir", True), ("list", True), ("file", False)],  # the fast check opens files only
)
def test_out_of_descriptors_is_an_error_not_drift(
    what: str, full: bool, world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = world.env_dir("staging") / "releases" / digest.removeprefix("sha256:")
    os.utime(release / "app" / "main.py")  # the fast check hashes it again, too
    before = _log_size(world)
    args = ["drift", "staging", *(["--full"] if full else [])]
    with monkeypatch.context() as patch:
        if what == "list":
            real_scandir = os.scandir

            def scandir(path: Any = ".") -> Any:
                if isinstance(path, int):
                    raise _emfile()
                return real_scandir(path)

            patch.setattr(os, "scandir", scandir)
        else:
            patch.setattr(os, "open", _open_failing(what))
        code, out, err = run_cli(capsys, *args)
    assert code == 1, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    assert "too many open files" in lines[0].lower(), err
    assert _log_size(world) == before  # nothing was found, so nothing is recorded
    assert run_cli(capsys, "drift", "staging", "--full")[0] == 0
    assert run_cli(capsys, "log", "verify")[0] == 0
