"""Ctrl-C (or SIGTERM) ends `graven drift --full` at once, even in the middle of a large release: the
hashing threads and the forked walker are told to stop (the stop event `graven watch` uses), instead
of hashing on while the command waited for them. It exits with the CLI's usual message and code, no
traceback, writes no cache, split plan nor clean snapshot, and leaves no process behind.

A large release is simulated: each 1 MiB chunk of a large file takes PAUSE seconds to read (a slow
disk), so that a full check takes many seconds. Not timed (a shared, loaded machine is slow at times):
each chunk read is logged, and a command that waits for its threads or for its forked walker reads
on after the signal (some 35 chunks of the 40), where one that stops reads at most a chunk or two
per hashing thread or process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graven.drift.scan import SPLIT_MIN_FILES, Hasher
from graven.drift.walk import CHUNK
from graven.service.drift import check
from helpers_deploy import World, signal_state

BIG_FILES = 8
BIG_SIZE = 4 * CHUNK
PAUSE = 0.4  # seconds per chunk of a large file: a full check takes 6 s or more

# graven's console script (graven.cli.main.entry) with the reading of large files slowed down; says
# "hashing" on stderr when a process (the command, or its forked walker) first reads such a chunk, and
# appends "PID PPID" of the reader to the file $READS_LOG as it starts each such read
SLOW_CLI = textwrap.dedent(
    f"""
    import os, sys, time
    read, told = os.read, []
    log = os.open(os.environ["READS_LOG"], os.O_WRONLY | os.O_APPEND)
    def slow_read(fd, size):
        if size == {CHUNK} and os.fstat(fd).st_size >= {BIG_SIZE}:
            os.write(log, f"{{os.getpid()}} {{os.getppid()}}\\n".encode())
            if not told:
                told.append(1)
                sys.stderr.write("hashing\\n")
                sys.stderr.flush()
            time.sleep({PAUSE})
        return read(fd, size)
    os.read = slow_read
    from graven.cli.main import entry
    entry()
    """
)


def deploy(world: World, *, forked: bool) -> Path:
    """Deploy staging: large files in four directories, and (``forked``) enough small ones that a full
    check shares the work with a forked walker, each process hashing large files. The environment."""
    files: dict[str, bytes | str | None] = {
        f"app/data{i % 4}/blob{i}.bin": bytes([i]) * BIG_SIZE for i in range(BIG_FILES)
    }
    if forked:
        files.update({f"app/small{i % 16}/f{i}.txt": f"{i}\n" for i in range(SPLIT_MIN_FILES + 200)})
    world.commit(files)
    assert world.deploy(world.build(), "staging").ok
    return world.env_dir("staging")


def drift_files(env: Path) -> dict[str, bytes]:
    """What the checks keep in PATH/.graven/drift (not the clock, which a check writes to read the file
    system's time before it starts)."""
    where = env / ".graven" / "drift"
    if not where.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in where.iterdir() if p.name != "clock"}


def slow_env(world: World) -> dict[str, str]:
    """The environment of a slowed-down command: its home, and an empty log of its chunk reads."""
    log = world.home.parent / "reads.log"
    log.write_bytes(b"")
    return {**os.environ, "GRAVEN_HOME": str(world.home), "READS_LOG": str(log)}


def logged_reads(env: dict[str, str]) -> list[str]:
    """The lines of the log of chunk reads: "PID PPID" of each read started, in order."""
    return Path(env["READS_LOG"]).read_text().splitlines()


def interrupt(
    world: World, sig: signal.Signals, *, wait: float = 0.0
) -> tuple[int, int, list[str], str, str]:
    """Run `graven drift --full staging` (slowed down) in a session of its own; send it ``sig`` (to the
    command alone, as `kill` does) ``wait`` seconds after it starts hashing. Its exit code, how many
    chunk reads it started after the signal was sent, its stderr lines (without the slow reader's),
    its stdout, and what it did with signals as the signal was sent (for a failure's message)."""
    env = slow_env(world)
    with subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "drift", "--full", "staging"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert line == "hashing\n", line + proc.stderr.read()
            time.sleep(wait)
            with open(env["READS_LOG"], "a") as log:  # what is logged after this line came after it
                log.write("signal\n")
            state = signal_state(proc.pid)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
            try:  # the forked walker, had the command left it: in the command's process group
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                pass
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("a process of the command outlived it")
            reads = logged_reads(env)
            after = len(reads) - reads.index("signal") - 1
            return proc.returncode, after, [e for e in err.splitlines() if e != "hashing"], out, state
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def readers(forked: bool) -> int:
    """What may read a chunk at once: the hashing threads, the command's walker, a forked walker."""
    return Hasher().workers + 1 + forked


@pytest.mark.parametrize("forked", [False, True], ids=["threads", "forked"])
@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [(signal.SIGINT, 130, "graven: interrupted"), (signal.SIGTERM, 143, "graven: terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_full_check_stops_at_once(
    world: World, forked: bool, sig: signal.Signals, code: int, message: str
) -> None:
    env = deploy(world, forked=forked)
    exit_code, after, err, out, state = interrupt(world, sig, wait=0.3)
    assert (exit_code, err, out) == (code, [message], ""), state  # one line, no traceback
    # each reader stops within a chunk: one it started as the signal came, and (a busy machine may
    # take longer than a chunk's PAUSE to act on the signal) one more; a command that waited for its
    # threads or its forked walker read on (~35 of the READS = 40)
    assert after <= 2 * readers(forked), f"{after} chunks read after {sig.name}"
    assert drift_files(env) == {}  # no cache, split plan nor clean snapshot of a check never finished


def test_an_interrupted_check_keeps_what_the_last_one_recorded(world: World) -> None:
    """After a complete full check (its cache, snapshot and split plan, which makes the next full check
    fork its walker before it imports the check: graven.service.drift_early), an interrupted one
    changes none of them."""
    env = deploy(world, forked=True)
    (report,) = check(world.ctx(), ["staging"], full=True)
    assert report.clean
    kept = drift_files(env)
    assert {"cache", "split"} <= set(kept)
    exit_code, after, err, _out, state = interrupt(world, signal.SIGINT, wait=0.3)
    assert (exit_code, err) == (130, ["graven: interrupted"]), state
    assert after <= 2 * readers(forked=True), f"{after} chunks read after SIGINT"
    assert drift_files(env) == kept


def _running_in_group(group: int) -> list[int]:
    """The processes of process group ``group`` that still run (not zombies waiting for init)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(entry))
    return found


def test_a_forked_walker_whose_command_was_killed_stops(world: World) -> None:
    """SIGKILL (the OOM killer, systemd's last resort) gives the command no chance to stop its forked
    walker: the walker sees that its parent is gone and stops at its next directory or large file,
    instead of hashing its whole part of the release for no one."""
    deploy(world, forked=True)
    env = slow_env(world)
    with subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "drift", "--full", "staging"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            assert proc.stderr.readline() == "hashing\n"
            # the command and its walker (forked maybe after the command's first read: wait for it)
            deadline = time.monotonic() + 30
            while len(_running_in_group(proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(_running_in_group(proc.pid)) == 2
            proc.kill()
            proc.wait()
            deadline = time.monotonic() + 60  # the walker, which may first end a large file
            while _running_in_group(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _running_in_group(proc.pid)
            # reads by the walker once it was orphaned (not timed: its parent's pid, not the clock):
            # at most the rest of the large file it was hashing (its chunks and the read that finds
            # its end), not the rest of its part (several large files)
            orphaned = [r for r in logged_reads(env) if str(proc.pid) not in r.split()]
            assert len(orphaned) <= BIG_SIZE // CHUNK + 1, f"the walker read {len(orphaned)} chunks"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
