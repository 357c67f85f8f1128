"""diffoscope parses what a commit's steps made (a commit can make its build differ on purpose and feed
diffoscope's parsers what it likes), so it runs in a sandbox as the steps ran. In a build run as root
that sandbox was weaker than the steps': diffoscope ran as the host's uid 0 even with
``GRAVEN_BUILD_USER`` (reading ``/etc/shadow``, which the steps cannot), and with the host's device
nodes bound writable in ``/dev`` (owned by its uid 0: ``chmod 600 /dev/null`` would reach the host),
where the steps get graven's own nodes.

The stand-in diffoscope lives in a 0755 TMPDIR of its own, which nobody can reach (pytest's tmp dir is
0700), and the steps are ``sh`` and coreutils (/usr/bin)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers_services import require_tool

Run = Callable[..., tuple[int, str, str]]

pytestmark = pytest.mark.needs_root("only a build run as root has a steps' user and its own device nodes")

STAMP = "mkdir out && date +%s%N > out/stamp"


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A TMPDIR nobody can search, holding a stand-in diffoscope (on PATH) that says who it runs as."""
    require_tool("bwrap")
    top = Path(tempfile.mkdtemp(prefix="graven-diffoscope-root-"))
    top.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(top))
    monkeypatch.setattr(tempfile, "tempdir", str(top))
    bin_dir = top / "bin"
    bin_dir.mkdir(mode=0o755)
    fake = bin_dir / "diffoscope"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "shadow: $(head -c 4 /etc/shadow 2>&1 | head -n 1)"\n'
        "echo \"devnull: $(stat -c '%d:%i' /dev/null)\"\n"
        'echo "a: $(cat "$4")"\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    try:
        yield bin_dir
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _toml(step: str) -> str:
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{json.dumps(step)}]\noutputs = ["out/"]\n'


def _said(err: str, key: str) -> str:
    found = [line.strip()[len(key) + 2 :] for line in err.splitlines() if line.strip().startswith(f"{key}: ")]
    assert found, err
    return found[0]


def _shadow_private() -> None:
    if not os.path.exists("/etc/shadow") or os.stat("/etc/shadow").st_mode & 0o004:
        pytest.skip("/etc/shadow is not private to root here")


def test_check_runs_diffoscope_as_the_build_user(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    *,
    tools: Path,
) -> None:
    _shadow_private()
    monkeypatch.setenv("GRAVEN_BUILD_USER", "nobody")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(STAMP))
    code, out, err = run_cli("build", "-C", repo, "--check")
    assert code == 1 and out == "", err
    assert "Permission denied" in _said(err, "shadow"), err
    assert _said(err, "a").isdigit(), err  # it read the first build's file


def test_rebuild_runs_diffoscope_as_the_build_user(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    *,
    tools: Path,
) -> None:
    """verify --rebuild writes the recorded files where that user reaches them (not the home's store)."""
    _shadow_private()
    monkeypatch.setenv("GRAVEN_BUILD_USER", "nobody")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(STAMP))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    code, out, err = run_cli("verify", digest, "--rebuild")
    said = err + out
    assert code == 1, said
    assert "Permission denied" in _said(said, "shadow"), said
    assert _said(said, "a").isdigit(), said  # it read the recorded file


def test_diffoscope_of_a_root_build_gets_gravens_own_device_nodes(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    *,
    tools: Path,
) -> None:
    monkeypatch.delenv("GRAVEN_BUILD_USER", raising=False)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(STAMP))
    code, out, err = run_cli("build", "-C", repo, "--check")
    assert code == 1 and out == "", err
    host = os.stat("/dev/null")
    assert _said(err, "devnull") != f"{host.st_dev}:{host.st_ino}", err
    assert _said(err, "a").isdigit(), err
