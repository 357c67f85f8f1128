"""An environment whose directory this user cannot enter (``chmod 000 PATH``, a volume mounted with
other permissions): ``graven drift`` says so for that environment, exits 1 and still checks the
others; ``graven watch`` says so in an ``error`` line and goes on watching the others."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_drift_watch import Watcher, wait_for

from graven.drift.watch import WatchOptions
from helpers_deploy import World
from helpers_repo import run_cli


@contextlib.contextmanager
def unreadable(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``directory`` mode 0000: as a user that is not root, really; as root (whom permission bits do not
    stop), every stat below it fails as it fails for such a user (EACCES)."""
    if os.geteuid() != 0:
        directory.chmod(0)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    below = str(directory) + os.sep

    def refusing(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("dir_fd") is None and isinstance(path, str | os.PathLike):
                name = os.fspath(path)
                if isinstance(name, str) and name.startswith(below):
                    raise PermissionError(13, "Permission denied", name)
            return real(path, *args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        patch.setattr(os, "stat", refusing(os.stat))
        patch.setattr(os, "lstat", refusing(os.lstat))
        yield


def deployed_twice(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    assert world.deploy(digest, "prod").ok


def test_drift_names_an_unreadable_environment_and_checks_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deployed_twice(world)
    staging = world.env_dir("staging")
    with unreadable(staging, monkeypatch):
        code, out, err = run_cli(capsys, "drift", "--json")
        text_code, text, text_err = run_cli(capsys, "drift")
    assert code == 1, (out, err)
    doc = json.loads(out)
    by_env = {env["env"]: env for env in doc["environments"]}
    assert set(by_env) == {"staging", "prod"}
    assert by_env["prod"]["clean"] is True and by_env["prod"]["error"] is None
    assert not by_env["staging"]["clean"]
    assert str(staging) in by_env["staging"]["error"]
    assert "permission denied" in by_env["staging"]["error"].lower()
    assert "Traceback" not in err
    assert text_code == 1, (text, text_err)
    assert "prod: clean" in text and "staging" in text + text_err


def test_watch_goes_on_watching_the_others_when_one_environment_is_unreadable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed_twice(world)
    with unreadable(world.env_dir("staging"), monkeypatch):
        watcher = Watcher(world, WatchOptions(interval=0.2, as_json=True, full_every=3600))
        try:

            def seen() -> bool:
                lines = [json.loads(line) for line in watcher.lines]
                failed = any(d["type"] == "error" and d["env"] == "staging" for d in lines)
                return failed and sum(d["type"] == "check" and d["env"] == "prod" for d in lines) >= 2

            assert wait_for(lambda: seen() or watcher.error is not None), watcher.lines
            assert watcher.error is None, watcher.error
            assert watcher.thread.is_alive()
        finally:
            watcher.close()
