"""Comparing two builds (graven.build.compare) and validating the new [build] keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from graven.build.compare import (
    DIFFOSCOPE_FILES,
    NotReproducibleError,
    diff_entries,
    diffoscope_summary,
    with_diffoscope,
)
from graven.errors import ConfigError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry
from graven.model.pipeline import parse_pipeline

A, B = "a" * 64, "b" * 64


def test_each_kind_of_difference_is_named() -> None:
    first: list[TreeEntry] = [
        FileEntry("same.txt", A, 1),
        FileEntry("content.txt", A, 5),
        FileEntry("size.txt", A, 5),
        FileEntry("mode.sh", A, 5),
        SymlinkEntry("link", "a"),
        FileEntry("kind", A, 1),
        FileEntry("gone.txt", A, 1),
        DirEntry("empty"),
    ]
    second: list[TreeEntry] = [
        FileEntry("same.txt", A, 1),
        FileEntry("content.txt", B, 5),
        FileEntry("size.txt", B, 6),
        FileEntry("mode.sh", A, 5, executable=True),
        SymlinkEntry("link", "b"),
        SymlinkEntry("kind", "x"),
        FileEntry("new.txt", A, 1),
        DirEntry("empty"),
    ]
    found = {d.path: d for d in diff_entries(first, second)}
    assert sorted(found) == ["content.txt", "gone.txt", "kind", "link", "mode.sh", "new.txt", "size.txt"]
    assert found["content.txt"].aspects == ("content",)
    assert found["size.txt"].aspects == ("content", "size")
    assert found["size.txt"].detail.endswith("size (5 != 6)")
    assert found["mode.sh"].aspects == ("mode",) and "0644 != 0755" in found["mode.sh"].detail
    assert found["link"].aspects == ("target",)
    assert found["kind"].detail == "type (file != symlink)"
    assert found["gone.txt"].detail == "only in the first build (file)"
    assert found["new.txt"].detail == "only in the second build (file)"
    assert found["content.txt"].to_json()["differs"] == ["content"]
    assert diff_entries(first, first) == []


def _fake_diffoscope(tmp_path: Path) -> str:
    tool = tmp_path / "diffoscope"
    tool.write_text('#!/bin/sh\necho "--- $4"\necho "+++ $5"\necho "@@ -1 +1 @@"\nexit 1\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


def test_diffoscope_summary_is_added_for_changed_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, text in ((a, "one"), (b, "two")):
        (root / "out").mkdir(parents=True)
        (root / "out" / "f.txt").write_text(text)
    tool = _fake_diffoscope(tmp_path)
    differences = diff_entries([FileEntry("out/f.txt", A, 3)], [FileEntry("out/f.txt", B, 3)])
    [item] = with_diffoscope(differences, a, b, diffoscope=tool)
    assert item.diffoscope is not None
    assert item.diffoscope.splitlines() == [f"--- {a}/out/f.txt", f"+++ {b}/out/f.txt", "@@ -1 +1 @@"]
    missing = str(tmp_path / "missing")
    assert diffoscope_summary(a, b, "out/f.txt", diffoscope=missing) is not None  # reported, not raised


def test_diffoscope_runs_on_a_bounded_number_of_files(tmp_path: Path) -> None:
    """A thousand differing files ran diffoscope a thousand times (each up to two minutes): a check
    or rebuild that differs everywhere took hours before it said so. Only the first few get a
    summary; the rest are still listed (--json lists every one)."""
    count = DIFFOSCOPE_FILES + 30
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        for i in range(count):
            (root / f"f{i:03}").write_text(root.name)
    calls = tmp_path / "calls"
    tool = tmp_path / "diffoscope"
    tool.write_text(f'#!/bin/sh\necho x >> {calls}\necho "--- $4"\nexit 1\n')
    tool.chmod(0o755)
    differences = diff_entries(
        [FileEntry(f"f{i:03}", A, 1) for i in range(count)],
        [FileEntry(f"f{i:03}", B, 1) for i in range(count)],
    )
    found = with_diffoscope(differences, a, b, diffoscope=str(tool))
    assert len(found) == count
    assert len(calls.read_text().splitlines()) == DIFFOSCOPE_FILES
    assert all(d.diffoscope is not None for d in found[:DIFFOSCOPE_FILES])
    assert all(d.diffoscope is None for d in found[DIFFOSCOPE_FILES:])


def test_diffoscope_never_gets_graven_s_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """diffoscope (and the tools it runs) parse files the commit's steps made: it ran with graven's
    whole environment, a registry password or a cloud key among it."""
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "hunter2-registry")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "f").write_text(root.name)
    tool = tmp_path / "diffoscope"
    tool.write_text('#!/bin/sh\nenv | sort\necho "home=$HOME"\n')
    tool.chmod(0o755)
    summary = diffoscope_summary(a, b, "f", diffoscope=str(tool))
    assert summary is not None
    assert "hunter2-registry" not in summary and "aws-secret-value" not in summary
    names = {line.split("=", 1)[0] for line in summary.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "TMPDIR", "LC_ALL", "LANG", "PWD", "SHLVL", "_", "home"}, names


def test_not_reproducible_error_is_one_line() -> None:
    differences = diff_entries([FileEntry("out/t", A, 1)], [FileEntry("out/t", B, 1)])
    error = NotReproducibleError("c" * 40, differences, ["the build path", "hostname"])
    assert str(error) == (
        "not reproducible: 1 path differs between two builds of cccccccccccc; "
        "the second varied the build path, hostname"
    )
    assert error.exit_code == 1 and error.differences[0].path == "out/t"


BASE = '[artifact]\nname = "a"\n\n[build]\nsteps = ["make"]\noutputs = ["out/"]\n'


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('sandbox = "docker"\n', "[build] sandbox"),
        ('sandbox = "none"\nsandbx = 1\n', "unknown key [build] sandbx"),
        ('env = ["TZ"]\n', "TZ is always set by graven"),
        ('env = ["NOT-A-NAME"]\n', "NOT-A-NAME is not an environment variable name"),
        ('tools = ["a b"]\n', "[build] tools: a b"),
        ('[build.fetch]\nsteps = ["x"]\nlockfiles = ["r.lock"]\noutputs = ["w/"]\nurl = "x"\n', "fetch.url"),
        ('[build.fetch]\nsteps = ["x"]\noutputs = ["w/"]\n', "fetch.lockfiles is required"),
        ('[build.fetch]\nsteps = ["x"]\nlockfiles = ["../r.lock"]\noutputs = ["w/"]\n', "../r.lock"),
        ('[build.fetch]\nsteps = ["x"]\nlockfiles = ["r.lock"]\noutputs = ["/abs"]\n', "/abs"),
    ],
)
def test_new_build_keys_are_validated(extra: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline((BASE + extra).encode())
    assert needle in str(info.value)


def test_new_build_keys_need_steps_and_parse() -> None:
    with pytest.raises(ConfigError, match="tools needs steps"):
        parse_pipeline(b'[artifact]\nname = "a"\n[build]\ntools = ["python3"]\n')
    extra = 'sandbox = "none"\nenv = ["HTTPS_PROXY"]\ntools = ["python3", "/usr/bin/tar"]\n'
    extra += (
        '[build.fetch]\nsteps = ["pip download"]\nlockfiles = ["requirements.lock"]\noutputs = ["wheels/"]\n'
    )
    build = parse_pipeline((BASE + extra).encode()).build
    assert build.sandbox == "none" and build.env == ["HTTPS_PROXY"] and build.tools[1] == "/usr/bin/tar"
    assert build.fetch is not None and build.fetch.lockfiles == ["requirements.lock"]
    assert parse_pipeline(BASE.encode()).build.sandbox == "bubblewrap"


def test_a_rebuild_writes_out_only_the_recorded_files_diffoscope_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify --rebuild`` of an artifact that differs everywhere: diffoscope summarizes the first
    :data:`DIFFOSCOPE_FILES` files only (with_diffoscope), so the recorded side of the others is not
    copied out of the store either (a thousand large files written out, never read)."""
    import contextlib
    import io
    import shutil
    from collections.abc import Iterator
    from typing import Any, cast

    from graven.service import reproduce

    count = DIFFOSCOPE_FILES + 30
    differences = diff_entries(
        [FileEntry(f"f{i:03}", A, 1) for i in range(count)],
        [FileEntry(f"f{i:03}", B, 1) for i in range(count)],
    )
    opened: list[str] = []

    class Store:
        def clean_tmp(self) -> int:
            return 0

        @contextlib.contextmanager
        def scratch_dir(self, prefix: str) -> Iterator[Path]:
            path = tmp_path / prefix
            path.mkdir()
            yield path

        def open(self, digest: object) -> io.BytesIO:
            opened.append(str(digest))
            return io.BytesIO(b"x")

    class Ctx:
        store = Store()

    summarized: list[int] = []

    def fake_with_diffoscope(found: list[Any], recorded: Path, *args: Any, **kwargs: Any) -> list[Any]:
        summarized.append(sum(1 for _ in recorded.iterdir()))
        return found

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/diffoscope")
    monkeypatch.setattr(reproduce, "with_diffoscope", fake_with_diffoscope)
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    found = reproduce._with_diffoscope(cast(Any, Ctx()), differences, rebuilt, None, tmp_path / "scratch")
    assert len(found) == count
    assert len(opened) == DIFFOSCOPE_FILES, len(opened)
    assert summarized == [DIFFOSCOPE_FILES]
