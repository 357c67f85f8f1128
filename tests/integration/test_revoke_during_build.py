"""`graven keys revoke` run while a `graven build` is signing with that key.

The build checks at its start that its key is not revoked; a step build runs for minutes after that.
A revocation in between used to go unnoticed: the build printed its digest and exited 0, the audit log
recorded `sign ... provenance signed by K` *after* `key-revoked K`, and every verify and deploy of the
artifact then failed (a CI job green, the next one red, and a log in which a revoked key keeps
signing). The build looks again under the database's writers' lock, where the revocation's own log
entry is written: either the revocation came first and nothing is recorded, or the build's entries
come before it in the log.

The build runs as a real process whose step waits on a FIFO: the test revokes the key while the step
holds the build there (after the start's check), then lets it go. No timing is involved.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graven.home import Home
from graven.service.keys import revoke_key
from graven.signing.keys import KeyStore
from helpers_deploy import World
from helpers_repo import run_cli

_DEADLINE = 60.0


def _open_gate(gate: Path, proc: subprocess.Popen[str]) -> int:
    """The FIFO's write end, once the build's step has opened it to read (the build is then past its
    start); fails when the build ends first."""
    end = time.monotonic() + _DEADLINE
    while time.monotonic() < end:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if proc.poll() is not None:
            break
        time.sleep(0.01)  # polls for the step's open; no outcome depends on how long it takes
    raise AssertionError(f"the build's step never opened the gate (exit {proc.poll()})")


def test_a_key_revoked_while_the_build_runs_signs_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    toml = (
        '[artifact]\nname = "app"\n[build]\nsandbox = "none"\n'
        f'steps = ["cat {gate} > /dev/null && mkdir -p out && echo built > out/a.txt"]\n'
        'outputs = ["out/"]\n'
    )
    world.commit({}, toml)
    keyid = KeyStore(world.home / "keys").resolve("default").keyid
    env = dict(os.environ, GRAVEN_HOME=str(world.home), GRAVEN_ALLOW_UNSANDBOXED="1")
    for name in ("GRAVEN_DB_URL", "GRAVEN_SIGNING_KEY"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "graven", "build", "-C", str(world.repo)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        fd = _open_gate(gate, proc)
        revoke_key(Home(root=world.home), keyid)  # the build is in its step: past the start's check
        os.close(fd)  # the step goes on
        out, err = proc.communicate(timeout=_DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("graven: error: "), err
    assert keyid[:16] in err and "revoked" in err, err
    assert "sha256:" not in out  # no digest printed: nothing was recorded

    code, listed, _ = run_cli(capsys, "artifacts", "--json")
    assert code == 0 and json.loads(listed) == []
    code, verified, _ = run_cli(capsys, "log", "verify")
    assert code == 0, verified
    code, exported, _ = run_cli(capsys, "log", "export")
    events = [json.loads(line)["event"] for line in exported.splitlines()]
    assert events[-1] == "key-revoked" and "sign" not in events, events
