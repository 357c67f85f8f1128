"""What bubblewrap's ``--die-with-parent`` and ``--new-session`` give a sandboxed step, checked by their
effect rather than by the argument list: a step does not outlive a graven killed with SIGKILL (which
runs no ``finally``), and a step is the leader of a session of its own, inside the sandbox, with no
controlling terminal to push input into (TIOCSTI) even when graven runs on one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import process_alive
from helpers_services import require_tool, sandbox_python

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require_tool("bwrap")


def _toml(step: str) -> str:
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{json.dumps(step)}]\noutputs = ["out/"]\n'


def _process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process this test can see."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (parent, cmdline)
    return table


def _descendants(root: int) -> dict[int, bytes]:
    """The processes below ``root`` (pid -> command line)."""
    table = _process_table()
    found: dict[int, bytes] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline
                todo.append(pid)
    return found


def test_a_step_does_not_outlive_a_graven_killed_with_sigkill(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("sleep 3001"))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graven", "build", "-C", str(repo)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "TMPDIR": str(tmpdir)},
        )
    below: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + 60
        while b"sleep\x003001\x00" not in below.values():  # the step runs: bwrap, its init, sh, sleep
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, below
            time.sleep(0.05)
            below = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while [pid for pid in below if process_alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = {pid: below[pid] for pid in below if process_alive(pid)}
        assert survivors == {}, "the sandboxed step outlived graven"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in below:  # only what this test's graven started
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


SESSION_PROBE = """\
import errno, fcntl, json, os, termios

def outcome(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"

def push(fd):
    fcntl.ioctl(fd, termios.TIOCSTI, b"#")

with open("/proc/self/stat") as handle:
    fields = handle.read().rsplit(")", 1)[1].split()  # state ppid pgrp session tty_nr ...
sid = os.getsid(0)
leader = None
if sid:
    with open(f"/proc/{sid}/cmdline", "rb") as handle:
        leader = handle.read().split(b"\\0")[:2]
doc = {
    "sid": sid,
    "leader": [part.decode() for part in leader] if leader else None,
    "tty_nr": int(fields[4]),
    "dev_tty": outcome(lambda: os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))),
    "tiocsti": {fd: outcome(lambda: push(fd)) for fd in (0, 1, 2)},
}
os.makedirs("out", exist_ok=True)
with open("out/session.json", "w") as handle:
    json.dump(doc, handle)
"""


def test_a_step_leads_a_session_of_its_own_without_graven_terminal(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("setsid")
    py = sandbox_python()
    repo = make_repo(tmp_path / "repo", {"probe.py": SESSION_PROBE}, _toml(f"{py} probe.py"))
    master, slave = os.openpty()
    try:  # graven on a terminal of its own (its controlling terminal and standard input)
        result = subprocess.run(
            ["setsid", "--ctty", sys.executable, "-m", "graven", "build", "-C", str(repo), "--json"],
            stdin=slave,
            capture_output=True,
            text=True,
            env={**os.environ, "TMPDIR": str(tmp_path)},
            timeout=120,
            check=False,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stderr
    export = tmp_path / "a.tar"
    assert run_cli("export", json.loads(result.stdout)["digest"], "-o", export)[0] == 0
    with tarfile.open(export) as tar:
        member = tar.extractfile("out/session.json")
        assert member is not None
        doc = json.loads(member.read())
    # the session's leader is inside the sandbox's PID namespace (bwrap's --new-session); without it
    # the leader is the launcher outside, and the step sees session 0
    assert doc["sid"] > 0 and doc["leader"] is not None, doc
    # no controlling terminal, and nothing to push input into
    assert doc["tty_nr"] == 0 and doc["dev_tty"] == "ENXIO", doc
    assert "ok" not in doc["tiocsti"].values(), doc
