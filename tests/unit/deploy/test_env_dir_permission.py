"""An environment directory the deployer may not write is the operator's to fix, and says how.

Walked through as an ordinary user, the README's own example (`path = "/srv/shop/staging"`, or
`--root /srv`) failed with `cannot create /srv/shop/staging: Permission denied`, an environment
directory an administrator made for the team (root's, 0755) with `cannot write in ...: Permission
denied`, and one that root deploys with `cannot open the deploy lock ...: Permission denied`: exit 1,
as if a check had failed, and nothing said whose the directory was or what to do. A directory this user
may not write is now refused as bad input (exit 2), naming its owner and mode, the user graven runs as,
and the remedy: a missing one made for this user (`install -d`), an empty one given to it (`chown`),
one another user deploys deployed as that user."""

from __future__ import annotations

import errno
import os
import pwd
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from graven.deploy import fscheck
from graven.deploy.lock import EnvLock
from graven.errors import BackendError, GravenError, InputError
from helpers_deploy import exit_code_as_deployer


def _as_deployer(tmp_path: Path, action: Callable[[Path], None]) -> tuple[int, str]:
    """Run ``action`` on ``tmp_path`` (reached through a descriptor: the deployer may not walk to the
    test's directory) as the deployer that is not root; (exit code of the error it raised, its message
    with the descriptor's path written ``TMP``). 0: it raised nothing."""
    tmp_path.chmod(0o755)  # pytest makes it 0700
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    base = f"/proc/self/fd/{holder}"
    read_fd, write_fd = os.pipe()

    def run() -> int:
        os.close(read_fd)
        user = pwd.getpwuid(os.geteuid()).pw_name
        try:
            action(Path(base))
        except GravenError as exc:
            message = re.sub(rf"\b{re.escape(user)}\b", "USER", str(exc).replace(base, "TMP"))
            os.write(write_fd, message.encode())
            return exc.exit_code
        return 0

    try:
        code = exit_code_as_deployer(run)
    finally:
        os.close(write_fd)
        os.close(holder)
    with os.fdopen(read_fd, "rb") as handle:
        return code, handle.read().decode()


def test_a_missing_environment_below_a_directory_of_another_user_says_how_to_make_it(
    tmp_path: Path,
) -> None:
    srv = tmp_path / "srv"
    srv.mkdir(mode=0o555)  # /srv: root's, 0755 (the deployer is not its owner, or cannot write it)
    code, message = _as_deployer(
        tmp_path, lambda base: fscheck.check_release_support(base / "srv/shop/staging")
    )
    assert code == 2, message
    assert message.startswith("cannot create TMP/srv/shop/staging: Permission denied"), message
    assert "TMP/srv is " in message and "mode 0555" in message
    assert "graven runs as USER" in message
    assert "install -d -o USER" in message and "TMP/srv/shop/staging" in message
    assert "\n" not in message
    assert not (srv / "shop").exists()


def test_deploy_plan_refuses_it_alike(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir(mode=0o555)

    def plan(base: Path) -> None:
        root = base / "srv/shop/staging"
        fscheck.plan_release_support(root, root / "releases" / ("0" * 64), ["a"], first=True)

    code, message = _as_deployer(tmp_path, plan)
    assert code == 2, message
    assert "install -d -o USER" in message and "TMP/srv/shop/staging" in message


def test_an_empty_environment_directory_of_another_user_says_to_give_it_to_this_one(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o555)  # an administrator made it, and did not give it to the deployer
    code, message = _as_deployer(tmp_path, lambda base: fscheck.check_release_support(base / "staging"))
    assert code == 2, message
    assert message.startswith("cannot write in TMP/staging: Permission denied"), message
    assert "graven runs as USER" in message and "chown USER: TMP/staging" in message
    assert list(staging.iterdir()) == []


def test_an_environment_another_user_deploys_says_to_deploy_it_as_that_user(tmp_path: Path) -> None:
    meta = tmp_path / "staging" / ".graven"
    meta.mkdir(parents=True)
    meta.chmod(0o555)  # root (or another user) deploys staging: its lock is theirs

    def lock(base: Path) -> None:
        EnvLock(base / "staging/.graven/lock", env="staging", actor="a", since="s").acquire(wait=False)

    code, message = _as_deployer(tmp_path, lock)
    assert code == 2, message
    opening = "cannot open the deploy lock TMP/staging/.graven/lock: Permission denied"
    assert message.startswith(opening), message
    assert "TMP/staging/.graven is " in message and "graven runs as USER" in message
    assert "deployed by another user" in message and "run graven as" in message
    assert not (meta / "lock").exists()


def test_a_read_only_file_system_is_still_the_disk_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "mkdir", refused)
    with pytest.raises(BackendError) as raised:
        fscheck.check_release_support(tmp_path / "staging")
    assert not isinstance(raised.value, InputError)
    assert "Read-only file system" in str(raised.value)
