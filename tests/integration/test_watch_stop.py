"""A stop request ends `graven watch` promptly, even in the middle of a full check (the first after the
start, the daily one), which hashes every file: the check is abandoned (recorded as neither clean nor
drift, no alert, no heal) and the watcher goes on to its normal stop. A watcher that waited for the
check to end took longer than systemd's stop timeout on a large release, and was killed there, losing
what it held.

Not timed (a shared, loaded machine is slow at times): hashing is slowed down to PAUSE seconds a chunk
and the chunks read after the stop request are counted. A watcher that waits for its check reads on
(some 35 chunks of the 40 of the release); one that stops reads at most the chunk each hashing thread
had started, and (the CLI, whose signal may be acted on only after a chunk's time on a busy machine)
one more."""

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

from graven.drift.scan import Hasher
from graven.drift.walk import CHUNK
from graven.drift.watch import WatchOptions
from helpers_deploy import World, signal_state

BIG_FILES = 8
BIG_SIZE = 4 * CHUNK
PAUSE = 0.4  # seconds per chunk hashed: a full check of the release takes several seconds
READERS = Hasher().workers + 1  # what may read a chunk at once: the hashing threads and the walker


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
    hashing, asked = threading.Event(), threading.Event()
    after: list[int] = []  # the chunks whose reading started once the stop was asked
    read = os.read

    def slow_read(fd: int, size: int) -> bytes:
        if size == CHUNK and os.fstat(fd).st_size >= BIG_SIZE:  # a chunk of a large file being hashed
            hashing.set()
            if asked.is_set():
                after.append(fd)
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
        watcher.stop.set()
        asked.set()
        watcher.thread.join(timeout=60)
        assert not watcher.thread.is_alive()
        # a reader may have looked at the stop event just before it was set, never twice
        assert len(after) <= READERS, f"{len(after)} chunks read after the stop"
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


# The CLI with the hashing of large files slowed down, saying on stderr when it first hashes a chunk, and
# appending a line to the file $READS_LOG as it starts reading each chunk.
SLOW_CLI = textwrap.dedent(
    f"""
    import os, sys, time
    read, told = os.read, []
    log = os.open(os.environ["READS_LOG"], os.O_WRONLY | os.O_APPEND)
    def slow_read(fd, size):
        if size == {CHUNK} and os.fstat(fd).st_size >= {BIG_SIZE}:
            os.write(log, b"read\\n")
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


def run_slow_cli(world: World, args: list[str], sig: signal.Signals) -> tuple[int, int, str, str]:
    """Run ``graven ARGS`` with slow hashing, send ``sig`` once it hashes; its exit code, how many chunk
    reads it started after the signal was sent, its stdout, and (for a failure's message) its stderr
    and what it did with signals as the signal was sent."""
    log = world.home.parent / "reads.log"
    log.write_bytes(b"")
    env = {**os.environ, "GRAVEN_HOME": str(world.home), "READS_LOG": str(log)}
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
            with log.open("a") as signalled:  # what is logged after this line came after it
                signalled.write("signal\n")
            state = signal_state(proc.pid)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
            reads = log.read_text().splitlines()
            return proc.returncode, len(reads) - reads.index("signal") - 1, out, f"{state}; stderr {err!r}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_the_cli_watcher_stops_at_once_during_a_full_check(world: World, sig: signal.Signals) -> None:
    deploy_big(world)
    code, after, out, seen = run_slow_cli(world, ["watch", "staging"], sig)
    assert code == 0, seen
    # the chunk each reader was at, and one more should the signal be acted on a chunk's time late
    assert after <= 2 * READERS, f"{after} chunks read after {sig.name}"
    assert out == ""  # the check was abandoned: no line for it


def test_ctrl_c_still_interrupts_a_full_drift_check(world: World) -> None:
    """`graven drift --full` (no watcher): Ctrl-C ends it as before, exit 130."""
    deploy_big(world)
    code, _after, out, seen = run_slow_cli(world, ["drift", "--full", "staging"], signal.SIGINT)
    assert code == 130, seen
    assert out == ""
