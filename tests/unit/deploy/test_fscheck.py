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
    monkeypatch.setattr(os, name, _refuse(err))
    assert fscheck.release_support_problem(tmp_path) == expected
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_chmod_that_changes_nothing_is_no_permission_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vfat mounted with `quiet`: chmod succeeds and every file stays 0755
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: None)
    assert fscheck.release_support_problem(tmp_path) == "no Unix permission bits (chmod 0555 leaves 0600)"


def test_a_directory_nothing_can_be_made_in_is_a_backend_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "mkdir", _refuse(errno.EROFS))
    with pytest.raises(BackendError, match=r"cannot write in .*: Read-only file system"):
        fscheck.release_support_problem(tmp_path)


def test_a_refused_directory_made_by_the_check_is_removed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "srv" / "staging"
    (tmp_path / "srv").mkdir()
    monkeypatch.setattr(os, "symlink", _refuse(errno.EPERM))
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


def test_a_case_sensitive_directory_does_not_fold_case_and_keeps_no_probe(tmp_path: Path) -> None:
    assert fscheck.folds_case(tmp_path) is False
    assert list(tmp_path.iterdir()) == []


def test_the_nearest_existing_directory_is_where_a_path_would_be_made(tmp_path: Path) -> None:
    assert fscheck.nearest_existing(tmp_path / "srv" / "staging") == tmp_path
    (tmp_path / "srv").mkdir()
    assert fscheck.nearest_existing(tmp_path / "srv" / "staging") == tmp_path / "srv"
    assert fscheck.nearest_existing(tmp_path) == tmp_path


def test_a_plan_refuses_what_the_first_deploy_would_and_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "srv" / "staging"
    release = root / "releases" / "ab"
    fscheck.plan_release_support(root, release, ["README", "app/x"], first=True)  # a file system that can
    monkeypatch.setattr(os, "link", _refuse(errno.EPERM))
    with pytest.raises(InputError) as raised:
        fscheck.plan_release_support(root, release, ["README"], first=True)
    assert str(raised.value).startswith(f"{root} is on a file system that cannot hold releases")
    assert "no hard links (Operation not permitted)" in str(raised.value)
    fscheck.plan_release_support(root, release, ["README"], first=False)  # graven has made it before
    assert list(tmp_path.iterdir()) == []


def test_a_plan_refuses_names_that_differ_only_in_case_where_case_folds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "staging"
    release = root / "releases" / "ab"
    paths = ["app/README", "app/main.py", "app/readme"]
    fscheck.plan_release_support(root, release, paths, first=True)  # tmp_path is case-sensitive
    probed: list[Path] = []

    def folding(directory: Path) -> bool:
        probed.append(directory)
        return True

    monkeypatch.setattr(fscheck, "folds_case", folding)
    fscheck.plan_release_support(root, release, ["app/README", "app/main.py"], first=True)
    assert probed == []  # no probe for an artifact without such a pair
    with pytest.raises(InputError) as raised:
        fscheck.plan_release_support(root, release, paths, first=False)
    assert probed == [tmp_path]
    assert str(raised.value) == (
        f"cannot write the release {release}: app/README and app/readme are one name there (its file "
        "system folds case: a casefold directory, vfat, exFAT); deploy this artifact to a "
        "case-sensitive directory, or rename one of them in the commit"
    )
