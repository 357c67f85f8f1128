"""What a step build leaves behind, and how it fails: unreadable or missing outputs are one line and the
workspace is always removed (read-only directories included, as non-root), a full disk during the
checkout is one line naming the path and TMPDIR, SIGTERM cleans up like Ctrl-C, nothing a step started
in the background outlives it, the sandbox's /proc/1/cmdline shows no host path, its /tmp is limited,
and a virtualenv inside the repository does not expose the working tree."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import commit_all, survivors
from graven.build.workspace import remove_tree
from graven.fstree import make_dirs
from helpers_services import require_tool, sandbox_python, unavailable


@pytest.fixture(autouse=True)
def _unsandboxed_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's sandbox = "none" builds run as an operator who allows them."""
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")


Run = Callable[..., tuple[int, str, str]]

SANDBOXES = ["none", "bubblewrap"]


def _toml(*steps: str, outputs: str = '["out/"]', sandbox: str = "bubblewrap", extra: str = "") -> str:
    listed = ", ".join(json.dumps(s) for s in steps)
    line = f'sandbox = "{sandbox}"\n' if sandbox == "none" else ""
    return f'[artifact]\nname = "demo"\n\n[build]\n{line}steps = [{listed}]\noutputs = {outputs}\n{extra}'


def _need(sandbox: str) -> None:
    if sandbox == "bubblewrap":
        require_tool("bwrap")


def _unprivileged() -> list[str]:
    """A command prefix that runs a program without the DAC override of root (so that permission
    bits hold for it, as for any user); nothing when not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        unavailable("setpriv is needed to run graven without root's DAC override")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Path:
    """A TMPDIR of the test's own, so that what is left in it is what this build left."""
    path = tmp_path / "tmpdir"
    path.mkdir()
    return path


def _graven(
    *args: object,
    tmpdir: Path,
    prefix: list[str] | None = None,
    preexec: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run graven in a subprocess with TMPDIR=``tmpdir``."""
    full_env = {**os.environ, **(env or {}), "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "graven", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
        preexec_fn=preexec,
    )


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), stderr
    return lines[0]


# -- 1. unreadable outputs, read-only directories ---------------------------------------------------


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize(
    ("step", "named"),
    [
        ("mkdir -p out/d && echo x > out/d/f && chmod 000 out/d", "out/d"),
        ("mkdir -p out/e && echo y > out/e/f && chmod 000 out/e/f", "out/e/f"),
    ],
)
def test_an_unreadable_output_is_one_line_and_the_workspace_is_removed(
    *,
    graven_home: Path,
    tmp_path: Path,
    tmpdir_env: Path,
    make_repo: Callable[..., Path],
    sandbox: str,
    step: str,
    named: str,
) -> None:
    _need(sandbox)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, sandbox=sandbox))
    result = _graven("build", "-C", repo, tmpdir=tmpdir_env, prefix=_unprivileged())
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert f"[build] outputs: cannot read {named}: Permission denied" in line
    assert os.listdir(tmpdir_env) == []  # the workspace is gone, unreadable directory and all


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_read_only_output_directories_do_not_leak_the_workspace(
    graven_home: Path, tmp_path: Path, tmpdir_env: Path, make_repo: Callable[..., Path], sandbox: str
) -> None:
    # Go makes its module cache read-only (0555 directories): the build succeeds, and the workspace
    # must still go away afterwards, also for a user without root's override.
    _need(sandbox)
    step = 'mkdir -p out/d/sub && echo x > out/d/sub/f && chmod -R a-w out/d && chmod 000 "$HOME"'
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, sandbox=sandbox))
    result = _graven("build", "-C", repo, tmpdir=tmpdir_env, prefix=_unprivileged())
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert os.listdir(tmpdir_env) == []


# A step nests directories with relative paths (as ``mkdir a && cd a`` over and over): 1,200 levels
# below out/ (past Python's recursion limit, a path of about 2,400 bytes) and 2,100 levels of "ab"
# outside the outputs (past PATH_MAX), with a directory it made unreadable at the bottom.
NEST = """\
import os
start = os.getcwd()
for base, levels, name in (("out", 1200, "a"), ("junk", 2100, "ab")):
    os.chdir(start)
    os.makedirs(base, exist_ok=True)
    os.chdir(base)
    for _ in range(levels):
        os.mkdir(name)
        os.chdir(name)
    with open("f", "w") as handle:
        handle.write("deep\\n")
os.mkdir("locked")
os.chmod("locked", 0)
"""


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_deeply_nested_directories_are_collected_and_the_workspace_removed(
    graven_home: Path, tmp_path: Path, tmpdir_env: Path, make_repo: Callable[..., Path], sandbox: str
) -> None:
    # A commit's steps chose the depth: the build crashed with a RecursionError traceback (collecting
    # out/, then removing the workspace), and left the workspace, outputs and all, in TMPDIR.
    _need(sandbox)
    step = f"{sandbox_python()} nest.py"
    repo = make_repo(tmp_path / "repo", {"nest.py": NEST}, _toml(step, sandbox=sandbox))
    result = _graven("build", "-C", repo, tmpdir=tmpdir_env, prefix=_unprivileged())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" not in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmpdir_env) == []
    exported = tmp_path / "a.tar"
    digest = result.stdout.split()[0]
    assert _graven("export", digest, "-o", exported, tmpdir=tmpdir_env).returncode == 0
    with tarfile.open(exported) as tar:
        member = tar.extractfile("out/" + "a/" * 1200 + "f")
        assert member is not None and member.read() == b"deep\n"


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_commit_nested_deeper_than_the_recursion_limit_builds(
    graven_home: Path, tmp_path: Path, tmpdir_env: Path, make_repo: Callable[..., Path], sandbox: str
) -> None:
    # git takes a tree 1,100 levels deep (a path of 2,200 bytes); a build without steps did too, but a
    # step build's checkout crashed with a RecursionError traceback (pathlib's mkdir(parents=True),
    # then os.walk in the scratch copy).
    _need(sandbox)
    step = "mkdir -p out && cp -R d out/ && find d -name f | wc -c > out/length"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, sandbox=sandbox))
    deep = "/".join(["d"] * 1100)
    try:
        make_dirs(repo / deep)
        (repo / deep / "f").write_text("deep\n")
        commit_all(repo, "deep")
        result = _graven("build", "-C", repo, tmpdir=tmpdir_env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert os.listdir(tmpdir_env) == []
        exported = tmp_path / "a.tar"
        assert _graven("export", result.stdout.split()[0], "-o", exported, tmpdir=tmpdir_env).returncode == 0
        with tarfile.open(exported) as tar:
            member = tar.extractfile(f"out/{deep}/f")
            assert member is not None and member.read() == b"deep\n"
    finally:
        assert remove_tree(repo) is None  # pytest's clean-up (shutil.rmtree) cannot


# -- 2. outputs that were not produced ---------------------------------------------------------------


def test_outputs_that_were_not_produced_are_named(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    step = "mkdir -p out && echo x > out/x"
    through_file = _toml(step, outputs='["out/", "src.txt/x"]', sandbox="none")
    repo = make_repo(tmp_path / "repo", {"src.txt": "a\n"}, through_file)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2
    line = _one_error_line(err)
    assert line == (
        "graven: error: [build] outputs: 'src.txt/x' was not produced by the steps "
        "(src.txt is not a directory)"
    )

    missing = _toml(step, outputs='["out/", "missing"]', sandbox="none")
    repo2 = make_repo(tmp_path / "repo2", {"src.txt": "a\n"}, missing)
    code, _, err = run_cli("build", "-C", repo2)
    assert code == 2
    assert _one_error_line(err) == (
        "graven: error: [build] outputs: 'missing' was not produced by the steps; "
        "make a step create it, or leave it out of outputs"
    )
    assert json.loads(run_cli("artifacts", "--json")[1]) == []


# -- 3. a full disk during the checkout --------------------------------------------------------------


def test_a_full_disk_during_the_checkout_is_one_line_naming_the_path(
    graven_home: Path, tmp_path: Path, tmpdir_env: Path, make_repo: Callable[..., Path]
) -> None:
    # RLIMIT_FSIZE makes writing past 1 MiB fail (EFBIG; Python ignores SIGXFSZ) as a full disk would.
    # Only the soft limit: a hard limit below the steps' own (sandbox.STEP_LIMITS) is refused first.
    big = os.urandom(3 << 20).hex()[: 3 << 20]
    repo = make_repo(tmp_path / "repo", {"big.txt": big}, _toml("mkdir out", sandbox="none"))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    result = _graven("build", "-C", repo, tmpdir=tmpdir_env, preexec=limit)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith(f"graven: error: cannot write the checkout {tmpdir_env}/graven-build-")
    assert "/src/big.txt: File too large" in line and f"TMPDIR={tmpdir_env}" in line
    assert os.listdir(tmpdir_env) == []


def test_no_space_left_in_the_scratch_copy_says_where(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(src: object, dst: object, **_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", full)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("mkdir out", sandbox="none"))
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1
    line = _one_error_line(err)
    assert "cannot write the build's scratch copy " in line and "/work/a.txt: No space left on device" in line
    assert f"TMPDIR={tempfile.gettempdir()}; free some space there" in line


# -- 4. SIGTERM --------------------------------------------------------------------------------------


def _wait_for(path: Path, lines: int, seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            found = path.read_text().split()
            if len(found) >= lines:
                return [int(p) for p in found]
        time.sleep(0.05)
    raise AssertionError(f"the step did not start: {path}")


# Starts three kinds of background processes (its process group; a session of its own; nohup) and
# notes their pids in PIDS, then works for a long time.
BACKGROUND = (
    "sleep 1000 & echo $! >> {pids}; setsid sleep 1001 & echo $! >> {pids}; "
    "nohup sleep 1002 >/dev/null 2>&1 & echo $! >> {pids}; "
    "(setsid sh -c 'sleep 1003 & echo $! >> {pids}' &); "
)


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_sigterm_stops_the_build_like_ctrl_c(
    graven_home: Path, tmp_path: Path, tmpdir_env: Path, make_repo: Callable[..., Path], sandbox: str
) -> None:
    _need(sandbox)
    started = tmp_path / "started"
    if sandbox == "none":
        step = BACKGROUND.format(pids=started) + "sleep 300"
        expected = 4
    else:  # the sandbox cannot write the host: the step says it runs through its output
        step = "echo $$ > /build/work/started; sleep 300"
        expected = 1
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, sandbox=sandbox))
    env = {**os.environ, "TMPDIR": str(tmpdir_env)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "graven", "build", "-C", str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        if sandbox == "none":
            pids = _wait_for(started, expected)
        else:
            deadline = time.monotonic() + 30
            while not list(tmpdir_env.glob("graven-build-*/work/started")):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            pids = []
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err == "graven: terminated\n"
    assert os.listdir(tmpdir_env) == []
    assert survivors(pids) == []


def test_a_killed_checks_workspace_on_the_other_file_system_is_removed_by_the_next_build(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``build --check`` makes its second workspace in /dev/shm or /var/tmp (another kind of file
    system than TMPDIR's); a graven killed meanwhile (SIGKILL, the OOM killer) left it there, a copy
    of the whole checkout in memory on /dev/shm, until a later --check: the next build removes it."""
    from graven.build.workspace import Workspace
    from graven.service import hermetic

    tmpdir, other = tmp_path / "tmpdir", tmp_path / "shm"
    tmpdir.mkdir()
    other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(other),))
    monkeypatch.setattr(hermetic, "_DISK_DIRS", (str(other),))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the killed graven: its check workspace, as CHECK_VARIATION makes it
        try:
            os.close(read_end)
            Workspace.create(prefix="graven-check-", nested=2, base=other)
            os.write(write_end, b"made")
            os.close(write_end)
            time.sleep(300)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"made"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert [p.name[:13] for p in other.iterdir()] == ["graven-check-"]
    toml = _toml("mkdir out && echo x > out/x", sandbox="none")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, toml)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err
    assert list(other.iterdir()) == []
    assert list(tmpdir.iterdir()) == []


# -- 5. background processes of sandbox = "none" ----------------------------------------------------


@pytest.mark.parametrize("timeout", [False, True])
def test_nothing_a_host_step_started_outlives_it(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, timeout: bool
) -> None:
    pids_file = tmp_path / "pids"
    tail = "sleep 60" if timeout else "mkdir -p out && echo ok > out/ok"
    extra = "timeout = 2\n" if timeout else ""
    step = BACKGROUND.format(pids=pids_file) + "sleep 0.3; " + tail
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, sandbox="none", extra=extra))
    code, _, err = run_cli("build", "-C", repo)
    assert code == (1 if timeout else 0), err
    if timeout:
        assert "timed out after 2 s" in err
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 4
    assert survivors(pids) == []


# -- 6. the working tree stays hidden with a virtualenv inside it -----------------------------------


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp (the sandbox has a /tmp of its own, so hiding there proves nothing)."""
    path = Path(tempfile.mkdtemp(prefix="graven-review-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_virtualenv_in_the_repository_does_not_expose_the_working_tree(
    *,
    graven_home: Path,
    outside_tmp: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    require_tool("bwrap")
    repo = outside_tmp / "repo"
    venv_bin = repo / ".venv" / "bin"
    tools_bin = repo / "tools" / "bin"
    step = (
        "mkdir -p out && mytool > out/tool && ptool > out/ptool && "
        f"(cat {repo}/.env > out/secret 2>&1 || true) && ls -A {repo} > out/ls && "
        f"(touch {repo}/.venv/planted 2>/dev/null && echo writable || echo read-only) > out/venv"
    )
    make_repo(repo, {".gitignore": ".venv/\n.env\ntools/\n"}, _toml(step))
    for directory, name in ((venv_bin, "mytool"), (tools_bin, "ptool")):
        directory.mkdir(parents=True)
        (directory / name).write_text(f"#!/bin/sh\necho {name} ran\n")
        (directory / name).chmod(0o755)
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (repo / ".env").write_text("SECRET=uncommitted\n")
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{tools_bin}{os.pathsep}{os.environ['PATH']}")
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    archive = tmp_path / "a.tar"
    assert run_cli("export", json.loads(out)["digest"], "-o", archive)[0] == 0
    read: dict[str, str] = {}
    with tarfile.open(archive) as tar:
        for n in ("tool", "ptool", "secret", "ls", "venv"):
            member = tar.extractfile(f"out/{n}")
            assert member is not None, f"out/{n} is not a file"
            read[n] = member.read().decode()
    assert read["tool"] == "mytool ran\n" and read["ptool"] == "ptool ran\n"  # the tools are reachable
    assert "SECRET" not in read["secret"]
    assert read["ls"].split() == [".venv", "tools"]  # nothing but the PATH directories' mount points
    assert read["venv"] == "read-only\n"
    assert not (repo / ".venv" / "planted").exists()


# -- 7, 8. the sandbox's /tmp size and /proc/1/cmdline ----------------------------------------------


def test_the_sandbox_tmp_is_limited_and_pid_1_shows_no_host_path(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    from graven.build.sandbox import (
        BubblewrapRunner,
        SandboxLayout,
        find_bwrap,
        tmp_size_limit,
        tmpfs_size_supported,
    )

    step = (
        "mkdir -p out && tr '\\0' ' ' < /proc/1/cmdline > out/cmdline && "
        "stat -f -c '%b %S' /tmp > out/tmp && stat -f -c '%b %S' /dev/shm >> out/tmp"
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    # --check varies the host build path: /proc/1/cmdline must not show it
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 0, err
    archive = tmp_path / "a.tar"
    assert run_cli("export", json.loads(out)["digest"], "-o", archive)[0] == 0
    with tarfile.open(archive) as tar:
        cmdline = tar.extractfile("out/cmdline").read().decode()  # type: ignore[union-attr]
        sizes = tar.extractfile("out/tmp").read().decode().splitlines()  # type: ignore[union-attr]
    assert (
        "graven-build-" not in cmdline
        and "graven-check-" not in cmdline
        and "/work" not in cmdline.split(" -- ")[0]
    ), cmdline
    bwrap = find_bwrap()
    assert bwrap is not None
    if not tmpfs_size_supported(bwrap):
        # bubblewrap before 0.7 has no --size: the documented fallback is a /tmp without a limit (no
        # --size option, which that bwrap would refuse), and the build above ran all the same
        layout = SandboxLayout(tmp_path / "src", tmp_path / "work", tmp_path / "home", ())
        runner = BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"})
        assert runner.tmp_size() is None
        assert "--size" not in runner.argv("true", network=False)
        return
    page = os.sysconf("SC_PAGE_SIZE")
    expected = -(-tmp_size_limit() // page) * page
    for line in sizes:  # /tmp, then /dev/shm (only a tmpfs of its own when graven runs as root)
        blocks, size = (int(v) for v in line.split())
        if line is sizes[0] or os.geteuid() == 0:
            assert blocks * size == expected, sizes


@pytest.mark.needs_root("giving TMPDIR to another user needs root")
@pytest.mark.parametrize("shape", ["another-users", "writable-by-all"])
def test_a_tmpdir_another_user_could_change_is_refused(
    *, graven_home: Path, tmp_path: Path, tmpdir_env: Path, make_repo: Callable[..., Path], shape: str
) -> None:
    """A red-team review: with TMPDIR in a directory of another local user, that user renamed the
    build directory away, put their own in its place and swapped its work copy while the steps ran:
    graven signed their bytes for the commit. A sticky temp directory (/tmp) stays fine."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("mkdir out && cp a.txt out/", sandbox="none"))
    if shape == "another-users":
        os.chown(tmpdir_env, 65534, 65534)
        expected = "belongs to another user (uid 65534"
    else:
        tmpdir_env.chmod(0o777)
        expected = "is writable by every user (mode 0777)"
    env = {"GRAVEN_ALLOW_UNSANDBOXED": "1"}
    result = _graven("build", "-C", repo, tmpdir=tmpdir_env, env=env)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert f"{tmpdir_env} {expected}" in line and "point TMPDIR at a directory only you" in line, line
    assert os.listdir(tmpdir_env) == []
    tmpdir_env.chmod(0o1777)  # sticky, as /tmp
    os.chown(tmpdir_env, 0, 0)
    result = _graven("build", "-C", repo, tmpdir=tmpdir_env, env=env)
    assert result.returncode == 0, result.stderr


# -- a graven killed while it removes its workspace ------------------------------------------------


def test_a_workspace_whose_removal_was_killed_is_reclaimed_by_the_next_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file is what marks a directory as a workspace the next build may remove: removing it
    first, and the rest of the tree after, left a graven killed in between (a checkout of thousands
    of files takes a while to remove) a workspace no build would ever reclaim."""
    from graven.build.workspace import LOCK_NAME, Workspace, reclaim

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    pid = os.fork()
    if pid == 0:  # make a workspace with a file in it, then be killed at its first rmdir
        try:
            ws = Workspace.create(base=tmpdir)
            (ws.src / "d").mkdir()
            (ws.src / "d" / "f").write_bytes(b"x\n")
            monkeypatch.setattr(os, "rmdir", lambda *_a, **_k: os.kill(os.getpid(), signal.SIGKILL))
            ws.remove()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (left,) = tmpdir.iterdir()
    assert (left / LOCK_NAME).is_file()
    assert reclaim(tmpdir) == [left]
    assert list(tmpdir.iterdir()) == []


def test_an_empty_workspace_a_killed_graven_left_is_reclaimed_once_it_is_old(tmp_path: Path) -> None:
    """A graven killed between making its workspace and locking it (or between removing the lock file
    and the directory) left an empty directory no build removed; one just made is left alone (its
    graven may be about to lock it)."""
    from graven.build.workspace import reclaim

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    old, new, full = tmpdir / "graven-build-old", tmpdir / "graven-check-new", tmpdir / "graven-build-full"
    for path in (old, new, full):
        path.mkdir()
    (full / "data").write_text("kept\n")
    for path in (old, full):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert reclaim(tmpdir) == [old]
    assert sorted(p.name for p in tmpdir.iterdir()) == [full.name, new.name]
