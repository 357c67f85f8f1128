"""Long commands show progress: ``verify`` counts objects, ``export`` and ``import`` count bytes; on a
terminal the line is drawn on stderr and removed at the end, elsewhere nothing is drawn."""

from __future__ import annotations

import os
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from graven.cli.output import TerminalReporter, progress_text
from graven.home import Home
from graven.model.digest import Digest
from graven.service.artifacts import load_manifest, verify_artifact
from graven.service.context import Context
from graven.service.transfer import export_artifact, import_archive

Run = Callable[..., tuple[int, str, str]]

FILES: dict[str, bytes | str] = {
    "README.md": "# app\n",
    **{f"app/m{i}.py": f"print({i})\n" for i in range(40)},
    "data/big.bin": random.Random(5).randbytes(3 << 20),  # a streamed file: several ticks
}


class Recorder:
    """A reporter that keeps every progress call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def warn(self, message: str) -> None:
        raise AssertionError(f"unexpected warning: {message}")

    def progress(self, stage: str, done: int, total: int | None) -> None:
        self.calls.append((stage, done, total))

    def of(self, stage: str) -> list[tuple[int, int | None]]:
        return [(done, total) for name, done, total in self.calls if name == stage]


@pytest.fixture
def built(graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run) -> Digest:
    code, out, err = run_cli("build", "-C", make_repo(tmp_path / "repo", FILES))
    assert code == 0, err
    return Digest.parse(out.splitlines()[-1])


def _context(home: Path, reporter: Recorder) -> Context:
    return Context(home=Home(root=home), reporter=reporter)


def _assert_counts_up_to_the_end(ticks: list[tuple[int, int | None]], total: int) -> None:
    assert len(ticks) >= 2, ticks
    assert {t for _, t in ticks} == {total}
    dones = [d for d, _ in ticks]
    assert dones == sorted(dones), "progress never goes back"
    assert dones[0] < total
    assert dones[-1] == total


def test_verify_counts_the_objects(graven_home: Path, built: Digest) -> None:
    recorder = Recorder()
    report = verify_artifact(_context(graven_home, recorder), built)
    assert report.ok
    _assert_counts_up_to_the_end(recorder.of("verifying objects"), report.objects_checked)


def test_export_and_import_count_bytes(graven_home: Path, built: Digest, tmp_path: Path) -> None:
    recorder = Recorder()
    ctx = _context(graven_home, recorder)
    out = tmp_path / "a.tar.zst"
    export_artifact(ctx, built, out)
    total = load_manifest(ctx, built).total_size  # the files' bytes (graven.toml among them)
    assert total > 3 << 20
    _assert_counts_up_to_the_end(recorder.of("writing archive (bytes)"), total)

    recorder.calls.clear()
    result = import_archive(ctx, out)
    assert result.digest == str(built)
    _assert_counts_up_to_the_end(recorder.of("reading archive (bytes)"), out.stat().st_size)


def test_an_archive_read_from_a_pipe_is_imported_without_progress(
    graven_home: Path, built: Digest, tmp_path: Path
) -> None:
    """A pipe has no size and no position (tell() fails): the import works and reports nothing."""
    out = tmp_path / "a.tar.zst"
    export_artifact(_context(graven_home, Recorder()), built, out)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(out.read_bytes())

    writer = threading.Thread(target=feed)
    writer.start()
    recorder = Recorder()
    try:
        result = import_archive(_context(graven_home, recorder), fifo, name="demo")
    finally:
        writer.join(timeout=10)
    assert result.digest == str(built)
    assert recorder.of("reading archive (bytes)") == []


def test_the_progress_line_shows_sizes_for_bytes() -> None:
    assert progress_text("writing archive (bytes)", 3 << 20, 10 << 20) == "writing archive: 3.0 MiB/10.0 MiB"
    assert progress_text("verifying objects", 3, 10) == "verifying objects: 3/10"
    assert progress_text("storing outputs", 7, None) == "storing outputs: 7"


class _Terminal:
    """stderr that says it is a terminal and keeps what is written."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("command", ["verify", "export", "import"])
def test_on_a_terminal_the_line_is_drawn_and_removed(
    command: str, built: Digest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    archive = tmp_path / "a.tar.zst"
    if command == "import":
        assert run_cli("export", str(built), "-o", archive)[0] == 0
    args = {
        "verify": ["verify", str(built)],
        "export": ["export", str(built), "-o", tmp_path / "b.tar.zst"],
        "import": ["import", archive],
    }[command]
    stage = {"verify": "verifying objects: ", "export": "writing archive: ", "import": "reading archive: "}
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(TerminalReporter, "progress", _every_call(TerminalReporter.progress))
    code, _out, _err = run_cli(*args)
    assert code == 0, terminal.text
    drawn = terminal.text
    assert f"\r\x1b[K{stage[command]}" in drawn
    last_draw = drawn.rindex(stage[command])
    assert "\r\x1b[K" in drawn[last_draw:], "the line is cleared at the end"


def _every_call(
    progress: Callable[[TerminalReporter, str, int, int | None], None],
) -> Callable[[TerminalReporter, str, int, int | None], None]:
    """TerminalReporter.progress without its ten-a-second limit, so a fast command draws too."""

    def draw(self: TerminalReporter, stage: str, done: int, total: int | None) -> None:
        self._last = 0.0
        progress(self, stage, done, total)

    return draw


def test_the_same_line_is_not_drawn_twice_and_a_dumb_terminal_gets_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review counted 188 redraws of `9.1 MiB/9.1 MiB` in one import (a stream's last reads each
    report 100%, which the rate limit lets through), and progress on TERM=dumb, which cannot redraw."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    reporter = TerminalReporter()
    for _ in range(50):
        reporter.progress("reading files", 10, 10)
    assert terminal.text.count("reading files: 10/10") == 1
    reporter._last = 0.0  # past the ten-a-second limit: another line is drawn
    reporter.progress("reading files", 11, 12)
    assert terminal.text.count("\r\x1b[K") == 2
    monkeypatch.setenv("TERM", "dumb")
    terminal.text = ""
    dumb = TerminalReporter()
    dumb.progress("reading files", 1, 10)
    dumb.warn("still said")
    assert terminal.text == "graven: warning: still said\n"
