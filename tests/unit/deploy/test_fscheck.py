"""The file system of an environment directory must have symbolic links, hard links and permission bits.

vfat (a USB stick, an EFI partition), exFAT and some FUSE file systems have none of them. A first deploy
there used to fail at the deploy lock with "cannot open the deploy lock ...: Operation not permitted"
(exit 1, as if a check had failed), or half-way through the release; it is now refused before
anything is made, naming what the file system lacks (exit 2: an unsupported setup). These tests make
the file system's refusals by hand; tests/integration/test_deploy_filesystems.py uses a real FAT."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from graven.deploy import fscheck
from graven.errors import BackendError, InputError


def _refuse(err: int) -> Any:
    def refused(*args: Any, **kwargs: Any) -> None:
        raise OSError(err, os.strerror(err))

    return refused


def test_a_file_system_with_links_and_modes_is_fine(tmp_path: Path) -> None:
    assert fscheck.release_support_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe is gone again


@pytest.mark.parametrize(
    ("name", "err", "expected"),
    [
        ("symlink", errno.EPERM, "no symbolic links (Operation not permitted)"),
        ("symlink", errno.ENOSYS, "no symbolic links (Function not implemented)"),
        ("link", errno.EPERM, "no hard links (Operation not permitted)"),
        ("fchmod", errno.EPERM, "no Unix permission bits (chmod 0555: Operation not permitted)"),
    ],
)
def test_what_the_file_system_refuses_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, err: int, expected: str
) -> None:
    monkeypatch.setattr(fscheck.os, name, _refuse(err))
    assert fscheck.release_support_problem(tmp_path) == expected
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_chmod_that_changes_nothing_is_no_permission_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vfat mounted with `quiet`: chmod succeeds and every file stays 0755
    monkeypatch.setattr(fscheck.os, "fchmod", lambda fd, mode: None)
    assert fscheck.release_support_problem(tmp_path) == "no Unix permission bits (chmod 0555 leaves 0600)"


def test_a_directory_nothing_can_be_made_in_is_a_backend_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fscheck.os, "mkdir", _refuse(errno.EROFS))
    with pytest.raises(BackendError, match=r"cannot write in .*: Read-only file system"):
        fscheck.release_support_problem(tmp_path)


def test_a_refused_directory_made_by_the_check_is_removed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "srv" / "staging"
    (tmp_path / "srv").mkdir()
    monkeypatch.setattr(fscheck.os, "symlink", _refuse(errno.EPERM))
    with pytest.raises(InputError) as raised:
        fscheck.check_release_support(root)
    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert message.startswith(f"{root} is on a file system that cannot hold releases (")
    assert "no symbolic links (Operation not permitted)" in message
    assert not root.exists()
    existing = tmp_path / "srv" / "prod"
    existing.mkdir()
    with pytest.raises(InputError):
        fscheck.check_release_support(existing)
    assert existing.is_dir()  # not graven's to remove


def test_the_type_of_a_file_system_is_read_from_mountinfo(tmp_path: Path) -> None:
    kind = fscheck.file_system_type(tmp_path)
    assert kind is None or (kind and " " not in kind)
    assert fscheck.file_system_type(Path("/proc")) in (None, "proc")
