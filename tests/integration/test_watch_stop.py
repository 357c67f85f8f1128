"""A stop request ends `graven watch` promptly, even in the middle of a full check (the first after the
start, the daily one), which hashes every file: the check is abandoned (recorded as neither clean nor
drift, no alert, no heal) and the watcher goes on to its normal stop. A watcher that waited for the
check to end took longer than systemd's stop timeout on a large release, and was killed there, losing
what it held."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from test_drift_watch import Receiver, Watcher, tamper

from graven.drift.walk import CHUNK
from graven.drift.watch import WatchOptions
from helpers_deploy import World

BIG_FILES = 8
BIG_SIZE = 4 * CHUNK
PAUSE = 0.4  # seconds per chunk hashed: a full check of the release takes several seconds
BOUND = 2.0  # seconds from the stop request to the end of the watcher


def deploy_big(world: World) -> None:
    """Deploy a release with a few large files to staging."""
    world.commit({f"app/data/blob{i}.bin": bytes([i]) * BIG_SIZE for i in range(BIG_FILES)})
    assert world.deploy(world.build(), "staging").ok


def drift_rows(world: World) -> list[tuple[Any, ...]]:
    with world.ctx().db.connect() as conn:
        events = [tuple(r) for r in conn.execute("SELECT env, event, result FROM drift_events ORDER BY id")]
        state = [tuple(r) for r in conn.execute("SELECT env, keys, checked_at FROM drift_state ORDER BY env")]
    return events + state


def test_a_stop_abandons_a_running_full_check(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy_big(world)
    tamper(world, b"# drift\n")  # what the check would alert, and heal
    before = drift_rows(world)
    hashing = threading.Event()
    read = os.read

    def slow_read(fd: int, size: int) -> bytes:
        if size == CHUNK and os.fstat(fd).st_size >= BIG_SIZE:  # a chunk of a large file being hashed
            hashing.set()
            time.sleep(PAUSE)
        return read(fd, size)

    monkeypatch.setattr(os, "read", slow_read)
    receiver = Receiver()
    watcher = Watcher(
        world, WatchOptions(as_json=True, heal=True, webhook=receiver.url, metrics_port=0, interval=3600)
    )
    try:
        port = watcher.ready["metrics_port"]
        assert hashing.wait(15), "the first (full) check never hashed a large file"
        asked = time.monotonic()
        watcher.stop.set()
        watcher.thread.join(timeout=30)
        took = time.monotonic() - asked
        assert not watcher.thread.is_alive()
        assert took < BOUND, f"the watcher took {took:.1f}s to stop"
        assert watcher.error is None
        assert [json.loads(line)["type"] for line in watcher.lines] == ["metrics"]  # no check, alert, heal
        assert watcher.warnings == []
        assert receiver.alerts == []
    finally:
        watcher.close()
        receiver.close()
    monkeypatch.setattr(os, "read", read)
    assert drift_rows(world) == before  # neither clean nor drift was recorded
    with pytest.raises(urllib.error.URLError):  # the metrics server was closed
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    main = (world.env_dir("staging") / "current").resolve() / "app/main.py"
    assert main.read_bytes().endswith(b"# drift\n")  # not healed


# The CLI with the hashing of large files slowed down, saying on stderr when it first hashes a chunk.
SLOW_CLI = textwrap.dedent(
    f"""
    import os, sys, time
    read, told = os.read, []
    def slow_read(fd, size):
        if size == {CHUNK} and os.fstat(fd).st_size >= {BIG_SIZE}:
            if not told:
                told.append(1)
                sys.stderr.write("hashing\\n")
                sys.stderr.flush()
            time.sleep({PAUSE})
        return read(fd, size)
    os.read = slow_read
    from graven.cli.main import main
    raise SystemExit(main())
    """
)


def run_slow_cli(world: World, args: list[str], sig: signal.Signals) -> tuple[int, float, str]:
    """Run ``graven ARGS`` with slow hashing, send ``sig`` once it hashes; its exit code, the seconds it
    took to exit after the signal and its stdout."""
    env = {**os.environ, "GRAVEN_HOME": str(world.home)}
    with subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert line == "hashing\n", line + proc.stderr.read()
            proc.send_signal(sig)
            asked = time.monotonic()
            out, _err = proc.communicate(timeout=60)
            return proc.returncode, time.monotonic() - asked, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_the_cli_watcher_stops_at_once_during_a_full_check(world: World, sig: signal.Signals) -> None:
    deploy_big(world)
    code, took, out = run_slow_cli(world, ["watch", "staging"], sig)
    assert code == 0
    assert took < BOUND, f"graven watch took {took:.1f}s to stop"
    assert out == ""  # the check was abandoned: no line for it


def test_ctrl_c_still_interrupts_a_full_drift_check(world: World) -> None:
    """`graven drift --full` (no watcher): Ctrl-C ends it as before, exit 130."""
    deploy_big(world)
    code, _took, out = run_slow_cli(world, ["drift", "--full", "staging"], signal.SIGINT)
    assert code == 130
    assert out == ""
