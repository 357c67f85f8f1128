"""The process entry point (console script, ``python -m graven.cli.main``) ends the process without
the interpreter's teardown: its output must still be complete and its exit code the command's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"


def _graven(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GRAVEN_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("GRAVEN_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "graven.cli.main", *args], env=env, capture_output=True, text=True, check=False
    )


def test_output_is_complete_and_the_exit_code_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from graven.cli.main import main

    assert main(["drift", "--help"]) == 0
    expected = capsys.readouterr().out
    done = _graven("drift", "--help", home=tmp_path)
    assert done.returncode == 0
    assert done.stdout == expected and "--full" in expected
    listed = _graven("artifacts", "--json", home=tmp_path)
    assert listed.returncode == 0 and listed.stdout.strip() == "[]"


def test_errors_keep_their_exit_codes(tmp_path: Path) -> None:
    usage = _graven("no-such-command", home=tmp_path)
    assert usage.returncode == 2
    assert usage.stderr.startswith("graven: error: no such command") and usage.stderr.count("\n") == 1
    unknown = _graven("show", "sha256:" + "0" * 64, home=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("graven: error:")


def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    env = dict(os.environ, GRAVEN_HOME=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    done = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "--help"],
        env=env,
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    reader.stdin.close()
    reader.wait()
    assert "Traceback" not in done.stderr


def _limited_to_one_kib() -> None:
    """In the child: files may grow to 1 KiB, and a write past it fails (EFBIG) instead of killing."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_output_cut_short_by_the_file_it_goes_to_is_an_error(tmp_path: Path, unbuffered: bool) -> None:
    """A write that stops short (a full disk, a file size limit) fails the command, also when the
    interpreter runs unbuffered (PYTHONUNBUFFERED=1, as many container images set it): there, the
    text a short write left out was dropped, and the command exited 0 with its output cut."""
    env = dict(os.environ, GRAVEN_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    whole = _graven("--help", home=tmp_path / "home").stdout
    assert len(whole.encode()) > 1024
    target = tmp_path / "help.txt"
    with target.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "graven.cli.main", "--help"],
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            preexec_fn=_limited_to_one_kib,
        )
    assert target.stat().st_size == 1024
    assert done.returncode == 1
    assert done.stderr == "graven: error: cannot write the output: File too large\n"


def test_unbuffered_output_is_whole_and_in_order(tmp_path: Path) -> None:
    """With stdout buffered again under PYTHONUNBUFFERED, a command's output is still all there."""
    env = dict(os.environ, GRAVEN_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "drift", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == _graven("drift", "--help", home=tmp_path).stdout
