"""What build steps see of the machine that runs them, beyond files and variables: the times of the
directories the build makes (HOME, TMPDIR, /dev and its entries) and the process limits (``ulimit``).
Both are fixed, so that a step that records them builds to the same digest on every machine and run;
``build --check`` varies the caller's limits and the time of its second build, to catch what is not."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import COMMIT_EPOCH
from helpers_services import require_tool, sandbox_python

Run = Callable[..., tuple[int, str, str]]
PY = sandbox_python()

# What the sandbox makes that a step can see; the device nodes are graven's own only when it runs
# as root (else bwrap binds the host's, whose times are the host's: see the README)
SANDBOX_DIRS = (
    '"$HOME" "$TMPDIR" /dev /dev/shm /dev/pts /dev/pts/ptmx /dev/ptmx /dev/fd /dev/stdin /dev/stdout '
    "/dev/stderr"
)
DEVICES = "/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty"
LIMITS_PROBE = (
    "import json, resource; names = sorted(n for n in dir(resource) if n.startswith('RLIMIT_')); "
    "print(json.dumps({n: resource.getrlimit(getattr(resource, n)) for n in names}))"
)


def _toml(*steps: str, extra: str = "") -> str:
    listed = ", ".join(json.dumps(s) for s in steps)
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{listed}]\noutputs = ["out/"]\n{extra}'


def _build(run_cli: Run, repo: Path, *args: str) -> str:
    code, out, err = run_cli("build", "-C", repo, "--json", *args)
    assert code == 0, err
    digest: str = json.loads(out)["digest"]
    return digest


def _read(run_cli: Run, digest: str, tmp_path: Path, name: str) -> str:
    export = tmp_path / f"{digest[7:19]}.tar"
    assert run_cli("export", digest, "-o", export)[0] == 0
    with tarfile.open(export) as tar:
        member = tar.extractfile(f"out/{name}")
        assert member is not None
        return member.read().decode()


def _times_step() -> str:
    listed = SANDBOX_DIRS + (" " + DEVICES if os.geteuid() == 0 else "")
    return f'mkdir -p out && stat -c "%n %Y %X" {listed} > out/times'


def _assert_commit_times(text: str) -> None:
    lines = text.splitlines()
    assert len(lines) >= 11, text
    wrong = [line for line in lines if line.split()[1:] != [str(COMMIT_EPOCH)] * 2]
    assert wrong == [], text


def test_home_tmp_and_dev_have_the_commit_time_in_every_run(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(_times_step()))
    first = _build(run_cli, repo)
    _assert_commit_times(_read(run_cli, first, tmp_path, "times"))
    time.sleep(1.1)  # the directories of the second build are made in another second
    assert _build(run_cli, repo) == first


def test_home_keeps_the_commit_time_after_the_fetch_phase(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """The fetch phase's HOME is emptied (made again) before the build steps: made again with the
    commit's time, not the time the fetch ended."""
    require_tool("bwrap")
    fetch = (
        '[build.fetch]\nsteps = ["touch \\"$HOME/cache\\" /tmp/x && mkdir -p deps"]\noutputs = ["deps/"]\n'
    )
    fetch += 'lockfiles = ["requirements.txt"]\n'
    files = {"requirements.txt": "# nothing\n"}
    repo = make_repo(tmp_path / "repo", files, _toml(_times_step(), extra=fetch))
    digest = _build(run_cli, repo)
    _assert_commit_times(_read(run_cli, digest, tmp_path, "times"))


def test_unsandboxed_home_and_tmpdir_have_the_commit_time(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")
    step = 'mkdir -p out && stat -c "%Y %X" "$HOME" "$TMPDIR" > out/times && ulimit -n >> out/times'
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, extra='sandbox = "none"\n'))
    digest = _build(run_cli, repo)
    epoch = str(COMMIT_EPOCH)
    assert _read(run_cli, digest, tmp_path, "times").split() == [epoch] * 4 + ["1024"]


def test_unsandboxed_tmpdir_keeps_the_commit_time_after_the_tool_probes(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``tools`` are asked their version as a step runs, before the steps: the probe's ``mktemp`` in
    TMPDIR gave that directory the time of the build, after graven had given it the commit's."""
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")
    step = 'mkdir -p out && stat -c "%Y" "$HOME" "$TMPDIR" > out/times'
    extra = 'sandbox = "none"\ntools = ["python3"]\n'
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step, extra=extra))
    digest = _build(run_cli, repo)
    assert _read(run_cli, digest, tmp_path, "times").split() == [str(COMMIT_EPOCH)] * 2


def _graven_with_limits(
    limits: dict[str, tuple[int, int]], *args: object
) -> subprocess.CompletedProcess[str]:
    """Run ``graven ARGS`` in a new process that first sets ``limits`` (resource name: soft, hard) on
    itself, as a caller with other limits (a lower hard limit cannot be raised again in this one)."""
    code = (
        "import resource, sys\n"
        f"for name, limit in {limits!r}.items():\n"
        "    resource.setrlimit(getattr(resource, name), limit)\n"
        "from graven.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _other_limits() -> dict[str, tuple[int, int]]:
    """Other soft limits than this process has, and lower hard ones that graven's still fit under."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)
    core = resource.getrlimit(resource.RLIMIT_CORE)
    soft_stack = 4 << 20 if stack[0] != 4 << 20 else 6 << 20
    changed = {"RLIMIT_NOFILE": (777, 5000), "RLIMIT_STACK": (soft_stack, stack[1])}
    if core[1] != 0:
        changed["RLIMIT_CORE"] = (0 if core[0] != 0 else min(core[1], 4096), core[1])
    return changed


def test_steps_see_fixed_limits_whatever_the_callers(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    step = (
        "mkdir -p out && ulimit -n > out/nofile && ulimit -Hn >> out/nofile && "
        f'{PY} -c "{LIMITS_PROBE}" > out/limits'
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    first = _build(run_cli, repo)
    other = _graven_with_limits(_other_limits(), "build", "-C", repo, "--json")
    assert other.returncode == 0, other.stderr
    second = json.loads(other.stdout)["digest"]
    assert _read(run_cli, second, tmp_path, "limits") == _read(run_cli, first, tmp_path, "limits")
    assert second == first
    assert _read(run_cli, first, tmp_path, "nofile").split() == ["1024", "4096"]
    limits = json.loads(_read(run_cli, first, tmp_path, "limits"))
    inf = resource.RLIM_INFINITY
    assert limits["RLIMIT_NOFILE"] == [1024, 4096]
    assert limits["RLIMIT_CORE"] == [0, 0]
    assert limits["RLIMIT_STACK"] == [8 << 20, inf]
    assert limits["RLIMIT_NPROC"] == [8192, 8192]
    assert limits["RLIMIT_AS"] == [inf, inf]


def test_a_caller_whose_hard_limit_is_below_the_steps_builds_with_it_and_is_warned(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """Without CAP_SYS_RESOURCE a hard limit cannot be raised: the steps get the caller's lower one
    (a small machine or a caller's ulimit must not stop every build), and one warning line says which
    and how to raise it."""
    require_tool("bwrap")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("mkdir out && ulimit -Hn > out/n"))
    low = _graven_with_limits({"RLIMIT_NOFILE": (1000, 2000)}, "build", "-C", repo, "--json")
    assert low.returncode == 0, low.stderr
    digest = json.loads(low.stdout)["digest"]
    warned = [line for line in low.stderr.splitlines() if "open files (ulimit -n)" in line]
    if not warned:  # a process with CAP_SYS_RESOURCE raises it for the steps
        assert _read(run_cli, digest, tmp_path, "n").split() == ["4096"]
        return
    assert len(warned) == 1, low.stderr
    assert "open files (ulimit -n) 2000 (not 4096)" in warned[0], low.stderr
    assert "builds differently on this machine" in warned[0], low.stderr
    assert _read(run_cli, digest, tmp_path, "n").split() == ["2000"]
    checked = _graven_with_limits({"RLIMIT_NOFILE": (1000, 2000)}, "build", "-C", repo, "--check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.count("open files (ulimit -n)") == 1, checked.stderr  # not again for the second


def test_check_varies_the_callers_limits_and_catches_a_step_that_sees_them(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were the limits graven's own process has passed to the steps, ``--check`` would say so: its
    second build starts the steps' launcher with other limits."""
    require_tool("bwrap")
    from graven.build import sandbox

    step = "mkdir -p out && ulimit -n > out/nofile && ulimit -s >> out/nofile"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 0, err  # the limits are graven's, the same in both builds
    monkeypatch.setattr(sandbox, "STEP_LIMITS", ())  # as before: the caller's limits leak
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 1, err
    assert err.startswith("differs: out/nofile: content"), err
    assert "the limits of the launching process" in err.splitlines()[-1], err


def test_check_runs_its_second_build_in_another_second(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """A step that records a time graven cannot fix (the clock, a ctime) is caught by ``--check``
    even when both builds take less than a second."""
    require_tool("bwrap")
    step = "mkdir -p out && date +%s > out/now"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 1, err
    assert err.startswith("differs: out/now: content"), err
    assert "the time (a later second)" in err.splitlines()[-1], err
