"""Long commands show progress: ``verify`` counts objects, ``export`` and ``import`` count bytes, ``log
verify`` (and ``--repair``, and a proof made from the entries) counts entries a batch at a time; on a
terminal the line is drawn on stderr and removed at the end, elsewhere nothing is drawn."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ProgressRecorder, assert_counts_up_to
from graven.cli.output import TerminalReporter, progress_text
from graven.home import Home
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.service import audit
from graven.service.artifacts import load_manifest, verify_artifact
from graven.service.audit import CHECK_STAGE, PROOF_STAGE, RECHECK_STAGE, REPAIR_STAGE
from graven.service.context import Context
from graven.service.transfer import export_artifact, import_archive

Run = Callable[..., tuple[int, str, str]]

FILES: dict[str, bytes | str] = {
    "README.md": "# app\n",
    **{f"app/m{i}.py": f"print({i})\n" for i in range(40)},
    "data/big.bin": random.Random(5).randbytes(3 << 20),  # a streamed file: several ticks
}


@pytest.fixture
def built(graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run) -> Digest:
    code, out, err = run_cli("build", "-C", make_repo(tmp_path / "repo", FILES))
    assert code == 0, err
    return Digest.parse(out.splitlines()[-1])


def _context(home: Path, reporter: ProgressRecorder) -> Context:
    return Context(home=Home(root=home), reporter=reporter)


def test_verify_counts_the_objects(graven_home: Path, built: Digest) -> None:
    recorder = ProgressRecorder()
    report = verify_artifact(_context(graven_home, recorder), built)
    assert report.ok
    assert_counts_up_to(recorder.of("verifying objects"), report.objects_checked)


def test_export_and_import_count_bytes(graven_home: Path, built: Digest, tmp_path: Path) -> None:
    recorder = ProgressRecorder()
    ctx = _context(graven_home, recorder)
    out = tmp_path / "a.tar.zst"
    export_artifact(ctx, built, out)
    total = load_manifest(ctx, built).total_size  # the files' bytes (graven.toml among them)
    assert total > 3 << 20
    assert_counts_up_to(recorder.of("writing archive (bytes)"), total)

    recorder.calls.clear()
    result = import_archive(ctx, out)
    assert result.digest == str(built)
    assert_counts_up_to(recorder.of("reading archive (bytes)"), out.stat().st_size)


def test_an_archive_read_from_a_pipe_is_imported_without_progress(
    graven_home: Path, built: Digest, tmp_path: Path
) -> None:
    """A pipe has no size and no position (tell() fails): the import works and reports nothing."""
    out = tmp_path / "a.tar.zst"
    export_artifact(_context(graven_home, ProgressRecorder()), built, out)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(out.read_bytes())

    writer = threading.Thread(target=feed)
    writer.start()
    recorder = ProgressRecorder()
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


LOG_SIZE = 768  # three batches of 256 entries: the last one ends the log


@pytest.fixture
def logged(graven_home: Path) -> Path:
    """GRAVEN_HOME with an audit log of LOG_SIZE entries (appended in one transaction)."""
    with _context(graven_home, ProgressRecorder()) as ctx, ctx.db.begin() as conn:
        for i in range(LOG_SIZE):
            ctx.audit.append(conn, LogEvent("deploy", env=f"env{i % 3}", reason=f"r{i}"))
    return graven_home


def _forge_subtree(home: Path) -> None:
    """A wrong stored subtree hash (entries 256..511): verify names it, a proof through it is made
    from the entries."""
    with sqlite3.connect(home / "graven.db", isolation_level=None) as db:
        db.execute("UPDATE log_subtrees SET hash = ? WHERE level = 8 AND idx = 1", ("ab" * 32,))


def test_log_verify_counts_the_entries_a_batch_at_a_time(
    logged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk over every entry (a million on a large home) said nothing: it reports the entries
    checked of the log's, once per PROGRESS_EVERY entries and at the end, never once per entry."""
    recorder = ProgressRecorder()
    report = _context(logged, recorder).audit.verify()
    assert report.ok and report.size == LOG_SIZE, report.problems
    assert recorder.calls == [(CHECK_STAGE, 0, LOG_SIZE), (CHECK_STAGE, LOG_SIZE, LOG_SIZE)]
    monkeypatch.setattr(audit, "PROGRESS_EVERY", 256)
    recorder = ProgressRecorder()
    assert _context(logged, recorder).audit.verify(all_signatures=True).ok
    assert recorder.of(CHECK_STAGE) == [(n, LOG_SIZE) for n in (0, 256, 512, 768)]
    monkeypatch.setattr(audit, "PROGRESS_EVERY", 500)  # the end between two batches: reported too
    recorder = ProgressRecorder()
    assert _context(logged, recorder).audit.verify().ok
    assert recorder.of(CHECK_STAGE) == [(0, LOG_SIZE), (500, LOG_SIZE), (LOG_SIZE, LOG_SIZE)]


def test_log_verify_repair_counts_each_pass(logged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--repair walks the log three times (check, recompute under the writers' lock, check again):
    each pass has its own stage and counts up to its end."""
    _forge_subtree(logged)
    monkeypatch.setattr(audit, "PROGRESS_EVERY", 256)
    recorder = ProgressRecorder()
    report = _context(logged, recorder).audit.verify(repair=True)
    assert report.ok and report.repair is not None and report.repair.rewritten == 1, report.problems
    assert list(dict.fromkeys(stage for stage, _, _ in recorder.calls)) == [
        CHECK_STAGE,
        REPAIR_STAGE,
        RECHECK_STAGE,
    ]
    assert recorder.of(CHECK_STAGE) == [(n, LOG_SIZE) for n in (0, 256, 512, 768)]
    assert recorder.of(REPAIR_STAGE) == [(n, LOG_SIZE) for n in (0, 256, 512, 768)]
    assert_counts_up_to(recorder.of(RECHECK_STAGE), LOG_SIZE + 1)  # and the log-repaired entry


def test_a_proof_made_from_the_entries_counts_them(logged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong stored hash makes log prove and log consistency read the whole log: that read reports
    its progress (a proof from the stored hashes reads O(log n) rows and reports none)."""
    old = _context(logged, ProgressRecorder()).audit.latest_checkpoint()
    recorder = ProgressRecorder()
    _context(logged, recorder).audit.prove(5)
    assert recorder.calls == []
    _forge_subtree(logged)
    monkeypatch.setattr(audit, "PROGRESS_EVERY", 256)
    warnings: list[str] = []
    recorder = ProgressRecorder(warnings)
    assert _context(logged, recorder).audit.prove(5)["tree_size"] == LOG_SIZE
    assert recorder.calls == [(PROOF_STAGE, n, LOG_SIZE) for n in (0, 256, 512, 768)]
    assert len(warnings) == 1 and "made from the entries" in warnings[0]
    recorder = ProgressRecorder(warnings)
    assert _context(logged, recorder).audit.consistency(old)["new_size"] == LOG_SIZE
    assert recorder.calls == [(PROOF_STAGE, n, LOG_SIZE) for n in (0, 256, 512, 768)]


def test_db_copy_counts_both_logs_it_verifies_and_the_rows(logged: Path, tmp_path: Path) -> None:
    """db copy walks the log twice: this home's before the copy, the copy's after it; each reports
    under its own name, the rows copied between them."""
    from graven.service.dbcopy import COPY_CHECK_STAGE, copy_database

    recorder = ProgressRecorder()
    report = copy_database(_context(logged, recorder), f"sqlite:///{tmp_path / 'copy.db'}")
    assert report.log_size == LOG_SIZE
    assert list(dict.fromkeys(stage for stage, _, _ in recorder.calls)) == [
        CHECK_STAGE,
        "copying rows",
        COPY_CHECK_STAGE,
    ]
    assert recorder.of(CHECK_STAGE) == [(0, LOG_SIZE), (LOG_SIZE, LOG_SIZE)]
    assert recorder.of(COPY_CHECK_STAGE) == [(0, LOG_SIZE), (LOG_SIZE, LOG_SIZE)]
    assert_counts_up_to(recorder.of("copying rows"), sum(report.rows.values()))


def test_log_verify_json_on_a_terminal_is_json_only(
    logged: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    """Progress is drawn on stderr (a terminal), cleared before the result; stdout holds the JSON
    report and nothing else."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(TerminalReporter, "progress", _every_call(TerminalReporter.progress))
    code, out, _err = run_cli("log", "verify", "--json", "--repair")
    assert code == 0, terminal.text
    assert json.loads(out)["size"] == LOG_SIZE
    assert f"\r\x1b[K{CHECK_STAGE}: {LOG_SIZE}/{LOG_SIZE}" in terminal.text
    assert terminal.text.endswith("\r\x1b[K"), "the line is cleared at the end"


@pytest.mark.parametrize("command", ["prove", "consistency"])
def test_a_proof_that_fails_after_reading_the_log_clears_the_line_first(
    command: str, logged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    """A stored hash and an entry changed: the stored hashes give no proof, the whole log is read (its
    progress drawn) and gives none either; the error is a line of its own, not the end of the progress
    line."""
    old = tmp_path / "old.checkpoint"
    old.write_text(_context(logged, ProgressRecorder()).audit.latest_checkpoint())
    _forge_subtree(logged)
    with sqlite3.connect(logged / "graven.db", isolation_level=None) as db:
        db.execute("UPDATE log_entries SET entry = replace(entry, '\"r5\"', '\"r6\"') WHERE idx = 5")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(TerminalReporter, "progress", _every_call(TerminalReporter.progress))
    code, out, _err = run_cli(*(["log", "prove", "5"] if command == "prove" else ["log", "consistency", old]))
    assert code == 1 and out == "", (out, terminal.text)
    assert f"\r\x1b[K{PROOF_STAGE}: {LOG_SIZE}/{LOG_SIZE}\r\x1b[Kgraven: error: " in terminal.text, (
        terminal.text
    )


@pytest.mark.parametrize("command", ["verify", "export", "import", "log verify"])
def test_on_a_terminal_the_line_is_drawn_and_removed(
    command: str, built: Digest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    archive = tmp_path / "a.tar.zst"
    if command == "import":
        assert run_cli("export", str(built), "-o", archive)[0] == 0
    arguments: dict[str, list[str | Path]] = {
        "verify": ["verify", str(built)],
        "export": ["export", str(built), "-o", tmp_path / "b.tar.zst"],
        "import": ["import", archive],
        "log verify": ["log", "verify"],
    }
    args = arguments[command]
    stage = {
        "verify": "verifying objects: ",
        "export": "writing archive: ",
        "import": "reading archive: ",
        "log verify": f"{CHECK_STAGE}: ",
    }
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


def test_a_reporter_whose_terminal_is_gone_drops_what_it_cannot_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed terminal or ssh session (SIGHUP) makes every write to stderr fail (EIO): the reporter
    raised it into the work that reported (a heal between its writes and its records; `graven watch`
    stopping, whose warning then kept it from recording the alerts it had not delivered)."""
    import errno

    class Gone:
        def write(self, text: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

        def flush(self) -> None:
            raise OSError(errno.EIO, "Input/output error")

        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stderr", Gone())
    reporter = TerminalReporter()
    reporter.progress("hashing", 1, 2)
    reporter.warn("the terminal is gone")
    reporter.progress("hashing", 2, 2)
    reporter.close()
