"""With ``GRAVEN_BUILD_USER`` (nobody, a user's name, or ``UID:GID``), a build run as root runs its steps
as that unprivileged host user, as uid 0 of a user namespace: the kernel applies the process limit to it
(never to the host's uid 0), and it reads only what that user reads (not ``/etc/shadow``, not ``/root``).
Unset (or ``root``), the steps stay root's, as before.

The steps here are ``sh`` and coreutils (/usr/bin), and TMPDIR a 0755 directory of their own, so that
nobody reaches them on a host whose Python lives under /root and whose pytest tmp dir is 0700."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graven.build import sandbox
from helpers_services import require_tool

Run = Callable[..., tuple[int, str, str]]

pytestmark = pytest.mark.needs_root("only a build run as root changes its steps' user")


@pytest.fixture(autouse=True)
def _as_nobody(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """bwrap there; the steps run as nobody; the build directories in a TMPDIR nobody can search."""
    require_tool("bwrap")
    monkeypatch.setenv("GRAVEN_BUILD_USER", "nobody")
    top = Path(tempfile.mkdtemp(prefix="graven-build-user-"))
    top.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(top))
    monkeypatch.setattr(tempfile, "tempdir", str(top))
    try:
        yield
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _toml(*steps: str) -> str:
    listed = ", ".join(json.dumps(s) for s in steps)
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{listed}]\noutputs = ["out/"]\ntimeout = 60\n'


def _unreadable(path: str) -> None:
    if not os.path.exists(path) or os.stat(path).st_mode & 0o004:
        pytest.skip(f"{path} is not private to root here")


@pytest.mark.parametrize(("path", "step"), [("/etc/shadow", "cat /etc/shadow"), ("/root", "ls /root")])
def test_a_root_build_step_cannot_read_what_only_root_reads(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, *, path: str, step: str
) -> None:
    _unreadable(path)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(f"mkdir out && {step} > out/got"))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 1 and out == "", err
    assert "Permission denied" in err


@pytest.mark.parametrize("setting", [None, "", "root", "0"])
def test_unset_or_root_keeps_the_steps_roots(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    *,
    setting: str | None,
) -> None:
    """The default is unchanged: a root build's steps are the host's uid 0 (they read /etc/shadow)."""
    _unreadable("/etc/shadow")
    if setting is None:
        monkeypatch.delenv("GRAVEN_BUILD_USER")
    else:
        monkeypatch.setenv("GRAVEN_BUILD_USER", setting)
    step = "mkdir out && cat /etc/shadow > /dev/null && echo x > out/x"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, _out, err = run_cli("build", "-C", repo)
    assert code == 0, err


def test_a_root_build_step_hits_the_process_limit(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20 processes at most; the step tries 60 that live a few seconds each: a fork fails, and the step
    limits = tuple(
        sandbox.StepLimit(lim.name, lim.what, 20, 20) if lim.name == "RLIMIT_NPROC" else lim
        for lim in sandbox.STEP_LIMITS
    )
    monkeypatch.setattr(sandbox, "STEP_LIMITS", limits)
    bomb = "mkdir out && i=0 && while [ $i -lt 60 ]; do sleep 3 & i=$((i+1)); done; wait; echo $i > out/n"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(bomb))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 1 and out == "", err
    assert "fork" in err.lower(), err


def test_an_unknown_build_user_is_one_line(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAVEN_BUILD_USER", "no-such-user-graven")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("mkdir out && echo x > out/x"))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "GRAVEN_BUILD_USER" in err and "no-such-user-graven" in err, err


def test_a_build_directory_the_user_cannot_reach_is_one_line(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TMPDIR under a directory only root searches (pytest's own tmp dir): refused before any step."""
    private = tmp_path / "private-tmp"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("mkdir out && echo x > out/x"))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err
    assert "cannot be reached by nobody (65534:65534)" in err and "point TMPDIR at" in err, err
    assert list(private.iterdir()) == []  # the build directory is gone again


def test_a_root_build_still_writes_its_workspace_as_uid_0(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    # the step's user owns what it may write (seen as uid 0), and nothing of graven's outside it
    step = (
        "mkdir out && id -u > out/id && stat -c '%u %g %a %n' /build/src /build/work /build/home /dev/null "
        "out >> out/id && touch $HOME/h /tmp/t && ! touch /build/src/x 2>/dev/null"
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    export = tmp_path / "a.tar"
    assert run_cli("export", digest, "-o", export)[0] == 0
    import tarfile

    with tarfile.open(export) as tar:
        member = tar.extractfile("out/id")
        assert member is not None
        lines = member.read().decode().splitlines()
    assert lines == [
        "0",
        "0 0 755 /build/src",
        "0 0 755 /build/work",
        "0 0 755 /build/home",
        "0 0 666 /dev/null",
        "0 0 755 out",
    ]


def test_a_root_build_step_cannot_nest_a_user_namespace(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """The steps' user namespace is theirs to use, not to multiply: ``unshare -U`` (every unprivileged
    user namespace is kernel attack surface) fails where bubblewrap has --disable-userns (0.8)."""
    require_tool("unshare")
    bwrap = sandbox.find_bwrap()
    assert bwrap is not None
    if not sandbox.userns_disable_supported(bwrap):
        pytest.skip("this bubblewrap has no --disable-userns (0.8 and later)")
    step = "mkdir out && unshare -U true && echo x > out/x"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 1 and out == "", err
    assert "unshare" in err, err


def test_a_root_build_with_a_build_user_checks_reproducible(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """``build --check``'s two builds see the same user namespace (ids, maps) with the build user."""
    step = "mkdir out && id > out/id && cat /proc/self/uid_map /proc/self/gid_map > out/maps"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, _out, err = run_cli("build", "--check", "-C", repo)
    assert code == 0, err


def test_a_root_build_without_a_build_user_cannot_nest_a_user_namespace(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without GRAVEN_BUILD_USER the steps run in the user namespace bwrap makes for root (0 mapped to 0):
    ``unshare -U`` fails there too where bubblewrap has --disable-userns (0.8)."""
    monkeypatch.delenv("GRAVEN_BUILD_USER")
    require_tool("unshare")
    bwrap = sandbox.find_bwrap()
    assert bwrap is not None
    if not sandbox.userns_disable_supported(bwrap):
        pytest.skip("this bubblewrap has no --disable-userns (0.8 and later)")
    step = "mkdir out && id -u > out/id && unshare -U true && echo x > out/x"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 1 and out == "", err
    assert "unshare" in err, err
