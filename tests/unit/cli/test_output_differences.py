"""``differs:`` lines of ``build --check`` and ``verify --rebuild`` (graven.cli.output.write_differences)."""

from __future__ import annotations

import pytest

from graven.build.compare import diff_entries
from graven.cli.output import SHOWN_DIFFERENCES, write_differences
from graven.model.manifest import FileEntry

A, B = "a" * 64, "b" * 64


def test_a_thousand_differences_are_shown_bounded_with_the_rest_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every differing path was written, one line each: a build that differs everywhere buried the
    terminal (and the error line) under thousands of lines."""
    count = 1000
    differences = diff_entries(
        [FileEntry(f"out/f{i:04}", A, 1) for i in range(count)],
        [FileEntry(f"out/f{i:04}", B, 1) for i in range(count)],
    )
    write_differences(differences)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == SHOWN_DIFFERENCES + 1
    assert lines[0].startswith("differs: out/f0000: content (sha256 ")
    assert lines[-1] == f"... and {count - SHOWN_DIFFERENCES} more differing paths (--json lists every one)"


def test_a_few_differences_are_all_shown(capsys: pytest.CaptureFixture[str]) -> None:
    differences = diff_entries([FileEntry("x", A, 1)], [FileEntry("x", A, 1, executable=True)])
    write_differences(differences)
    assert capsys.readouterr().err == "differs: x: mode (0644 != 0755)\n"
