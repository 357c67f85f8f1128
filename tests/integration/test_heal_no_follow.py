"""`graven heal` never follows a symbolic link inside the release: a directory swapped for a link (or for
another directory) after the full check, or while the heal works, makes it stop with one line and
leaves what the link points to exactly as it was; a link planted where a directory of the manifest
belongs is removed and the directory rebuilt, without writing through the link."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graven.service import drift_heal
from helpers_deploy import (
    NOBODY,
    World,
    exit_code_as_deployer,
    exit_code_as_nobody,
    give_to_deployer,
    make_world,
    opened_up,
    remove_deployed,
    tree_problems,
)
from helpers_repo import run_cli

Snapshot = dict[str, tuple[int, bytes]]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    made.commit(
        {
            "app/current.py": "->main.py",
            "app/lib/util.py": "X = 1\n",
            "app/lib/deep/more.py": "Y = 2\n",
        }
    )
    digest = made.build()
    assert made.deploy(digest, "staging").ok
    yield made
    made.close()


def release_of(world: World) -> Path:
    return (world.env_dir("staging") / "current").resolve()


def drift_full(capsys: pytest.CaptureFixture[str]) -> set[tuple[str, str]]:
    code, out, _err = run_cli(capsys, "drift", "--json", "--full")
    doc = json.loads(out)
    found = {(d["path"], d["kind"]) for env in doc["environments"] for d in env["differences"]}
    assert (code == 0) == (not found), (code, found)
    return found


def outside_dir(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """A directory outside the environment (0700), holding ``names``: what a link would lead to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in names:
        (outside / name).write_text(f"precious {name}\n")
    outside.chmod(0o700)
    return outside


def snapshot(directory: Path) -> Snapshot:
    """Every entry below ``directory`` (hidden ones too) with its mode and bytes; ``.``: the directory."""
    seen: Snapshot = {".": (os.lstat(directory).st_mode, b"")}
    for path in sorted(directory.rglob("*")):
        st = os.lstat(path)
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        seen[str(path.relative_to(directory))] = (st.st_mode, data)
    return seen


def writable(path: Path, change: Callable[[], object]) -> None:
    """Make a change in a read-only directory of the release and put its mode back."""
    with opened_up(path):
        change()


def before_the_heal(monkeypatch: pytest.MonkeyPatch, attack: Callable[[], None]) -> None:
    """Run ``attack`` after the heal's full check and plan, just before the plan is carried out: the
    race of an intruder who can write the release, won every time."""
    from graven.drift.heal import apply_heal as real  # what drift_heal calls

    def racing(*args: Any, **kwargs: Any) -> Any:
        attack()
        return real(*args, **kwargs)

    monkeypatch.setattr(drift_heal, "apply_heal", racing)


def failed_with_one_line(code: int, err: str, *words: str) -> None:
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert all(word in err for word in words), err


def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan removes ``app/passwd``, rewrites ``app/main.py`` and ``app/current.py`` and makes
    ``app`` writable; ``app`` is then a link to a directory outside, holding files of those names."""
    release = release_of(world)
    app = release / "app"

    def tamper() -> None:
        (app / "main.py").chmod(0o644)
        (app / "main.py").write_text("print('hacked')\n")
        (app / "passwd").write_text("planted\n")
        (app / "current.py").unlink()
        (app / "current.py").symlink_to("__init__.py")

    writable(app, tamper)
    found = drift_full(capsys)
    assert {("app/main.py", "modified"), ("app/passwd", "added"), ("app/current.py", "target")} <= found
    outside = outside_dir(tmp_path, ("passwd", "main.py", "current.py"))
    before = snapshot(outside)

    def link_app_outside() -> None:
        app.rename(release / "app.old")
        app.symlink_to(outside)

    def swap() -> None:
        writable(release, link_app_outside)

    before_the_heal(monkeypatch, swap)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert snapshot(outside) == before  # nothing removed, written nor chmodded there
    failed_with_one_line(code, err, "cannot heal", "app is not a directory", "never follows")
    assert stat.S_IMODE(os.lstat(release).st_mode) == 0o555  # set back, also when the heal fails


@pytest.mark.parametrize("swapped_for", ["a link", "another directory"])
def test_a_directory_swapped_while_the_heal_removes_it_is_not_entered(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    swapped_for: str,
) -> None:
    """``app/evil`` (added, so removed by the heal) is swapped after the heal looked at it and before
    it goes in: the heal must not chmod, list nor empty what now stands there."""
    release = release_of(world)
    evil = release / "app/evil"

    def add_evil() -> None:
        evil.mkdir()
        (evil / "payload.py").write_text("2\n")

    writable(release / "app", add_evil)
    assert ("app/evil", "added") in drift_full(capsys)
    outside = outside_dir(tmp_path, ("payload.py", "keep.txt"))
    before = snapshot(outside)
    real_stat, real_lstat = os.stat, os.lstat
    swapped: list[Path] = []

    def swap(path: Any, dir_fd: int | None) -> None:
        name = os.fspath(path)
        if swapped or not (name == str(evil) or (name == "evil" and dir_fd is not None)):
            return
        evil.rename(release / "app/evil.old")
        if swapped_for == "a link":
            evil.symlink_to(outside)
        else:
            outside.rename(evil)  # a real directory, but not the one the heal looked at
        swapped.append(evil if swapped_for == "another directory" else outside)

    def stat_then_swap(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, dir_fd=dir_fd, **kwargs)
        swap(path, dir_fd)
        return result

    def lstat_then_swap(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> os.stat_result:
        result = real_lstat(path, *args, dir_fd=dir_fd, **kwargs)
        swap(path, dir_fd)
        return result

    def hook() -> None:
        monkeypatch.setattr(os, "stat", stat_then_swap)
        monkeypatch.setattr(os, "lstat", lstat_then_swap)

    before_the_heal(monkeypatch, hook)
    code, _out, err = run_cli(capsys, "heal", "staging")
    monkeypatch.setattr(os, "stat", real_stat)
    monkeypatch.setattr(os, "lstat", real_lstat)
    assert swapped, "the heal never looked at app/evil"
    assert snapshot(swapped[0]) == before  # not chmodded, listed nor emptied
    failed_with_one_line(code, err, "cannot heal", "app/evil changed while it was healed", "never follows")


def test_a_regular_heal_restores_nested_files_links_directories_and_modes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    release = release_of(world)
    deep = release / "app/lib/deep"

    def tamper_deep() -> None:
        (deep / "more.py").unlink()
        (deep / "added").mkdir()
        (deep / "added/x.py").write_text("x\n")

    writable(deep, tamper_deep)
    writable(release / "app", (release / "app/current.py").unlink)
    (release / "app/lib/util.py").chmod(0o644)
    (release / "app/lib/util.py").write_text("X = 666\n")
    (release / "app/lib").chmod(0o777)
    assert len(drift_full(capsys)) >= 5
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0 and "healed" in out, err
    assert tree_problems(release, world.manifest(world.live("staging") or "")) == []
    assert drift_full(capsys) == set()
    for directory in (release, release / "app", release / "app/lib", deep):
        assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o555, directory


def plant_link(release: Path, outside: Path) -> None:
    """``app/lib`` (a directory of the manifest) replaced by a link to ``outside``."""
    lib = release / "app/lib"

    def link_lib_outside() -> None:
        lib.rename(release / "app/lib.old")
        lib.symlink_to(outside)

    writable(release / "app", link_lib_outside)


def test_a_link_planted_where_a_directory_belongs_is_replaced_not_followed(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release = release_of(world)
    outside = outside_dir(tmp_path, ("util.py", "other.py"))
    before = snapshot(outside)
    plant_link(release, outside)
    assert ("app/lib", "type") in drift_full(capsys)
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0 and "healed" in out, err
    assert snapshot(outside) == before
    lib = release / "app/lib"
    assert not lib.is_symlink() and (lib / "util.py").read_text() == "X = 1\n"
    assert stat.S_IMODE(os.lstat(lib).st_mode) == 0o555
    assert not (release / "app/lib.old").exists()  # the real directory moved aside: added, so removed
    assert drift_full(capsys) == set()


def test_a_directory_rebuilt_by_the_heal_and_swapped_again_is_not_written_through(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The planted link is removed and ``app/lib`` made again; the intruder swaps the new directory for a
    link at once, before the heal writes ``app/lib/util.py`` into it."""
    release = release_of(world)
    outside = outside_dir(tmp_path, ("util.py",))
    before = snapshot(outside)
    plant_link(release, outside)
    assert ("app/lib", "type") in drift_full(capsys)
    lib = release / "app/lib"
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> None:
        real_mkdir(path, *args, dir_fd=dir_fd, **kwargs)
        if os.fspath(path) == str(lib) or (os.fspath(path) == "lib" and dir_fd is not None):
            lib.rename(release / "app/lib.new")
            lib.symlink_to(outside)

    before_the_heal(monkeypatch, lambda: monkeypatch.setattr(os, "mkdir", mkdir_then_swap))
    code, _out, err = run_cli(capsys, "heal", "staging")
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    assert snapshot(outside) == before
    failed_with_one_line(code, err, "cannot heal", "app/lib is not a directory", "never follows")


def test_a_heal_of_many_directories_keeps_few_open(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release with more directories than a process may hold open is healed: the directories are
    opened again when needed, not all kept open to the end."""
    from graven.drift import heal as heal_module

    world.commit({f"app/many/d{i:03d}/f.py": f"N = {i}\n" for i in range(40)})
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = release_of(world)
    writable(release / "app", lambda: remove_deployed(release / "app" / "many"))
    monkeypatch.setattr(heal_module, "_MAX_FDS", 6)
    real_open_dir_at = heal_module._open_dir_at
    most: list[int] = []

    def counting(parent_fd: int, name: str, mount: tuple[int, int | None] | None = None) -> tuple[int, bool]:
        opened = real_open_dir_at(parent_fd, name, mount)
        most.append(len(os.listdir("/proc/self/fd")))
        return opened

    monkeypatch.setattr(heal_module, "_open_dir_at", counting)
    assert run_cli(capsys, "heal", "staging")[0] == 0
    assert len(most) > 40
    assert max(most) - min(most) <= 6 + 1  # never more than the cap of directories at once
    assert drift_full(capsys) == set()
    assert tree_problems(release, world.manifest(digest)) == []
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o555 for p in (release / "app" / "many").iterdir())


def test_a_directory_graven_cannot_read_is_opened_up_without_following_a_link(tmp_path: Path) -> None:
    """For a deployer that is not root, a directory of the release drifted to 0311 (no read bit) is
    made 0755 through its parent (never through a link) so that the heal can list it."""
    from graven.drift.heal import _open_dir_at

    top = tmp_path / "shared"
    top.mkdir()
    (top / "unreadable").mkdir()
    (top / "link").symlink_to(top / "unreadable")
    give_to_deployer(top / "unreadable", top, top / "link")
    (top / "unreadable").chmod(0o311)
    parent = os.open(top, os.O_RDONLY | os.O_DIRECTORY)  # opened here: the deployer needs no path to it

    def as_deployer() -> int:
        fd, opened = _open_dir_at(parent, "unreadable")
        os.listdir(fd)
        try:
            _open_dir_at(parent, "link")
        except OSError as exc:  # a link is never opened, nor its target's mode changed through it
            return 0 if opened and exc.errno in (errno.ELOOP, errno.ENOTDIR) else 2
        return 3

    try:
        assert exit_code_as_deployer(as_deployer) == 0
    finally:
        os.close(parent)
    assert stat.S_IMODE((top / "unreadable").stat().st_mode) == 0o755


def test_a_directory_kept_for_its_mode_is_still_made_writable_for_a_file_written_into_it(
    tmp_path: Path,
) -> None:
    """For a deployer that is not root: a directory the plan only sets back to 0555 (it drifted to
    0500) and that also gets a file must be made writable first."""
    from graven.core.drift import HealPlan
    from graven.core.globs import GlobSet
    from graven.deploy.statdb import StatTable
    from graven.drift.heal import apply_heal
    from graven.model.manifest import FileEntry
    from graven.store.local import LocalStore

    data = b"print('healed')\n"
    store = LocalStore.at(tmp_path / "objects")
    digest = store.put(data)
    release = tmp_path / "release"
    (release / "app").mkdir(parents=True)
    give_to_deployer(release, release / "app")
    (release / "app").chmod(0o500)
    release.chmod(0o555)
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # the deployer needs no path to it ...
    tmp_path.chmod(0o755)  # ... but must look up names in it
    plan = HealPlan((), ("app",), (FileEntry("app/main.py", digest.hex, len(data), False),), (), False, False)

    def as_deployer() -> int:
        base = Path(f"/proc/self/fd/{holder}")
        stats = apply_heal(
            LocalStore(base / "objects"), base / "release", plan, StatTable(), ignore=GlobSet.of([])
        )
        return 0 if stats.written == ["app/main.py"] else 2

    try:
        assert exit_code_as_deployer(as_deployer) == 0
    finally:
        os.close(holder)
    assert (release / "app" / "main.py").read_bytes() == data
    assert stat.S_IMODE((release / "app").stat().st_mode) == 0o555


@pytest.mark.needs_root("making a directory another user's needs root")
def test_a_release_directory_another_user_owns_is_given_back_by_root_and_refused_to_others(
    tmp_path: Path,
) -> None:
    """The release directory of a deployer that is not root, chowned to another user: a heal by that
    deployer cannot give it back, and ends with one line saying who can, before anything changes (the
    owner of no other path, no mode); root's heal gives it back to the recorded deployer."""
    from graven.core.drift import HealPlan
    from graven.core.globs import GlobSet
    from graven.deploy.statdb import StatTable
    from graven.drift.heal import apply_heal
    from graven.errors import BackendError
    from graven.model.manifest import FileEntry
    from graven.store.local import LocalStore

    data = b"print('healed')\n"
    store = LocalStore.at(tmp_path / "objects")
    digest = store.put(data)
    release = tmp_path / "release"
    (release / "app").mkdir(parents=True)
    os.chown(release / "app", NOBODY, NOBODY)
    os.chown(release, 12345, NOBODY)  # the deployer was nobody
    (release / "app").chmod(0o500)
    release.chmod(0o555)
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # as root: nobody needs no path to it
    tmp_path.chmod(0o755)  # ... but must look up names in it
    plan = HealPlan((), ("app",), (FileEntry("app/main.py", digest.hex, len(data), False),), (), False, False)

    def as_nobody() -> int:
        base = Path(f"/proc/self/fd/{holder}")
        try:
            apply_heal(
                LocalStore(base / "objects"),
                base / "release",
                plan,
                StatTable(),
                ignore=GlobSet.of([]),
                owner=NOBODY,
            )
        except BackendError as exc:
            expected = (
                f"cannot heal {base / 'release'}: it belongs to uid 12345, but uid {NOBODY} deployed it and "
                f"only root can give it back: run `chown {NOBODY} {base / 'release'}` as root, or graven "
                "heal as root"
            )
            return 0 if str(exc) == expected else 3
        return 2

    try:
        assert exit_code_as_nobody(as_nobody) == 0
    finally:
        os.close(holder)
    for path, owner, mode in ((release, 12345, 0o555), (release / "app", NOBODY, 0o500)):
        assert (path.lstat().st_uid, stat.S_IMODE(path.lstat().st_mode)) == (owner, mode), path
    assert not (release / "app" / "main.py").exists()
    apply_heal(store, release, plan, StatTable(), ignore=GlobSet.of([]), owner=NOBODY)  # as root
    assert release.lstat().st_uid == NOBODY and (release / "app").lstat().st_uid == NOBODY
    assert (release / "app" / "main.py").read_bytes() == data
    assert (release / "app" / "main.py").lstat().st_uid == NOBODY  # what root writes is the deployer's


@pytest.mark.needs_root("making a directory another user's needs root")
def test_a_heal_by_a_user_who_is_neither_the_deployer_nor_root_changes_nothing(tmp_path: Path) -> None:
    """Root's heal gives what it writes to the deployer; nobody else can give anything away: a heal by a
    third user (not root) of a release uid 12345 deployed fails before anything changes."""
    from graven.core.drift import HealPlan
    from graven.core.globs import GlobSet
    from graven.deploy.statdb import StatTable
    from graven.drift.heal import apply_heal
    from graven.errors import BackendError
    from graven.model.manifest import FileEntry
    from graven.store.local import LocalStore

    data = b"print('healed')\n"
    store = LocalStore.at(tmp_path / "objects")
    digest = store.put(data)
    release = tmp_path / "release"
    (release / "app").mkdir(parents=True)
    for path in (release / "app", release):
        os.chown(path, 12345, 12345)
        path.chmod(0o555)
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    tmp_path.chmod(0o755)
    plan = HealPlan((), (), (FileEntry("app/main.py", digest.hex, len(data), False),), (), False, False)

    def as_nobody() -> int:
        base = Path(f"/proc/self/fd/{holder}")
        try:
            apply_heal(
                LocalStore(base / "objects"),
                base / "release",
                plan,
                StatTable(),
                ignore=GlobSet.of([]),
                owner=12345,
            )
        except BackendError as exc:
            expected = (
                f"cannot heal {base / 'release'}: uid 12345 deployed it, and only that user or root can "
                f"heal it (you are uid {NOBODY})"
            )
            return 0 if str(exc) == expected else 3
        return 2

    try:
        assert exit_code_as_nobody(as_nobody) == 0
    finally:
        os.close(holder)
    for path in (release, release / "app"):
        assert (path.lstat().st_uid, stat.S_IMODE(path.lstat().st_mode)) == (12345, 0o555), path
    assert not (release / "app" / "main.py").exists()


def test_a_directory_swapped_for_a_link_before_it_is_opened_up_is_refused_as_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable directory replaced with a symbolic link between the refused open and the chmod
    that opens it up: Python's chmod(dir_fd=, follow_symlinks=False) raises ValueError there (glibc's
    EOPNOTSUPP for a link; for every name on glibc < 2.32 or without /proc), which must be the same
    PermissionError as any chmod refused, never a traceback; the link's target keeps its mode."""
    from graven.drift.heal import _open_dir_at

    top = tmp_path / "release"
    top.mkdir()
    (top / "unreadable").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    outside.chmod(0o700)
    parent = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "unreadable" and not (top / "unreadable").is_symlink():
            os.rename(top / "unreadable", top / "moved")
            os.symlink(outside, top / "unreadable")
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    try:
        with pytest.raises(PermissionError):
            _open_dir_at(parent, "unreadable")
    finally:
        os.close(parent)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
