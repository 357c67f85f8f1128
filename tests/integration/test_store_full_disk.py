"""A store that cannot be written (a full disk, a read-only file system) stops a build or an import
with one line and exit 1, blames the store and not the archive, and leaves the store as it was."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graven.store import local

Run = Callable[..., tuple[int, str, str]]

SMALL = {f"app/m{i}.py": f"print({i})\n" * 20 for i in range(30)}
BIG = {"data/big.bin": random.Random(7).randbytes(local.LOOSE_THRESHOLD + 1000)}


def _full(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _objects(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in (home / "objects").rglob("*") if p.is_file())


@pytest.fixture
def repo_with(tmp_path: Path, make_repo: Callable[..., Path]) -> Callable[[dict[str, Any]], Path]:
    return lambda files: make_repo(tmp_path / "repo", files)


@pytest.mark.parametrize(
    "where",
    [
        "pack",  # the pack writer's thread
        "loose",  # a loose object's temp file
        "tmp",  # the temp file cannot even be made
    ],
)
def test_a_full_disk_stops_a_build_with_one_line(
    where: str,
    graven_home: Path,
    repo_with: Callable[[dict[str, Any]], Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = repo_with(SMALL if where == "pack" else BIG)
    before = _objects(graven_home)
    with monkeypatch.context() as patch:
        if where == "pack":
            patch.setattr(local._PackWriter, "_write", _full)
        elif where == "loose":
            real_fdopen = os.fdopen

            def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
                handle = real_fdopen(fd, *args, **kwargs)
                handle.write = _full
                return handle

            patch.setattr(os, "fdopen", fdopen)
        else:
            real_open = os.open

            def full_open(path: Any, *args: Any, **kwargs: Any) -> int:
                if "/objects/tmp/" in str(path):
                    _full()
                return real_open(path, *args, **kwargs)

            patch.setattr(os, "open", full_open)
        code, out, err = run_cli("build", "-C", repo)
    assert code == 1, err
    assert out == ""
    assert err.splitlines() == [
        f"graven: error: cannot write to the object store in {graven_home / 'objects'}: "
        "No space left on device"
    ]
    assert _objects(graven_home) == before  # nothing half-written is visible
    assert run_cli("build", "-C", repo)[0] == 0  # and the next build, with space, works


def test_an_import_into_a_full_store_blames_the_store_not_the_archive(
    graven_home: Path,
    repo_with: Callable[[dict[str, Any]], Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    new_home: Callable[[str], Path],
) -> None:
    code, out, err = run_cli("build", "-C", repo_with(SMALL))
    assert code == 0, err
    archive = graven_home.parent / "a.tar.zst"
    assert run_cli("export", out.splitlines()[-1], "-o", archive)[0] == 0
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("other")))
    with monkeypatch.context() as patch:
        patch.setattr(local._PackWriter, "_write", _full)
        code, out, err = run_cli("import", archive)
    assert code == 1, err
    assert "cannot write to the object store" in err and "archive" not in err, err
    assert len(err.splitlines()) == 1


def test_a_full_disk_while_a_pack_index_is_written_leaves_no_pack_and_no_partial_index(
    graven_home: Path,
    repo_with: Callable[[dict[str, Any]], Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pack was renamed into place before its index was written: ENOSPC then left a pack nothing
    indexes (never cleaned) and a partial index in objects/tmp, and the error carried "[Errno 28]"."""
    repo = repo_with(SMALL)
    before = _objects(graven_home)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if "/objects/tmp/idx-" in os.readlink(f"/proc/self/fd/{fd}"):
            _full()
        real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", fsync)
        code, _out, err = run_cli("build", "-C", repo)
    assert code == 1, err
    assert err.splitlines() == [
        f"graven: error: cannot write a pack to {graven_home / 'objects' / 'pack'}: No space left on device"
    ]
    assert _objects(graven_home) == before
    assert run_cli("build", "-C", repo)[0] == 0
