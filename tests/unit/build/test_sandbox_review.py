"""Review fixes in the sandbox, the workspace, output collection and the CLI's signal handling:
PATH directories inside a hidden directory are bound back (in an order bwrap accepts), /tmp is limited
where bwrap can, bwrap's options do not show in /proc/1/cmdline, nothing a host step starts outlives it,
the workspace is removed whatever modes the steps left, and unreadable outputs are one line."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import process_alive as _alive
from graven.build import sandbox
from graven.build.sandbox import (
    TMP_SIZE_LIMIT,
    BubblewrapRunner,
    HostEntry,
    HostRunner,
    SandboxLayout,
    bwrap_argv,
    hidden_paths,
    probe_bubblewrap,
    shown_paths,
    tmp_size_limit,
    tmpfs_size_supported,
)
from graven.errors import BackendError, InputError
from helpers_services import require_tool, unavailable

ROOT = (HostEntry("bin", "usr/bin"), HostEntry("etc"), HostEntry("usr"), HostEntry("tmp"))


def _layout(**extra: object) -> SandboxLayout:
    return SandboxLayout(
        src=Path("/host/ws/src"),
        work=Path("/host/ws/work"),
        home=Path("/host/ws/home"),
        root_entries=ROOT,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp (which the sandbox does not mirror: nothing there is hidden)."""
    path = Path(os.path.realpath(tempfile.mkdtemp(prefix="graven-review-", dir="/var/tmp")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _make_tree(root: Path) -> dict[str, Path]:
    """repo/ with a virtualenv (.venv/bin + pyvenv.cfg), a plain tools/bin, and a secret."""
    repo = root / "repo"
    paths = {
        "repo": repo,
        "venv_bin": repo / ".venv" / "bin",
        "tools_bin": repo / "tools" / "bin",
    }
    for key in ("venv_bin", "tools_bin"):
        paths[key].mkdir(parents=True)
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (repo / ".env").write_text("SECRET\n")
    return paths


# -- 6. hiding -------------------------------------------------------------------------------------


def test_a_directory_holding_a_path_directory_is_hidden_and_the_path_directory_shown(
    outside_tmp: Path,
) -> None:
    p = _make_tree(outside_tmp)
    repo = os.path.realpath(p["repo"])
    tools = [str(p["venv_bin"]), str(p["tools_bin"]), "/usr/bin", "relative/bin", ""]
    assert hidden_paths([p["repo"]], tools) == (repo,)  # was (): the whole working tree was shown
    assert hidden_paths([p["repo"]], [str(p["repo"])]) == ()  # a PATH directory itself stays visible
    shown = shown_paths((repo,), tools)
    # the virtualenv comes whole (its scripts need their lib/), a plain bin directory alone
    assert shown == ((f"{repo}/.venv", f"{repo}/.venv"), (f"{repo}/tools/bin", f"{repo}/tools/bin"))
    assert shown_paths((repo,), ["/usr/bin", "relative/bin"]) == ()
    # one below another is covered by it
    (p["venv_bin"] / "sub").mkdir()
    assert shown_paths((repo,), [str(p["venv_bin"]), str(p["venv_bin"] / "sub")]) == (
        (f"{repo}/.venv", f"{repo}/.venv"),
    )


def test_a_path_directory_reached_through_a_symlink_inside_the_hidden_one_is_bound_there(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    elsewhere = tmp_path / "elsewhere" / "bin"
    elsewhere.mkdir(parents=True)
    repo.mkdir()
    (repo / "bin").symlink_to(elsewhere)
    real_repo = os.path.realpath(repo)
    assert shown_paths((real_repo,), [f"{real_repo}/bin"]) == (
        (os.path.realpath(elsewhere), f"{real_repo}/bin"),
    )


def test_argv_binds_path_directories_into_the_hidden_tmpfs_before_making_it_read_only() -> None:
    layout = _layout(
        hidden=("/srv/repo", "/srv/repo/.graven", "/zz"),
        shown=(("/srv/repo/.venv", "/srv/repo/.venv"),),
    )
    argv = bwrap_argv("bwrap", layout, {}, ["true"])
    tmpfs_repo = argv.index("/srv/repo")
    bind = argv.index("/srv/repo/.venv")
    nested = argv.index("/srv/repo/.graven")
    remounts = [i for i, a in enumerate(argv) if a == "--remount-ro"]
    assert argv[tmpfs_repo - 1] == "--tmpfs" and argv[bind - 1] == "--ro-bind"
    assert tmpfs_repo < nested < bind  # a directory before what lies below it
    # every hidden directory is made read-only only after every mount into it
    assert [argv[i + 1] for i in remounts] == ["/srv/repo", "/srv/repo/.graven", "/zz", "/"]
    assert min(remounts) > bind


def test_the_runner_shows_path_directories_inside_a_hidden_one_and_nothing_else(
    tmp_path: Path, outside_tmp: Path
) -> None:
    require_tool("bwrap")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    p = _make_tree(outside_tmp)
    (p["venv_bin"] / "mytool").write_text("#!/bin/sh\necho venv tool\n")
    (p["venv_bin"] / "mytool").chmod(0o755)
    for name in ("src", "work", "home"):
        (tmp_path / name).mkdir()
    hidden = hidden_paths([p["repo"]], [str(p["venv_bin"])])
    layout = SandboxLayout(
        tmp_path / "src", tmp_path / "work", tmp_path / "home", sandbox.host_root_entries(), hidden=hidden
    )
    runner = BubblewrapRunner(bwrap, layout, {"PATH": f"{p['venv_bin']}:/usr/bin:/bin"})
    script = f"mytool > tool; ls -A {p['repo']} > ls; cat {p['repo']}/.env > secret 2>&1; true"
    with (tmp_path / "log").open("wb") as log:
        assert runner.run(script, log=log, timeout=30, network=False) == 0, (tmp_path / "log").read_text()
    work = tmp_path / "work"
    assert (work / "tool").read_text() == "venv tool\n"
    assert (work / "ls").read_text().split() == [".venv"]
    assert "SECRET" not in (work / "secret").read_text()


# -- 7, 8. /tmp size, /proc/1/cmdline -----------------------------------------------------------------


def test_tmp_size_is_limited_only_where_bwrap_can(tmp_path: Path) -> None:
    assert 0 < tmp_size_limit() <= TMP_SIZE_LIMIT
    argv = bwrap_argv("bwrap", _layout(devices="/w/dev"), {}, ["true"], tmp_size=12345)
    tmp = argv.index("/tmp")
    assert argv[tmp - 3 : tmp] == ["--size", "12345", "--tmpfs"]
    shm = argv.index("/dev/shm")
    assert argv[shm - 3 : shm] == ["--size", "12345", "--tmpfs"]
    assert "--size" not in bwrap_argv("bwrap", _layout(), {}, ["true"])
    old = tmp_path / "bwrap"  # a bubblewrap before 0.7
    old.write_text(
        '#!/bin/sh\n[ "$1" = --size ] && { echo "bwrap: Unknown option --size" >&2; exit 1; }\nexit 0\n'
    )
    old.chmod(0o755)
    assert tmpfs_size_supported(str(old)) is False
    assert tmpfs_size_supported(str(tmp_path / "missing")) is False
    runner = BubblewrapRunner(str(old), _layout(), {})
    assert "--size" not in runner.argv("true", network=False)


def test_pid_1_in_the_sandbox_shows_no_host_path(tmp_path: Path) -> None:
    require_tool("bwrap")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    for name in ("src", "work", "home"):
        (tmp_path / name).mkdir()
    layout = SandboxLayout(
        tmp_path / "src", tmp_path / "work", tmp_path / "home", sandbox.host_root_entries()
    )
    runner = BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"})
    script = (
        "tr '\\0' ' ' < /proc/1/cmdline > cmdline; tr '\\0' '\\n' < /proc/1/environ > environ; "
        "ls /proc/self/fd > fds"
    )
    with (tmp_path / "log").open("wb") as log:
        code = runner.run(script, log=log, timeout=30, network=False)
    assert code == 0, (tmp_path / "log").read_text()
    work = tmp_path / "work"
    cmdline = (work / "cmdline").read_text()
    assert str(tmp_path) not in cmdline, cmdline
    assert cmdline.startswith(f"{bwrap} --args 9 -- /bin/sh -c "), cmdline
    environ = (work / "environ").read_text()  # bwrap's own environment: graven's cwd is not in it
    assert "PWD=" not in environ and os.getcwd() not in environ, environ
    assert "9" not in (work / "fds").read_text().split()  # bwrap closed the options pipe


# -- 5. background processes of a host step ------------------------------------------------------------


@pytest.mark.parametrize("timeout", [False, True])
def test_a_host_step_leaves_nothing_running(tmp_path: Path, timeout: bool) -> None:
    pids = tmp_path / "pids"
    step = (
        f"sleep 1000 & echo $! >> {pids}; setsid sleep 1001 & echo $! >> {pids}; "
        f"nohup sleep 1002 >/dev/null 2>&1 & echo $! >> {pids}; "
        f"(setsid sh -c 'sleep 1003 & echo $! >> {pids}' &); sleep 0.3; "
        + ("sleep 60" if timeout else "exit 0")
    )
    runner = HostRunner(tmp_path, {"PATH": os.environ["PATH"]})
    started = time.monotonic()
    with (tmp_path / "log").open("wb") as log:
        if timeout:
            with pytest.raises(subprocess.TimeoutExpired):
                runner.run(step, log=log, timeout=2, network=False)
        else:
            assert runner.run(step, log=log, timeout=30, network=False) == 0
    assert time.monotonic() - started < 20
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 4
    assert [p for p in found if _alive(p)] == []
    assert not [p for p in found if p in sandbox._children()]  # reaped, not zombies of ours


def test_a_host_step_dies_with_a_killed_graven(tmp_path: Path) -> None:
    """SIGKILL runs no ``finally``: the watchdog kills the step's process group when graven dies."""
    pids = tmp_path / "pids"
    step = f"echo $$ >> {pids}; sleep 1000 & echo $! >> {pids}; wait"
    pid = os.fork()
    if pid == 0:  # graven, running the step
        try:
            runner = HostRunner(tmp_path, {"PATH": os.environ["PATH"]})
            with (tmp_path / "log").open("wb") as log:
                runner.run(step, log=log, timeout=600, network=False)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 2 and all(_alive(p) for p in found)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while any(_alive(p) for p in found) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in found if _alive(p)] == []


# -- 1. removing the workspace, unreadable outputs ----------------------------------------------------


def _unprivileged(*drop: str) -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        unavailable("setpriv is needed to run without root's DAC override")
    return ["setpriv", f"--bounding-set={','.join('-' + c for c in drop)}", "--"]


REMOVE = """\
import sys
from pathlib import Path
from graven.build.workspace import Workspace
left = Workspace(Path(sys.argv[1])).remove()
if left is not None:  # what the build's reporter shows as a warning
    sys.stderr.write(f"graven: warning: {left}\\n")
"""


def test_the_workspace_is_removed_whatever_modes_the_steps_left(tmp_path: Path) -> None:
    root = tmp_path / "graven-build-x" / "level-0"
    for sub in ("work/go/pkg/mod/a@v1/dir", "work/locked", "work/empty", "home"):
        (root / sub).mkdir(parents=True)
    (root / "work/go/pkg/mod/a@v1/dir/f.go").write_text("package a\n")
    (root / "work/locked/f").write_text("x")
    (root / "work/link").symlink_to("/etc")  # never followed: /etc keeps its mode
    etc_mode = os.stat("/etc").st_mode
    for path in sorted((root / "work/go").rglob("*"), reverse=True):
        path.chmod(0o444 if path.is_file() else 0o555)
    (root / "work/locked").chmod(0o000)
    (root / "work/empty").chmod(0o000)
    (root / "home").chmod(0o500)
    prefix = _unprivileged("dac_override", "dac_read_search")
    result = subprocess.run(
        [*prefix, sys.executable, "-c", REMOVE, str(root)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert not (tmp_path / "graven-build-x").exists()
    assert os.stat("/etc").st_mode == etc_mode


def test_a_workspace_that_cannot_be_removed_is_named_in_a_warning(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root, to give a directory to another user")
    top = tmp_path / "graven-build-y"
    other = top / "work" / "theirs"
    other.mkdir(parents=True)
    (other / "f").write_text("x")
    os.chown(other, 65534, 65534)
    other.chmod(0o555)
    try:
        prefix = _unprivileged("dac_override", "dac_read_search", "fowner")
        result = subprocess.run(
            [*prefix, sys.executable, "-c", REMOVE, str(top)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"graven: warning: cannot remove the build directory {top}"
        )
        assert "Permission denied" in lines[0]
    finally:
        other.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


def test_collecting_an_unreadable_output_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graven.build import tree
    from graven.core.globs import Selection

    (tmp_path / "out" / "d").mkdir(parents=True)
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        if path.endswith("out/d"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(InputError) as info:
        tree.collect_tree(tmp_path, ["out/"], Selection.of(["**"], []), None)  # type: ignore[arg-type]
    assert str(info.value).startswith("[build] outputs: cannot read out/d: Permission denied")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_a_write_error_names_the_file_written_not_the_source(tmp_path: Path) -> None:
    from graven.build.workspace import _writing

    with pytest.raises(BackendError) as info, _writing("the checkout", tmp_path / "x"):
        err = OSError(errno.ENOSPC, "No space left on device")
        err.filename, err.filename2 = "/the/source", "/the/target"
        raise err
    message = str(info.value)
    assert message.startswith("cannot write the checkout /the/target: No space left on device (")
    assert "free some space there" in message


# -- 4. SIGTERM in the CLI ------------------------------------------------------------------------------


def test_sigterm_is_an_interrupt_that_exits_143(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from graven.cli import app

    def guard(signum: int, frame: object) -> None:  # what runs when graven installs no handler
        raise AssertionError("graven did not handle SIGTERM")

    def build_parser(command: str | None) -> object:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises long before this ends
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(app, "build_parser", build_parser)
    before = signal.signal(signal.SIGTERM, guard)
    try:
        assert app.run(["build"]) == 143
        assert signal.getsignal(signal.SIGTERM) is guard  # put back as it was
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err == "graven: terminated\n"
    assert issubclass(app.Terminated, KeyboardInterrupt)  # every Ctrl-C cleanup runs for it too
