"""A graven command SIGKILLed at every point where it changes the disk loses and corrupts nothing.

The command runs as a subprocess with an audit hook (:func:`sys.addaudithook`, no monkeypatching of
graven) that counts the events by which Python changes the file system (a file opened for writing, a
rename, a removal, a link, a directory made, a mode changed, a process started, a database opened) and
SIGKILLs the process just before the Nth one: a first run counts them, then the command is killed at
each of them in turn (or at an even sample of them when there are many). After each kill graven's own
commands must find the home and the environments whole: every artifact ``graven artifacts`` lists
verifies, ``graven log verify`` passes, ``status`` and ``history`` answer without a traceback, every
environment's ``current`` is a complete release of what it names, and the same command run again
succeeds, after which ``graven drift`` is clean.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import write_files
from helpers_deploy import CONFIG_PARSES, World, env_toml, make_world, tree_problems
from helpers_repo import run_cli

pytestmark = pytest.mark.slow

# Runs graven under an audit hook; argv: KILL_AT TRACE_FILE graven-args... KILL_AT 0 only records the
# events (one line each) in TRACE_FILE. Written with os.write, which raises no audit event.
_DRIVER = r"""
import os, signal, sys
kill_at, trace = int(sys.argv[1]), sys.argv[2]
fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = frozenset({
    "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
    "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "subprocess.Popen",
    "os.posix_spawn", "os.fork", "sqlite3.connect",
})
seen = [0]
pid = os.getpid()

def hook(event, args):
    if event == "open":
        mode, flags = args[1], args[2]
        writes = isinstance(flags, int) and flags & WRITE
        if not writes and not (isinstance(mode, str) and set(mode) & set("wax+")):
            return
    elif event not in CHANGES:
        return
    if os.getpid() != pid:
        return
    seen[0] += 1
    if kill_at == 0:
        os.write(fd, f"{event} {args[0]!r}\n".encode())
    elif seen[0] == kill_at:
        os.kill(pid, signal.SIGKILL)

sys.addaudithook(hook)
sys.argv = ["graven", *sys.argv[3:]]
from graven.cli.main import entry
entry()
"""

MAX_POINTS = 12  # kill points per command at most (an even sample of its events beyond; the suite's time)


def _run(home: Path, root: Path, kill_at: int, trace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GRAVEN_HOME=str(home), GRAVEN_DEPLOY_ROOT=str(root), PYTHONUTF8="1")
    env.pop("GRAVEN_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, str(kill_at), str(trace), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def kill_points(world: World, tmp_path: Path, *args: str) -> list[int]:
    """Run ``graven ARGS`` once to count its events; the event numbers to kill it at (the process runs
    to its end: the caller brings the state back for the killed runs)."""
    trace = tmp_path / "trace"
    done = _run(world.home, world.root, 0, trace, *args)
    assert done.returncode == 0, done.stderr
    total = len(trace.read_text().splitlines())
    assert total > 0
    if total <= MAX_POINTS:
        return list(range(1, total + 1))
    step = total / MAX_POINTS
    return sorted({1 + int(i * step) for i in range(MAX_POINTS)} | {total})


def kill_at(world: World, tmp_path: Path, point: int, *args: str) -> None:
    """Run ``graven ARGS`` and SIGKILL it just before its ``point``th event (a run from another state
    may make fewer: it then ends, and must succeed)."""
    done = _run(world.home, world.root, point, tmp_path / "trace", *args)
    assert done.returncode in (0, -signal.SIGKILL), (point, done.returncode, done.stderr)


def cli_ok(
    capsys: pytest.CaptureFixture[str], *args: str, codes: tuple[int, ...] = (0,), unless: str = "\0"
) -> str:
    """``graven ARGS`` in-process: one of ``codes``, or 2 with ``unless`` in its one-line error."""
    code, out, err = run_cli(capsys, *args)
    assert "Traceback" not in err, err
    assert code in codes or (code == 2 and unless in err and err.count("\n") == 1), (args, code, err)
    return out


def assert_whole(world: World, capsys: pytest.CaptureFixture[str], envs: tuple[str, ...]) -> None:
    """What graven's own commands say about the home and the environments after a kill."""
    listed = json.loads(cli_ok(capsys, "artifacts", "--json"))
    for item in listed:
        cli_ok(capsys, "verify", item["digest"])
    cli_ok(capsys, "log", "verify")
    cli_ok(capsys, "status")
    for env in envs:
        cli_ok(capsys, "history", env)
        live = world.live(env)
        if live is None:
            continue
        assert tree_problems(world.env_dir(env) / "current", world.manifest(live)) == [], env


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    toml = env_toml(
        "app",
        {
            env: {
                "path": env,
                "config": f"config/{env}.toml",
                "keep": 1,
                "activate": "true",
                "health": CONFIG_PARSES,
                "health_interval": 0,
                "health_retries": 0,
            }
            for env in ("staging", "prod")
        },
    )
    made = make_world(tmp_path, monkeypatch, toml)
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(made.root))
    yield made
    made.close()


PARTS = 3  # each command's kill points are shared between this many tests (each under ~10 s)


def _cycle(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    part: int,
    args: Callable[[int], tuple[str, ...]],
    *,
    before: Callable[[int], None] = lambda _i: None,
    envs: tuple[str, ...] = (),
    unless: str = "\0",
) -> int:
    """Kill ``graven args(i)`` at each of its points of ``part``, after ``before(i)`` set the state up;
    run it again (it must succeed, or fail with ``unless`` in its error) and check everything; the
    number of kill points."""
    before(0)
    points = kill_points(world, tmp_path, *args(0))[part::PARTS]
    for i, point in enumerate(points, start=1):
        before(i)
        kill_at(world, tmp_path, point, *args(i))
        assert_whole(world, capsys, envs)
        cli_ok(capsys, *args(i), unless=unless)
        assert_whole(world, capsys, envs)
        if envs:
            cli_ok(capsys, "drift")
    return len(points)


@pytest.mark.parametrize("part", range(PARTS))
def test_deploy_killed_at_every_change(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], part: int
) -> None:
    digests = [world.version(n) for n in range(2)]
    write_files(world.repo, {f"many/f{i:02d}.txt": f"{i}\n" for i in range(20)})
    digests.append(world.build(world.commit({})))
    assert world.deploy(digests[0], "staging").ok
    # each round deploys the digest after the live one (keep = 1: retention removes a release each time)

    def args(i: int) -> tuple[str, ...]:
        live = world.live("staging")
        return ("deploy", digests[(digests.index(live or digests[0]) + 1) % 3], "staging")

    assert _cycle(world, tmp_path, capsys, part, args, envs=("staging",)) >= 3


@pytest.mark.parametrize("part", range(PARTS))
def test_promote_killed_at_every_change(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], part: int
) -> None:
    digests = [world.version(n) for n in range(2)]

    def before(i: int) -> None:
        assert world.deploy(digests[i % 2], "staging").ok

    promote = ("promote", "staging", "prod")
    assert (
        _cycle(world, tmp_path, capsys, part, lambda i: promote, before=before, envs=("staging", "prod")) >= 3
    )


@pytest.mark.parametrize("part", range(PARTS))
def test_rollback_killed_at_every_change(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], part: int
) -> None:
    digests = [world.version(n) for n in range(2)]
    assert world.deploy(digests[0], "staging").ok

    def before(i: int) -> None:
        cli_ok(capsys, "unhold", "staging", codes=(0, 1, 2))
        if world.live("staging") != digests[1]:
            assert world.deploy(digests[1], "staging").ok

    # killed once its switch is recorded, the rollback is done: run again, it says so
    args = ("rollback", "staging", "--to", digests[0])
    n = _cycle(
        world,
        tmp_path,
        capsys,
        part,
        lambda i: args,
        before=before,
        envs=("staging",),
        unless="is already live",
    )
    assert n >= 3


@pytest.mark.parametrize("part", range(PARTS))
def test_build_killed_at_every_change(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], part: int
) -> None:
    world.build()

    def before(i: int) -> None:  # a new commit each time: nothing of it is stored yet
        world.commit({"app/version.txt": f"build {i}\n", f"data/f{i}.bin": os.urandom(64)})

    assert (
        _cycle(world, tmp_path, capsys, part, lambda i: ("build", "-C", str(world.repo)), before=before) >= 3
    )


@pytest.mark.parametrize("part", range(PARTS))
def test_export_killed_at_every_change(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], part: int
) -> None:
    digest = world.version(1)
    out = tmp_path / "out"
    out.mkdir()
    archive, envelope = out / "app.tar.zst", out / "app.dsse.json"
    args = ("export", digest, "-o", str(archive), "--attestation", str(envelope))
    assert _cycle(world, tmp_path, capsys, part, lambda i: args) >= 1
    # a kill left the whole archive and envelope or what stood there before; the next export removed
    # the temp files the killed ones left beside them
    assert sorted(p.name for p in out.iterdir()) == ["app.dsse.json", "app.tar.zst"]


@pytest.mark.parametrize("part", range(PARTS))
def test_import_killed_at_every_change(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    part: int,
) -> None:
    digest = world.version(1)
    archive, envelope = tmp_path / "app.tar.zst", tmp_path / "app.dsse.json"
    cli_ok(capsys, "export", digest, "-o", str(archive), "--attestation", str(envelope))
    other = tmp_path / "other-home"
    other.mkdir()
    shutil.copytree(world.home / "trust", other / "trust")
    monkeypatch.setenv("GRAVEN_HOME", str(other))
    second = World(home=other, repo=world.repo, root=world.root)
    args = ("import", str(archive), "--attestation", str(envelope))
    assert _cycle(second, tmp_path, capsys, part, lambda i: args) >= 1
    cli_ok(capsys, "verify", digest)
    second.close()


@pytest.mark.parametrize("part", range(PARTS))
def test_keys_killed_at_every_change(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    part: int,
) -> None:
    def generate(i: int) -> tuple[str, ...]:
        return ("keys", "generate", "--name", f"k{i}")

    points = kill_points(world, tmp_path, *generate(0))[part::PARTS]
    for i, point in enumerate(points, start=1):
        kill_at(world, tmp_path, point, *generate(i))
        listed = json.loads(cli_ok(capsys, "keys", "list", "--json"))
        assert listed is not None
        cli_ok(capsys, "log", "verify")
        code, _out, err = run_cli(capsys, *generate(i))
        assert "Traceback" not in err
        if code != 0:  # the killed run named its key already: the message says how to trust it
            assert code == 2 and "already exists" in err, err
            pem = tmp_path / f"k{i}.pub"
            pem.write_text(cli_ok(capsys, "keys", "export", f"k{i}"))
            cli_ok(capsys, "keys", "trust", str(pem))
        # the new key signs builds that verify
        world.commit({"app/version.txt": f"key {i}\n"})
        monkeypatch.setenv("GRAVEN_SIGNING_KEY", f"k{i}")
        built = cli_ok(capsys, "build", "-C", str(world.repo)).split()[0]
        cli_ok(capsys, "verify", built)
    assert len(points) >= 1
