"""A heal that is not root and the release's group: a user may `chgrp` to a group it is in, so a heal by
the deployer as a member of the group the release was deployed with gives that group back and gives it
to what it writes; one by the deployer outside that group could not, and stops with one line before
anything changes (as a heal by a user that could not give an owner back)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from graven.core.drift import HealPlan
from graven.core.globs import GlobSet
from graven.deploy.statdb import StatTable
from graven.drift.heal import apply_heal
from graven.errors import BackendError
from graven.model.manifest import FileEntry, SymlinkEntry
from graven.store.local import LocalStore
from helpers_deploy import NOBODY, exit_code_as_nobody
from helpers_services import unavailable

GROUP = 12345  # the group the release was deployed with (a setgid environment directory's)
DATA = b"print('healed')\n"


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        unavailable("a heal as another user needs root to set it up")


def nobodys_release(tmp_path: Path) -> tuple[LocalStore, Path, HealPlan, int]:
    """A release nobody deployed with the group GROUP, whose `app` directory was given nobody's own
    group; a plan that fixes `app` and writes `app/main.py` and `app/link.py`. The store, the release,
    the plan and a descriptor of ``tmp_path`` (nobody reaches the release through it)."""
    store = LocalStore.at(tmp_path / "objects")
    digest = store.put(DATA)
    release = tmp_path / "release"
    (release / "app").mkdir(parents=True)
    os.chown(release / "app", NOBODY, NOBODY)  # the drift: nobody's egid, not the release's group
    os.chown(release, NOBODY, GROUP)
    for path in (release / "app", release):
        path.chmod(0o555)
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    tmp_path.chmod(0o755)
    (tmp_path / "objects").chmod(0o755)
    plan = HealPlan(
        (),
        ("app",),
        (FileEntry("app/main.py", digest.hex, len(DATA), False),),
        (SymlinkEntry("app/link.py", "main.py"),),
        False,
        False,
    )
    return store, release, plan, holder


def heal_as_nobody(holder: int, plan: HealPlan, groups: tuple[int, ...]) -> tuple[int, str]:
    """Run the heal as nobody (a member of ``groups`` besides its own): (exit code, the error line)."""
    read_fd, write_fd = os.pipe()

    def as_nobody() -> int:
        os.close(read_fd)
        base = Path(f"/proc/self/fd/{holder}")
        try:
            apply_heal(
                LocalStore(base / "objects"),
                base / "release",
                plan,
                StatTable(),
                ignore=GlobSet.of([]),
                owner=NOBODY,
                group=GROUP,
            )
        except BackendError as exc:
            os.write(write_fd, str(exc).replace(str(base), "RELEASE_DIR").encode())
            return 4
        return 0

    try:
        code = exit_code_as_nobody(as_nobody, groups)
    finally:
        os.close(write_fd)
        os.close(holder)
    with os.fdopen(read_fd, "rb") as handle:
        return code, handle.read().decode()


def test_a_deployer_in_the_release_group_gives_it_back_and_to_what_it_writes(tmp_path: Path) -> None:
    """What nobody's heal wrote had nobody's egid, and a directory given nobody's group stayed so: the
    check after the heal named them, although a member of the group may chgrp to it."""
    _store, release, plan, holder = nobodys_release(tmp_path)
    code, error = heal_as_nobody(holder, plan, (GROUP,))
    assert code == 0, error
    for path in (release, release / "app", release / "app/main.py", release / "app/link.py"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (NOBODY, GROUP), path
    assert (release / "app/main.py").read_bytes() == DATA


def test_a_deployer_outside_the_release_group_changes_nothing(tmp_path: Path) -> None:
    _store, release, plan, holder = nobodys_release(tmp_path)
    code, error = heal_as_nobody(holder, plan, ())
    assert code == 4, error
    assert error == (
        f"cannot heal RELEASE_DIR/release: it was deployed with group gid {GROUP}, which uid {NOBODY} is "
        f"not in: what the heal writes would have gid {NOBODY}; run graven heal as root or as a member "
        f"of gid {GROUP}"
    )
    for path, group in ((release, GROUP), (release / "app", NOBODY)):
        st = path.lstat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (group, 0o555), path
    assert not (release / "app/main.py").exists()


def test_a_release_directory_of_another_group_is_refused_to_a_deployer_outside_the_recorded_one(
    tmp_path: Path,
) -> None:
    _store, release, _plan, holder = nobodys_release(tmp_path)
    os.chown(release, -1, NOBODY)  # the release directory's group changed too
    code, error = heal_as_nobody(holder, HealPlan((), (".",), (), (), False, False), ())
    assert code == 4, error
    assert error == (
        f"cannot heal RELEASE_DIR/release: its group is gid {NOBODY}, but it was deployed with gid {GROUP}, "
        f"which uid {NOBODY} is not in: run `chgrp {GROUP} RELEASE_DIR/release` as root, or graven heal as "
        f"root or as a member of gid {GROUP}"
    )
    assert release.lstat().st_gid == NOBODY


def test_root_gives_the_group_back_and_to_what_it_writes(tmp_path: Path) -> None:
    store, release, plan, holder = nobodys_release(tmp_path)
    os.close(holder)
    apply_heal(store, release, plan, StatTable(), ignore=GlobSet.of([]), owner=NOBODY, group=GROUP)
    for path in (release, release / "app", release / "app/main.py", release / "app/link.py"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (NOBODY, GROUP), path


def test_a_deployer_in_the_group_leaves_the_group_of_another_users_directory_to_the_check_after(
    tmp_path: Path,
) -> None:
    """A directory given to another user and another group: nobody's heal cannot chgrp what it does not
    own, and failed on it; it leaves that directory (owner and group) to the check after, as root must
    give it back."""
    _store, release, _plan, holder = nobodys_release(tmp_path)
    os.chown(release / "app", 12346, NOBODY)
    code, error = heal_as_nobody(holder, HealPlan((), ("app",), (), (), False, False), (GROUP,))
    assert code == 0, error
    st = (release / "app").lstat()
    assert (st.st_uid, st.st_gid) == (12346, NOBODY)


def test_root_never_gives_away_what_the_deployer_put_in_place_of_a_new_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root's heal made the link under a temporary name in the deployer's directory, then gave that name
    to the deployer and the group by name (lchown): the deployer, who may write there, could put a hard
    link to another file in its place (inotify names it), and root's heal gave that file away."""
    store, release, plan, holder = nobodys_release(tmp_path)
    os.close(holder)
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    real_symlink = os.symlink

    def deployer_swaps(target: str, name: str, *, dir_fd: int | None = None) -> None:
        real_symlink(target, name, dir_fd=dir_fd)
        if dir_fd is not None and os.fstat(dir_fd).st_uid == NOBODY:  # only where nobody may write
            os.unlink(name, dir_fd=dir_fd)
            os.link(victim, name, dst_dir_fd=dir_fd)

    monkeypatch.setattr(os, "symlink", deployer_swaps)
    with contextlib.suppress(BackendError, OSError):
        apply_heal(store, release, plan, StatTable(), ignore=GlobSet.of([]), owner=NOBODY, group=GROUP)
    st = victim.lstat()
    assert (st.st_uid, st.st_gid) == (0, 0)
