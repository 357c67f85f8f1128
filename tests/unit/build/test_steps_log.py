"""The build log is capped while it is written: the first and last MiB are kept, with a line saying how
many bytes were cut between them, and a failure still names the last lines of the output."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from graven.build.sandbox import HostRunner
from graven.build.steps import (
    _MARGIN,
    LOG_HEAD_BYTES,
    LOG_TAIL_BYTES,
    BuildLog,
    clean_environment,
    run_steps,
)
from graven.errors import BuildError

LOUD = "head -c 50000000 /dev/zero | tr '\\0' x; echo"


def _runner(tmp_path: Path) -> HostRunner:
    work = tmp_path / "work"
    work.mkdir(parents=True)
    env = clean_environment(home=tmp_path, tmp=tmp_path, source_date_epoch=0, host_path=None)
    return HostRunner(work, env)


def test_small_output_is_kept_whole(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    with BuildLog(path) as log:
        run_steps(["echo one", "echo two >&2"], runner=_runner(tmp_path), log=log, timeout=30)
        run_steps(["echo fetched"], runner=_runner(tmp_path / "x"), log=log, timeout=30, phase="fetch")
    assert path.read_bytes() == b"$ echo one\none\n$ echo two >&2\ntwo\n$ [fetch] echo fetched\nfetched\n"


def test_a_step_printing_50_mb_keeps_the_first_and_last_mib(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    runner = _runner(tmp_path)
    with BuildLog(path) as log:
        run_steps([LOUD, "echo after"], runner=runner, log=log, timeout=60)
    data = path.read_bytes()
    header = f"$ {LOUD}\n".encode()
    total = len(header) + 50_000_001 + len(b"$ echo after\nafter\n")
    cut = total - LOG_HEAD_BYTES - LOG_TAIL_BYTES
    marker = f"\n[graven: {cut} bytes of output cut here]\n".encode()
    assert data == header + b"x" * (LOG_HEAD_BYTES - len(header)) + marker + data[-LOG_TAIL_BYTES:]
    assert data.endswith(b"x\n$ echo after\nafter\n")
    assert len(data) == LOG_HEAD_BYTES + len(marker) + LOG_TAIL_BYTES


def test_the_kept_tail_never_grows_past_its_limit(tmp_path: Path) -> None:
    with BuildLog(tmp_path / "build.log", head=10, tail=100) as log:
        for _ in range(10_000):
            log.write(b"y" * 37)
            assert log.held <= 100 + _MARGIN + 37  # and the margin redacted with it (a secret cut there)
    assert (tmp_path / "build.log").stat().st_size < 10 + 100 + 100


def test_a_failure_after_50_mb_names_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    with BuildLog(path) as log, pytest.raises(BuildError) as caught:
        run_steps([f"{LOUD}; echo the real reason; exit 3"], runner=_runner(tmp_path), log=log, timeout=60)
    message = str(caught.value)
    assert "failed with exit code 3; last lines: " in message and message.endswith("the real reason")
    assert len(message) < 2300
    assert path.stat().st_size < 2 * LOG_HEAD_BYTES + 4096


def test_the_last_lines_come_from_the_head_when_nothing_was_cut(tmp_path: Path) -> None:
    with BuildLog(tmp_path / "build.log") as log, pytest.raises(BuildError) as caught:
        run_steps(["echo a; echo b; exit 4"], runner=_runner(tmp_path), log=log, timeout=30)
    assert str(caught.value).endswith("failed with exit code 4; last lines: $ echo a; echo b; exit 4 | a | b")


def test_a_background_process_holding_the_output_open_does_not_hang_the_build(tmp_path: Path) -> None:
    started = time.monotonic()
    with BuildLog(tmp_path / "build.log") as log:
        run_steps(["(sleep 60; echo late) & echo now"], runner=_runner(tmp_path), log=log, timeout=30)
    assert time.monotonic() - started < 30  # the step's own time, not the background sleep's 60 s
    assert (tmp_path / "build.log").read_bytes().endswith(b"now\n")


def test_a_failure_message_hides_a_password_written_in_a_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message reaches terminals and CI logs: a CLI review saw a step's `pip` error print an index
    URL with its token, and a secret variable's value, as they were."""
    monkeypatch.setenv("CI_DEPLOY_TOKEN", "tok-3f9a-SECRET")
    step = "echo 'GET https://u:hunter22@pypi.corp/simple failed'; echo tok-3f9a-SECRET; exit 2"
    with BuildLog(tmp_path / "build.log") as log, pytest.raises(BuildError) as caught:
        run_steps([step], runner=_runner(tmp_path), log=log, timeout=30)
    message = str(caught.value)
    assert "hunter22" not in message.split("last lines:")[1] and "https://u:***@pypi.corp/simple" in message
    assert message.endswith("| ***")
