"""A heal killed (SIGKILL, a power loss) after its `heal started` entry left that entry without an
outcome in the audit log for ever: the log could not tell a heal at work from one long dead. The next
heal of the environment, under the deploy lock that a heal at work would hold, records it as `failed`
first (saying it never recorded how it ended), so that every `started` is followed by its outcome; the
environment itself is healed as usual (what the killed heal left is drift like any other)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from graven.service import drift_heal
from helpers_deploy import World, append_to, tree_problems
from helpers_repo import run_cli


def _heal_entries(world: World) -> list[tuple[str, str]]:
    with world.ctx().db.connect() as conn:
        rows = conn.execute("SELECT entry FROM log_entries ORDER BY idx")
        entries = [json.loads(r[0]) for r in rows]
    return [(e["result"], e["reason"] or "") for e in entries if e["event"] == "heal"]


def _killed_in(monkeypatch: pytest.MonkeyPatch, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Run `graven heal staging` in a child that SIGKILLs itself when the heal calls ``name`` of
    graven.service.drift_heal (after its start was recorded)."""
    real: Callable[..., Any] = getattr(drift_heal, name)

    def killed(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            monkeypatch.setattr(drift_heal, name, killed)
            run_cli(capsys, "heal", "staging")
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_the_next_heal_records_the_outcome_of_a_killed_one(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = (world.env_dir("staging") / "current").resolve()
    append_to(release / "app/main.py", b"evil()\n")
    _killed_in(monkeypatch, "apply_heal", capsys)
    assert [result for result, _ in _heal_entries(world)] == ["started"]
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err
    assert tree_problems(release, world.manifest(digest)) == []
    entries = _heal_entries(world)
    assert [result for result, _ in entries] == ["started", "failed", "started", "ok"], entries
    assert "never recorded how it ended" in entries[1][1], entries[1]
    # settled once: a later heal (or one with nothing to do) adds no second outcome for it
    append_to(release / "app/main.py", b"evil()\n")
    assert run_cli(capsys, "heal", "staging")[0] == 0
    assert run_cli(capsys, "heal", "staging")[0] == 0
    again = [result for result, _ in _heal_entries(world)]
    assert again == ["started", "failed", "started", "ok", "started", "ok"], again
