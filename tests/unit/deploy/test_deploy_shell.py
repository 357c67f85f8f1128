"""The imperative shell of environments: releases, stat records, the lock, switches and hooks."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from graven.deploy.hooks import run_health, run_hook
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock, shared_lock
from graven.deploy.materialize import build_release, check_release, remove_tree
from graven.deploy.statdb import StatTable
from graven.deploy.switch import exchange_dirs, point_symlink
from graven.errors import BackendError, IntegrityError, PolicyError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.store.local import LOOSE_THRESHOLD, LocalStore
from helpers_deploy import tree_problems


def stored_manifest(
    store: LocalStore, files: dict[str, bytes], extra: list[TreeEntry] | None = None
) -> TreeManifest:
    entries: list[TreeEntry] = list(extra or [])
    with store.batch() as batch:
        for path, data in files.items():
            digest = batch.add(data)
            entries.append(FileEntry(path, digest.hex, len(data), executable=path.startswith("bin/")))
    return TreeManifest.of(entries)


FILES = {
    "a.txt": b"alpha\n",
    "dir/b.txt": b"beta\n",
    "dir/copy.txt": b"alpha\n",
    "bin/run": b"#!/bin/sh\n",
    "big.bin": os.urandom(LOOSE_THRESHOLD + 10),
}
LINKS: list[TreeEntry] = [SymlinkEntry("link", "dir/b.txt"), DirEntry("var/empty")]


def store_inodes(store: LocalStore) -> set[int]:
    found: set[int] = set()
    for dirpath, _dirs, files in os.walk(store.root):
        for name in files:
            found.add(os.lstat(os.path.join(dirpath, name)).st_ino)
    return found


def release_inodes(root: Path) -> set[int]:
    found: set[int] = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                found.add(st.st_ino)
    return found


def test_build_release_is_the_artifact_read_only_and_never_shares_store_inodes(
    tmp_path: Path, store: LocalStore
) -> None:
    manifest = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    stats = build_release(store, manifest, tmp_path / "r1", table)
    assert tree_problems(tmp_path / "r1", manifest) == []
    assert stats.copied == 4 and stats.linked == 1  # dir/copy.txt is a link to a.txt's copy
    assert oct(os.lstat(tmp_path / "r1" / "bin/run").st_mode & 0o777) == "0o555"
    assert oct(os.lstat(tmp_path / "r1" / "dir").st_mode & 0o777) == "0o555"
    assert not release_inodes(tmp_path / "r1") & store_inodes(store)
    assert check_release(tmp_path / "r1", manifest, table).ok


def test_next_release_links_unchanged_files_and_copies_changed_ones(
    tmp_path: Path, store: LocalStore
) -> None:
    first = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table)
    second = stored_manifest(store, {**FILES, "dir/b.txt": b"beta 2\n"}, LINKS)
    stats = build_release(store, second, tmp_path / "r2", table, reuse_root=tmp_path / "r1")
    assert stats.copied == 1 and stats.linked == 4
    assert tree_problems(tmp_path / "r2", second) == []
    table.record(os.lstat(tmp_path / "r2"), "0" * 64)  # the caller records the root once it is renamed
    assert check_release(tmp_path / "r2", second, table).by_stat
    assert os.lstat(tmp_path / "r1/a.txt").st_ino == os.lstat(tmp_path / "r2/a.txt").st_ino
    assert os.lstat(tmp_path / "r1/dir/b.txt").st_ino != os.lstat(tmp_path / "r2/dir/b.txt").st_ino
    # both releases still check by stat alone: linking refreshed the shared inodes' records
    assert check_release(tmp_path / "r1", first, table, rehash=False).ok
    assert check_release(tmp_path / "r2", second, table, rehash=False).ok


def test_a_tampered_file_is_copied_again_not_linked(tmp_path: Path, store: LocalStore) -> None:
    first = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table)
    victim = tmp_path / "r1" / "a.txt"
    before = os.lstat(victim)
    os.chmod(victim, 0o644)
    victim.write_bytes(b"evil!\n")
    os.chmod(victim, 0o444)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back: ctime still tells
    check = check_release(tmp_path / "r1", first, table)
    assert not check.ok and any("a.txt" in p for p in check.problems)
    stats = build_release(store, first, tmp_path / "r2", table, reuse_root=tmp_path / "r1")
    assert tree_problems(tmp_path / "r2", first) == []
    assert stats.copied >= 1
    store.verify(next(iter(first.files())).digest)  # the store was never touched


def test_check_release_finds_extra_missing_and_changed_entries(tmp_path: Path, store: LocalStore) -> None:
    manifest = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    root = tmp_path / "r"
    build_release(store, manifest, root, table)
    for d in (root, root / "dir"):
        d.chmod(0o755)
    (root / "extra.txt").write_text("x")
    (root / "link").unlink()
    (root / "link").symlink_to("a.txt")
    (root / "dir" / "b.txt").unlink()
    problems = check_release(root, manifest, table).problems
    assert "extra.txt: unexpected file" in problems
    assert any(p.startswith("link: symlink points to a.txt") for p in problems)
    assert any(p.startswith("dir/b.txt: missing") for p in problems)


def test_stat_changes_with_the_right_content_are_rehashed_and_refreshed(
    tmp_path: Path, store: LocalStore
) -> None:
    manifest = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    build_release(store, manifest, tmp_path / "r", table)
    os.chmod(tmp_path / "r" / "a.txt", 0o444)  # same mode, but the ctime moves
    assert not check_release(tmp_path / "r", manifest, table, rehash=False).ok
    check = check_release(tmp_path / "r", manifest, table)
    assert check.ok and check.rehashed >= 1
    assert check_release(tmp_path / "r", manifest, table, rehash=False).ok


def test_removing_a_release_keeps_the_records_of_shared_inodes_valid(
    tmp_path: Path, store: LocalStore
) -> None:
    first = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table)
    build_release(store, first, tmp_path / "r2", table, reuse_root=tmp_path / "r1")
    remove_tree(tmp_path / "r1", table)
    assert not (tmp_path / "r1").exists()
    assert check_release(tmp_path / "r2", first, table, rehash=False).ok


def test_a_corrupt_store_object_fails_the_build(tmp_path: Path, store: LocalStore) -> None:
    manifest = stored_manifest(store, FILES)
    big = next(e for e in manifest.files() if e.path == "big.bin")
    loose = store.loose_path(big.digest)
    loose.chmod(0o644)
    with loose.open("r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))  # a changed byte (writing b"X" changed nothing 1 time in 256)
    with pytest.raises(IntegrityError):
        build_release(store, manifest, tmp_path / "r", StatTable())


def test_stat_table_round_trips_and_refuses_a_damaged_file(tmp_path: Path) -> None:
    key = bytes(range(32))
    table = StatTable()
    path = tmp_path / "f"
    path.write_text("x")
    table.record(os.lstat(path), "ab" * 32)
    table.save(tmp_path / "stat", key)
    loaded = StatTable.load(tmp_path / "stat", key)
    assert loaded.matches(os.lstat(path), "ab" * 32) and not loaded.matches(os.lstat(path), "cd" * 32)
    loaded.forget(os.lstat(path).st_ino)
    assert not loaded.inodes
    data = bytearray((tmp_path / "stat").read_bytes())
    data[30] ^= 1
    (tmp_path / "stat").write_bytes(bytes(data))
    assert StatTable.load(tmp_path / "stat", key).inodes == {}  # tag mismatch: start from nothing
    assert StatTable.load(tmp_path / "missing", key).inodes == {}


def test_stat_records_count_only_under_the_key_that_wrote_them(tmp_path: Path) -> None:
    """Whoever can write PATH can rewrite PATH/.graven/stat, but cannot make graven trust it: the
    tag is an HMAC under a key in the graven home, and a plain checksum no longer passes."""
    import hashlib

    from graven.deploy.statdb import _HEAD, _MAGIC, _RECORD

    key, other = b"k" * 32, b"o" * 32
    path = tmp_path / "f"
    path.write_text("tampered")
    st = os.lstat(path)
    table = StatTable()
    table.record(st, "ab" * 32)
    table.save(tmp_path / "stat", key)
    assert StatTable.load(tmp_path / "stat", key).inodes
    assert StatTable.load(tmp_path / "stat", other).inodes == {}
    # a forged table with the old (v1) kind of trailer: a sha256 anyone can compute
    body = _MAGIC + _HEAD.pack(st.st_dev, 1)
    body += _RECORD.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, b"\xab" * 32)
    (tmp_path / "forged").write_bytes(body + hashlib.sha256(body).digest())
    assert StatTable.load(tmp_path / "forged", key).inodes == {}


def test_the_record_key_is_made_once_private_and_shared(tmp_path: Path) -> None:
    from graven.deploy.recordkey import KEY_FILE, load_or_create
    from graven.errors import BackendError

    keys = tmp_path / "home" / "keys"
    first = load_or_create(keys)
    assert len(first) == 32 and load_or_create(keys) == first
    assert (keys / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in keys.iterdir()] == [KEY_FILE]  # no temporary file left
    (keys / KEY_FILE).chmod(0o600)
    (keys / KEY_FILE).write_bytes(b"short")
    with pytest.raises(BackendError, match="damaged"):
        load_or_create(keys)


@pytest.mark.parametrize(("mode", "what"), [(0o644, "readable"), (0o640, "readable"), (0o620, "writable")])
def test_a_record_key_others_can_read_or_write_is_refused(tmp_path: Path, mode: int, what: str) -> None:
    """A review restored a home with widened modes: records.hmac at 0644 went unnoticed (the signing
    keys were refused), and with it a local user forged the stat records of an environment they could
    write, so that a same-size edit passed the fast drift check."""
    from graven.deploy.recordkey import KEY_FILE, load_existing, load_or_create
    from graven.errors import InputError

    keys = tmp_path / "home" / "keys"
    load_or_create(keys)
    (keys / KEY_FILE).chmod(mode)
    for load in (load_or_create, load_existing):
        with pytest.raises(InputError, match=f"record key .* is {what} by others .*chmod 600"):
            load(keys)


def test_a_new_entry_in_a_checked_release_is_found_without_reading_directories_first(
    tmp_path: Path, store: LocalStore
) -> None:
    manifest = stored_manifest(store, FILES, LINKS)
    table = StatTable()
    root = tmp_path / "r"
    build_release(store, manifest, root, table)
    table.record(os.lstat(root), "0" * 64)
    assert check_release(root, manifest, table).by_stat
    (root / "dir").chmod(0o755)
    (root / "dir" / "sitecustomize.py").write_text("import os")
    (root / "dir").chmod(0o555)
    check = check_release(root, manifest, table)
    assert not check.by_stat and "dir/sitecustomize.py: unexpected file" in check.problems


# -- switches --------------------------------------------------------------------------------------


def test_point_symlink_replaces_atomically(tmp_path: Path) -> None:
    link = tmp_path / "current"
    assert point_symlink(link, "releases/a")
    assert point_symlink(link, "releases/b")
    assert not point_symlink(link, "releases/b")
    assert os.readlink(link) == "releases/b"
    assert sorted(os.listdir(tmp_path)) == ["current"]  # no temp links left behind


def test_exchange_dirs_swaps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").touch()
    (tmp_path / "b").mkdir()
    exchange_dirs(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "from-a").exists() and not (tmp_path / "a" / "from-a").exists()


def test_exchange_dirs_without_renameat2_swaps_and_a_failed_rename_leaves_b_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graven.deploy import switch

    monkeypatch.setattr(switch, "_renameat2", lambda: None)  # the fallback: three renames
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").touch()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "from-b").touch()
    exchange_dirs(tmp_path / "a", tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "b")) == ["from-a"] and sorted(os.listdir(tmp_path / "a")) == [
        "from-b"
    ]
    real_rename = os.rename

    def failing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(src) == tmp_path / "missing":
            raise OSError(2, "No such file or directory")
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(BackendError, match="cannot swap"):
        exchange_dirs(tmp_path / "missing", tmp_path / "b")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # b is back: nothing dangling, nothing aside
    assert sorted(os.listdir(tmp_path / "b")) == ["from-a"]


def test_layout_reads_current(tmp_path: Path) -> None:
    layout = EnvLayout(tmp_path)
    assert layout.live_hex() is None
    point_symlink(layout.current, layout.link_target("c" * 64))
    assert layout.live_hex() == "c" * 64
    point_symlink(layout.current, "somewhere/else")
    assert layout.live_hex() is None


# -- the lock --------------------------------------------------------------------------------------


def _hold_lock(path: str, ready: Any, env: str = "staging") -> None:
    lock = EnvLock(Path(path), env=env, actor="holder@test", since="now")
    lock.acquire(wait=False)
    ready.set()
    time.sleep(60)


def test_lock_names_the_holder_and_is_freed_when_the_holder_is_killed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path / "lock"), ready))
    child.start()
    try:
        assert ready.wait(10)
        with pytest.raises(PolicyError) as info:
            EnvLock(tmp_path / "lock", env="staging", actor="me", since="now").acquire(wait=False)
        assert f"holder@test (pid {child.pid}" in str(info.value) and "--wait" in str(info.value)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    with EnvLock(tmp_path / "lock", env="staging", actor="me", since="now") as lock:
        lock.acquire(wait=False)  # a killed holder never blocks


def test_a_lock_lost_to_another_environment_at_the_same_path_names_that_environment(tmp_path: Path) -> None:
    """Environments a and b at one PATH share its lock: b's deployer (and b's drift check) that found
    a's deployer at work said "environment b is being deployed by ...", naming the wrong one."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path / "lock"), ready, "a"))
    child.start()
    try:
        assert ready.wait(10)
        with pytest.raises(PolicyError) as info:
            EnvLock(tmp_path / "lock", env="b", actor="me", since="now").acquire(wait=False)
        said = str(info.value)
        assert said.startswith("environment a (at the same path as b) is being deployed by holder@test"), said
        with pytest.raises(PolicyError) as info, shared_lock(tmp_path / "lock", env="b", wait=False):
            pass
        said = str(info.value)
        assert said.startswith("environment a (at the same path as b) is being changed by holder@test"), said
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()


# -- hooks -----------------------------------------------------------------------------------------


def test_hooks_see_their_environment_and_report_failures(tmp_path: Path) -> None:
    ok = run_hook(
        'test "$GRAVEN_ENV" = staging && pwd', cwd=tmp_path, env={"GRAVEN_ENV": "staging"}, timeout=10
    )
    assert ok.ok and str(tmp_path) in ok.output
    bad = run_hook("echo broken >&2; exit 3", cwd=tmp_path, env={}, timeout=10)
    assert not bad.ok and bad.describe() == "exit 3: broken"
    slow = run_hook("sleep 30", cwd=tmp_path, env={}, timeout=0.2)
    assert slow.returncode is None and "timed out" in slow.describe()


def test_health_retries_until_it_passes(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    command = f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ "$n" -ge 2 ]'
    slept: list[float] = []
    result = run_health(command, cwd=tmp_path, env={}, timeout=5, retries=5, interval=0.5, sleep=slept.append)
    assert result.ok and result.attempts == 3 and slept == [0.5, 0.5]
    failing = run_health("false", cwd=tmp_path, env={}, timeout=5, retries=2, interval=0, sleep=slept.append)
    assert not failing.ok and failing.attempts == 3


def test_a_hook_that_leaves_a_process_writing_to_its_output_is_named(tmp_path: Path) -> None:
    """An activate command that starts a daemon (`./server &`) without redirecting it: the daemon
    keeps writing to the hook's output, a temp file graven removed, filling the disk unseen until it
    stops. The warning names it and says how to start one; a daemon whose output goes elsewhere,
    and a command that leaves nothing behind, are not named."""
    import os
    import signal

    warned: list[str] = []
    pids = tmp_path / "pids"
    leaky = run_hook(f"sleep 600 & echo $! > {pids}", cwd=tmp_path, env={}, timeout=10, warn=warned.append)
    (pid,) = [int(line) for line in pids.read_text().split()]
    try:
        assert leaky.ok
        assert len(warned) == 1 and f"left 1 process running (pid {pid})" in warned[0], warned
        assert "nohup ./server >server.log 2>&1 &" in warned[0]
    finally:
        os.kill(pid, signal.SIGKILL)
    warned.clear()
    quiet = run_hook(
        f"sleep 600 >/dev/null 2>&1 & echo $! > {pids}", cwd=tmp_path, env={}, timeout=10, warn=warned.append
    )
    (pid,) = [int(line) for line in pids.read_text().split()]
    try:
        assert quiet.ok and warned == []
    finally:
        os.kill(pid, signal.SIGKILL)
    assert run_hook("echo done", cwd=tmp_path, env={}, timeout=10, warn=warned.append).ok
    assert warned == []


def test_stat_records_never_follow_a_symlink_or_block_on_a_fifo(tmp_path: Path) -> None:
    """Whoever can write PATH can plant a symlink or a FIFO where graven keeps its records: a root
    deploy must neither overwrite the link's target nor hang reading."""
    from graven.deploy.recordkey import read_record_file

    key = b"k" * 32
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    stat_file = tmp_path / ".graven" / "stat"
    stat_file.parent.mkdir()
    stat_file.symlink_to(victim)
    assert StatTable.load(stat_file, key).inodes == {}  # a symlink is no table
    table = StatTable()
    table.record(os.lstat(victim), "ab" * 32)
    table.save(stat_file, key)
    assert victim.read_text() == "precious\n" and not stat_file.is_symlink()
    assert StatTable.load(stat_file, key).inodes
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_record_file(fifo) is None  # returns at once instead of waiting for a writer


def test_a_timed_out_health_check_reports_the_limit_of_one_attempt(tmp_path: Path) -> None:
    from graven.deploy.hooks import run_health

    result = run_health("sleep 5", cwd=tmp_path, env={}, timeout=0.3, retries=2, interval=0)
    assert not result.ok and result.attempts == 3
    assert result.describe() == "timed out after 0.3s"  # not the ~0.9 s all three attempts took


def _running_in_group(group: int) -> list[int]:
    """The processes of process group ``group`` that still run (a zombie has stopped; its reaping is
    its parent's, or init's once its parent died)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(name))
    return found


def test_ctrl_c_while_a_hook_is_being_started_kills_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (or SIGTERM) that lands after the hook's process started but before graven watches it
    (its watchdog starting: a few ms of every hook) still kills the hook's whole group: the interrupted
    deployment switches back and runs the old release's hooks, not beside the new one's."""
    from graven.deploy import hooks
    from graven.runtime import GroupWatchdog

    groups: list[int] = []

    class SignalledWatchdog(GroupWatchdog):
        def __init__(self, group: int) -> None:
            groups.append(group)
            os.kill(os.getpid(), signal.SIGINT)  # the operator's Ctrl-C, while the watchdog starts
            super().__init__(group)

    monkeypatch.setattr(hooks, "GroupWatchdog", SignalledWatchdog)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_hook("sleep 30; echo done", cwd=tmp_path, env=dict(os.environ), timeout=60)
        assert len(groups) == 1
        deadline = time.monotonic() + 5  # a SIGKILL ends another's child soon, not at once
        while _running_in_group(groups[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _running_in_group(groups[0]) == []
    finally:
        signal.signal(signal.SIGINT, previous)
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
