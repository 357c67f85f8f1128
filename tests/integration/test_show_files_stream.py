"""``graven show DIGEST --files`` writes its listing as it goes (text and --json): an artifact of a
million files must not be held a second time as rows or as one JSON text. The output is what the
whole-list code printed, and `| head -1` still ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Executable, Symlink

Run = Callable[..., tuple[int, str, str]]
N = 3000


class _Sink:
    """A stdout that keeps nothing of what is written (capsys would hold it all), but the memory in
    use at each write: from the first line on (the manifest read), what the listing holds."""

    def __init__(self) -> None:
        self.first = self.most = -1  # (a list of them would itself grow a line at a time)

    def write(self, text: str) -> int:
        now = tracemalloc.get_traced_memory()[0]
        self.first = now if self.first < 0 else self.first
        self.most = max(self.most, now)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def big(graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run) -> str:
    files: dict[str, object] = {f"d{i % 7}/f{i:05d}.txt": f"{i}\n" for i in range(N)}
    files |= {"bin/run": Executable("#!/bin/sh\n"), "link": Symlink("d0/f00000.txt")}
    code, out, err = run_cli("build", "--json", "-C", make_repo(tmp_path / "repo", files))
    assert code == 0, err
    return str(json.loads(out)["digest"])


def _held(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from graven.cli.main import main

    sink = _Sink()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", sink)
        tracemalloc.start()
        try:
            assert main(list(args)) == 0
            return sink.most - sink.first
        finally:
            tracemalloc.stop()


def test_the_listing_is_written_as_it_goes_and_reads_as_before(
    big: str, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graven.cli.output import emit_json, print_table
    from graven.service import artifacts as svc
    from graven.service.context import Context

    for extra in ([], ["--json"]):
        # the manifest is read before the first line; the listing adds a constant (json's first use:
        # ~40 KiB), where it added its rows or its whole text (~250 bytes a file: 730 KiB for text)
        assert _held(monkeypatch, "show", big, "--files", *extra) < 256 * 1024, extra

    code, out, err = run_cli("show", big, "--files", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["entries"]) > N
    with Context.from_env() as ctx:
        entries = svc.load_manifest(ctx, svc.resolve_digest(ctx, big)).entries
    capsys_out = run_cli("show", big)[1]  # the header and summary, then the listing as before:
    import contextlib
    import io

    from graven.cli.artifact_cmds import _entry_row

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print()
        print_table(["type", "mode", "size", "sha256", "path"], [_entry_row(e.to_json()) for e in entries])
    assert run_cli("show", big, "--files")[1] == capsys_out + text.getvalue()
    whole = io.StringIO()
    with contextlib.redirect_stdout(whole):
        emit_json(
            {**{k: v for k, v in doc.items() if k != "entries"}, "entries": [e.to_json() for e in entries]}
        )
    assert out == whole.getvalue()


def test_a_reader_that_leaves_ends_it_quietly(big: str, graven_home: Path) -> None:
    for extra in ([], ["--json"]):
        shown = subprocess.run(
            f"{sys.executable} -m graven show {big} --files {' '.join(extra)} | head -1",
            shell=True, capture_output=True, text=True, check=False, env=dict(os.environ),
        )  # fmt: skip
        assert shown.returncode == 0 and shown.stderr == "" and len(shown.stdout.splitlines()) == 1
