"""Scanning a release: stat records (racy ones are hashed), the verified cache, the full scan."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from graven.core.drift import compare_tree
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.drift.cache import VerifiedCache, fs_clock
from graven.drift.scan import Hasher, ReleaseIndex, hash_path, scan_release
from graven.drift.walk import BIG
from graven.model.manifest import FileEntry, SymlinkEntry, TreeManifest
from helpers_deploy import exit_code_as_deployer
from helpers_services import unavailable

FILES = {"a.txt": b"alpha\n", "d/b.txt": b"beta\n", "d/e/big.bin": os.urandom(BIG + 5)}


def make_release(root: Path) -> tuple[ReleaseIndex, StatTable]:
    entries: list[FileEntry | SymlinkEntry] = []
    table = StatTable()
    for path, data in FILES.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)
        full.chmod(0o444)
        entries.append(FileEntry(path, hashlib.sha256(data).hexdigest(), len(data)))
        table.record(os.lstat(full), entries[-1].sha256)  # type: ignore[union-attr]
    (root / "d/link").symlink_to("b.txt")
    entries.append(SymlinkEntry("d/link", "b.txt"))
    for directory in (root / "d/e", root / "d", root):
        directory.chmod(0o555)
        table.record(os.lstat(directory), DIR_SHA)
    return ReleaseIndex.of(TreeManifest.of(entries)), table


def test_records_made_in_the_tick_of_their_recording_are_hashed(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    index, table = make_release(root)
    hasher = Hasher()
    newest = max(max(st[2], st[3]) for st in table.inodes.values())  # files and directories
    newest_file = max(max(os.lstat(root / p).st_mtime_ns, os.lstat(root / p).st_ctime_ns) for p in FILES)
    later = scan_release(root, index, full=False, hasher=hasher, table=lambda: (table, newest + 1))
    assert later.hashed == 0 and compare_tree(index.manifest, later.observed, verified=later.verified) == []
    racy = scan_release(root, index, full=False, hasher=hasher, table=lambda: (table, newest_file))
    assert racy.hashed >= 1 and compare_tree(index.manifest, racy.observed, verified=racy.verified) == []
    unknown = scan_release(root, index, full=False, hasher=hasher, table=lambda: (table, None))
    assert unknown.hashed == 3
    hasher.close()


def test_a_racy_record_cannot_hide_a_same_tick_change(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    index, table = make_release(root)
    target = root / "a.txt"
    (root).chmod(0o755)
    target.chmod(0o644)
    target.write_bytes(b"ALPHA\n")  # same size
    target.chmod(0o444)
    root.chmod(0o555)
    st = os.lstat(target)
    table.record(st, index.files[0].sha256)  # a record that matches the changed file's stat ...
    hasher = Hasher()
    racy = scan_release(root, index, full=False, hasher=hasher, table=lambda: (table, st.st_ctime_ns))
    assert [
        (d.path, d.kind) for d in compare_tree(index.manifest, racy.observed, verified=racy.verified)
    ] == [("a.txt", "modified")]
    # ... and when such a record claims to be older, only a full check can tell: that is what --full is for
    trusted = scan_release(root, index, full=False, hasher=hasher, table=lambda: (table, st.st_ctime_ns + 1))
    assert compare_tree(index.manifest, trusted.observed, verified=trusted.verified) == []
    full = scan_release(root, index, full=True, hasher=hasher)
    assert [
        (d.path, d.kind) for d in compare_tree(index.manifest, full.observed, verified=full.verified)
    ] == [("a.txt", "modified")]
    hasher.close()


def test_the_verified_cache_makes_the_next_check_stat_only(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    index, _table = make_release(root)
    hasher = Hasher()
    time.sleep(0.02)  # records are kept only when older than the check (one clock tick at least)
    now = fs_clock(tmp_path / "drift")
    assert now is not None
    first = scan_release(root, index, full=True, hasher=hasher, now_ns=now)
    assert first.cache is not None and all(first.cache.files) and all(first.cache.dirs)
    cache_file = tmp_path / "drift/cache"
    key = b"k" * 32
    assert first.cache.save(cache_file, key)
    cache = VerifiedCache.load(
        cache_file, key, release=index.manifest.digest.hex, files=len(index.files), dirs=len(index.dirs)
    )
    assert cache == first.cache
    assert VerifiedCache.load(cache_file, key, release="0" * 64, files=3, dirs=3) is None
    other_key = b"o" * 32  # written by another home (or forged): not trusted
    shape = {"release": index.manifest.digest.hex, "files": len(index.files), "dirs": len(index.dirs)}
    assert VerifiedCache.load(cache_file, other_key, **shape) is None  # type: ignore[arg-type]
    second = scan_release(
        root, index, full=False, hasher=hasher, cache=cache, now_ns=fs_clock(tmp_path / "drift")
    )
    assert second.hashed == 0 and second.listed == 0 and second.cache is None
    assert compare_tree(index.manifest, second.observed, verified=second.verified) == []
    # an entry added to a directory changes its stat: that directory (only) is listed
    (root / "d").chmod(0o755)
    (root / "d/new").write_text("x")
    (root / "d").chmod(0o555)
    third = scan_release(root, index, full=False, hasher=hasher, cache=cache, now_ns=None)
    assert third.listed == 1 and third.hashed == 0
    assert [
        (d.path, d.kind) for d in compare_tree(index.manifest, third.observed, verified=third.verified)
    ] == [("d/new", "added")]
    hasher.close()


def test_records_made_now_are_not_kept(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    index, _table = make_release(root)
    hasher = Hasher()
    oldest = min(os.lstat(root / p).st_ctime_ns for p in FILES)
    result = scan_release(root, index, full=True, hasher=hasher, now_ns=oldest)
    assert result.cache is not None and not any(result.cache.files)
    hasher.close()


def test_missing_release_and_unreadable_paths(tmp_path: Path) -> None:
    index, _ = make_release(tmp_path / "rel")
    hasher = Hasher()
    assert scan_release(tmp_path / "nope", index, full=False, hasher=hasher).root_missing
    assert hash_path(str(tmp_path / "nope"))[1].startswith("unreadable")
    os.mkfifo(tmp_path / "fifo")
    st, sha = hash_path(str(tmp_path / "fifo"))
    assert st is not None and sha == ""
    results = Hasher(workers=2).hash_many(
        [(str(tmp_path / "rel" / p), len(d)) for p, d in FILES.items()] * 200
    )
    assert [r[1] for r in results[:3]] == [hashlib.sha256(d).hexdigest() for d in FILES.values()]
    hasher.close()


def big_release(root: Path) -> ReleaseIndex:
    entries: list[FileEntry | SymlinkEntry] = []
    for top in range(6):
        for sub in range(top + 1):
            for n in range(40 * (top + 1)):
                path = f"t{top}/s{sub}/f{n}.txt"
                data = f"{path}\n".encode() * (n % 7)
                full = root / path
                full.parent.mkdir(parents=True, exist_ok=True)
                full.write_bytes(data)
                full.chmod(0o444)
                entries.append(FileEntry(path, hashlib.sha256(data).hexdigest(), len(data)))
    (root / "top.txt").write_text("x")
    (root / "top.txt").chmod(0o444)
    entries.append(FileEntry("top.txt", hashlib.sha256(b"x").hexdigest(), 1))
    for directory, _dirs, _files in os.walk(root):
        os.chmod(directory, 0o555)
    return ReleaseIndex.of(TreeManifest.of(entries))


def test_the_split_covers_every_directory_once(tmp_path: Path) -> None:
    from graven.drift.scan import plan_split

    index = big_release(tmp_path / "rel")
    dirs = set(index.dirs)
    for share in (0.4, 0.25, 0.6):
        split = plan_split(index, share=share)
        assert split is not None
        first, second = split
        units = [*first, *second]
        assert len(set(units)) == len(units) > 2  # no directory is a starting point twice
        assert "" in first  # the root's own entries are the first process's
        assert set(units) <= dirs, set(units) - dirs  # walks start at directories of the release
        # each process walks from its units, not into the other units: every directory (and so
        # every file) is walked exactly once
        visits = dict.fromkeys(index.dirs, 0)
        files_of = dict.fromkeys(units, 0)
        for unit in units:
            stack = [unit]
            while stack:
                directory = stack.pop()
                visits[directory] += 1
                prefix = f"{directory}/" if directory else ""
                for name in index.children.get(directory, ()):
                    path = prefix + name
                    if path in dirs:
                        if path not in files_of:
                            stack.append(path)
                    else:
                        files_of[unit] += 1
        assert set(visits.values()) == {1}, {d: n for d, n in visits.items() if n != 1}
        assert sum(files_of.values()) == len(index.files)
        # split until no unit holds more than a fifth of the files; the first part gets about `share`
        assert max(files_of.values()) <= len(index.files) / 5
        got = sum(files_of[unit] for unit in first) / len(index.files)
        assert abs(got - share) <= 0.05, (share, got)


def test_the_forked_full_scan_finds_what_one_walker_finds(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    root = tmp_path / "rel"
    index = big_release(root)
    assert len(index.files) >= 1000
    root.chmod(0o755)
    (root / "t3/s1").chmod(0o755)
    (root / "t3/s1/f5.txt").chmod(0o644)
    (root / "t3/s1/f5.txt").write_text("changed")
    (root / "t5/s4").chmod(0o755)
    (root / "t5/s4/new.txt").write_text("added")
    (root / "t5/s4").chmod(0o555)
    (root / "t0/s0/f1.txt").chmod(0o555)
    script = textwrap.dedent(
        f"""
        import hashlib, json, os, sys, threading
        from pathlib import Path
        from graven.core.drift import compare_tree
        from graven.drift.scan import Hasher, ReleaseIndex, plan_split, scan_release
        from graven.model.manifest import FileEntry, TreeManifest
        root = Path({str(root)!r})
        entries = [FileEntry(p, s, n) for p, s, n in json.load(sys.stdin)]
        index = ReleaseIndex.of(TreeManifest.of(entries))
        out = {{}}
        hint = plan_split(index)
        hint = (hint[0], hint[1][::-1])  # another split: any split is correct
        for parallel in (True, "hint", False):
            assert threading.active_count() == 1
            result = scan_release(
                root,
                (lambda: index) if parallel == "hint" else index,
                full=True,
                hasher=Hasher(2),
                parallel=bool(parallel),
                now_ns=2**62,
                split_hint=hint if parallel == "hint" else None,
            )
            diffs = compare_tree(index.manifest, result.observed, verified=result.verified)
            records = sum(1 for r in result.cache.files if r)
            out[str(parallel)] = [[d.path, d.kind] for d in diffs] + [[result.hashed, records]]
        print(json.dumps(out))
        """
    )
    files = [[e.path, e.sha256, e.size] for e in index.files]
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(files), capture_output=True, text=True, check=True
    )
    out = json.loads(done.stdout)
    assert out["True"] == out["False"] == out["hint"]
    assert out["True"][:-1] == [
        ["t0/s0/f1.txt", "mode"],
        ["t3/s1", "mode"],
        ["t3/s1/f5.txt", "modified"],
        ["t3/s1/f5.txt", "mode"],
        ["t5/s4/new.txt", "added"],
    ]


def test_the_forked_walker_reports_owners_and_extended_attributes(tmp_path: Path) -> None:
    """The child of a full check (half the release, 1,000 files and more) reads each file's owner and
    extended attributes as the parent's walker does."""
    import marshal

    from graven.drift.walk import raw_walk

    (tmp_path / ".graven").mkdir()
    release = tmp_path / "releases" / "r"
    (release / "d").mkdir(parents=True)
    (release / "d" / "plain").write_text("a")
    marked = release / "d" / "marked"
    marked.write_text("b")
    try:
        os.setxattr(marked, "user.note", b"x")
    except OSError as exc:
        unavailable(f"no user extended attributes here: {exc.strerror}")
    observed = marshal.loads(raw_walk(str(release), [""], frozenset()))[0]
    assert observed["d/plain"][5] is None
    assert observed["d/marked"][5] == "extended attributes user.note"
    assert observed["d"][5] is None


def test_the_forked_walker_holds_every_path_to_the_release_group(tmp_path: Path) -> None:
    """The child of a full check compares each path's group with the release's, as the parent's walker
    does: the recorded one when it is given, else the release directory's."""
    import marshal

    from graven.drift.walk import raw_walk

    if os.geteuid() != 0:
        unavailable("chgrp to a group one is not in needs root")
    release = tmp_path / "releases" / "r"
    (release / "d").mkdir(parents=True)
    (release / "d" / "plain").write_text("a")
    (release / "d" / "other").write_text("b")
    gid = release.lstat().st_gid
    os.chown(release / "d" / "other", -1, 12345)
    observed = marshal.loads(raw_walk(str(release), [""], frozenset()))[0]
    assert observed["d/plain"][5] is None and observed["d"][5] is None
    assert observed["d/other"][5] == f"group gid 12345 (deployed as {gid})"
    recorded = marshal.loads(raw_walk(str(release), [""], frozenset(), group=12345))[0]
    assert recorded["d/other"][5] is None
    assert recorded["d/plain"][5] == f"group gid {gid} (deployed as 12345)"


def test_a_full_scan_reports_its_progress_while_it_hashes(tmp_path: Path) -> None:
    """`graven drift --full` of a large release said nothing until it was done: the scan now reports
    the files hashed (both processes' when the work is shared: the child's count is in shared
    memory), from 0 to the manifest's count, never backwards, with counts in between."""
    import subprocess
    import sys
    import textwrap

    root = tmp_path / "rel"
    index = big_release(root)
    total = len(index.files)
    assert total >= 1000
    (root / "t3/s1").chmod(0o755)
    (root / "t3/s1/f5.txt").unlink()  # a missing file is looked at too: the end is still the total
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from graven.drift.scan import Hasher, ReleaseIndex, plan_split, scan_release
        from graven.model.manifest import FileEntry, TreeManifest
        root = Path({str(root)!r})
        index = ReleaseIndex.of(TreeManifest.of([FileEntry(p, s, n) for p, s, n in json.load(sys.stdin)]))
        out = {{}}
        for parallel in (True, "hint", False):
            calls = []
            scan_release(
                root,
                (lambda: index) if parallel == "hint" else index,
                full=True,
                hasher=Hasher(2),
                parallel=bool(parallel),
                split_hint=plan_split(index) if parallel == "hint" else None,
                progress=lambda done, total: calls.append([done, total]),
            )
            out[str(parallel)] = calls
        from graven.drift.walk import ForkedWalk
        child = ForkedWalk(str(root), [""], frozenset())
        child.result()
        print(json.dumps(out), child.hashed())
        """
    )
    files = [[e.path, e.sha256, e.size] for e in index.files]
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(files), capture_output=True, text=True, check=True
    )
    reports, child_count = done.stdout.rsplit(" ", 1)
    assert int(child_count) == total - 1  # what a forked walker tells its parent: the files it hashed
    for mode, calls in json.loads(reports).items():
        assert calls[0] == [0, total], mode
        assert calls[-1] == [total, total], mode
        assert {t for _, t in calls} == {total}, mode
        counts = [d for d, _ in calls]
        assert counts == sorted(counts), (mode, counts)
        assert any(0 < d < total for d in counts), (mode, counts)  # reported while it hashed


def test_a_stop_abandons_a_scan_within_a_chunk(tmp_path: Path) -> None:
    """`graven watch` waited for a running full check to end before it stopped (tens of seconds on a
    large release: past a service manager's stop timeout). Given a stop event, a scan raises
    ScanStopped within a chunk of a large file: in the hashing threads, in a walker that hashes large
    files itself, and while it waits for a forked walker (which is killed and reaped). Not timed (a
    busy machine is slow at times): each chunk read (0.5 s each here) is logged, and so is the stop
    once it is set; what is read after it is counted."""
    import subprocess
    import sys
    import textwrap

    root = tmp_path / "rel"
    entries: list[FileEntry | SymlinkEntry] = []
    for n in range(4):
        data = bytes([n]) * (4 * BIG)
        (root / f"d{n}").mkdir(parents=True)
        (root / f"d{n}/big.bin").write_bytes(data)
        entries.append(FileEntry(f"d{n}/big.bin", hashlib.sha256(data).hexdigest(), len(data)))
    files = [[e.path, e.sha256, e.size] for e in entries]  # type: ignore[union-attr]
    script = textwrap.dedent(
        f"""
        import json, os, sys, threading, time
        from pathlib import Path
        from graven.drift.scan import Hasher, ReleaseIndex, ScanStopped, scan_release
        from graven.drift.walk import CHUNK
        from graven.model.manifest import FileEntry, TreeManifest
        root = Path({str(root)!r})
        index = ReleaseIndex.of(TreeManifest.of([FileEntry(p, s, n) for p, s, n in json.load(sys.stdin)]))
        parent, read, slow_in, log = os.getpid(), os.read, [], -1
        def slow_read(fd, size):  # hashing a large file: 2 s each
            if size == CHUNK and (os.getpid() == parent) == ("parent" in slow_in):
                os.write(log, b"read\\n")
                time.sleep(0.5)
            return read(fd, size)
        os.read = slow_read
        out = {{}}
        for mode in ("threads", "forked", "fast"):
            slow_in[:] = ["child"] if mode == "forked" else ["parent"]
            log_path = root.parent / f"{{mode}}.log"  # the forked walker writes to it too
            log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            stop, started = threading.Event(), []
            def ask():
                time.sleep(0.3)
                stop.set()
                os.write(log, b"stop\\n")
            def progress(done, total):  # after the fork: no thread is forked
                if not started and mode == "forked":
                    started.append(1)
                    threading.Thread(target=ask).start()
            if mode != "forked":
                threading.Thread(target=ask).start()
            hasher = Hasher(2)
            try:
                scan_release(
                    root, index, full=mode != "fast", hasher=hasher, parallel=mode == "forked",
                    progress=progress, stop=stop,
                )
                out[mode] = ["finished"]
            except ScanStopped:
                out[mode] = ["stopped"]
            hasher.close()
            os.close(log)
            logged = log_path.read_text().splitlines()  # the reads started once the stop was set:
            out[mode].append(logged[logged.index("stop") :].count("read"))
            try:
                os.waitpid(-1, os.WNOHANG)
                out[mode].append("child left")
            except ChildProcessError:
                pass
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(files), capture_output=True, text=True, check=True
    )
    out = json.loads(done.stdout)
    assert sorted(out) == ["fast", "forked", "threads"], out  # each mode ran: the loop checks something
    # threads, fast: each of the Hasher's 2 threads and the walker may have looked at the stop event
    # just before it was set (never twice: each looks before each chunk); forked: the walker's chunk when its
    # parent killed it, and one more should the parent (which looks every 0.05 s) be a chunk's 0.5 s
    # late on a busy machine. Hashing on after the stop reads the rest of a file (4 chunks) or more.
    bound = {"threads": 3, "fast": 3, "forked": 2}
    for mode, (how, after, *rest) in out.items():
        assert how == "stopped" and after <= bound[mode] and rest == [], (mode, out)


class _CountedStat:
    """A stat result that counts how many of its kind are alive at once."""

    live = 0
    most = 0

    def __init__(self, st: os.stat_result) -> None:
        self._st = st
        _CountedStat.live += 1
        _CountedStat.most = max(_CountedStat.most, _CountedStat.live)

    def __getattr__(self, name: str) -> object:
        return getattr(self._st, name)

    def __del__(self) -> None:
        _CountedStat.live -= 1


def _change_every_file(root: Path) -> None:
    """Make every file of the release at ``root`` differ from its manifest entry (its stat too)."""
    for directory, _dirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = Path(directory, name)
            path.chmod(0o644)
            path.write_bytes(path.read_bytes() + b"changed\n")


def test_a_fast_check_of_many_changed_files_holds_few_stat_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graven drift` of a release of 120,000 files that all changed peaked at 400 MB, twice what a
    clean check takes: it kept the lstat result of every file to hash, then the fstat result of every
    file it hashed, some 600 bytes each, until all were hashed. It now hashes them in batches and keeps
    only the mode and size of each: what it holds at once no longer grows with the changed files."""
    from graven.drift import scan

    root = tmp_path / "rel"
    index = big_release(root)
    _change_every_file(root)
    total = len(index.files)
    assert total >= 1000
    monkeypatch.setattr(scan, "HASH_BATCH", 100)
    real_stat, real_hash_at = os.stat, scan.hash_at

    def counted_stat(path: str, **kwargs: Any) -> _CountedStat:
        return _CountedStat(real_stat(path, **kwargs))

    def counted_hash_at(*args: Any) -> tuple[_CountedStat | None, str, str | None]:
        st, sha, attrs = real_hash_at(*args)
        return (_CountedStat(st) if st is not None else None), sha, attrs

    monkeypatch.setattr(scan, "hash_at", counted_hash_at)
    hasher = Hasher(2)
    with monkeypatch.context() as patch:
        patch.setattr(os, "stat", counted_stat)
        result = scan_release(root, index, full=False, hasher=hasher, table=None)
    hasher.close()
    assert result.hashed == total
    differences = compare_tree(index.manifest, result.observed, verified=result.verified)
    assert sum(d.kind == "modified" for d in differences) == total
    assert _CountedStat.most <= 2 * 100 + 10, _CountedStat.most


def test_a_fast_check_hashes_in_batches_of_files_and_bytes_and_reports_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files whose stat changed are hashed HASH_BATCH files or HASH_BATCH_BYTES at a time (a
    larger file alone), and the progress is reported before the first batch and after each."""
    from graven.drift import scan

    root = tmp_path / "rel"
    index = big_release(root)
    _change_every_file(root)
    total = len(index.files)
    monkeypatch.setattr(scan, "HASH_BATCH", 400)
    monkeypatch.setattr(scan, "HASH_BATCH_BYTES", 4096)
    sizes = [os.lstat(root / entry.path).st_size for entry in index.files]
    calls: list[tuple[int, int]] = []
    batches: list[int] = []
    real_hash_many = Hasher.hash_many_at

    def hash_many(self: Hasher, files: list[tuple[int, str, str, int]], *args: Any) -> list[object]:
        assert len(files) <= 400 and (len(files) == 1 or sum(file[3] for file in files) <= 4096)
        batches.append(len(files))
        return real_hash_many(self, files, *args)  # type: ignore[return-value]

    monkeypatch.setattr(Hasher, "hash_many_at", hash_many)
    hasher = Hasher(2)
    result = scan_release(
        root, index, full=False, hasher=hasher, table=None, progress=lambda d, t: calls.append((d, t))
    )
    hasher.close()
    assert result.hashed == total and sum(batches) == total
    assert len(batches) >= sum(sizes) // 4096  # batched by bytes: far more than total / 400
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) == len(batches) + 1
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def _swap_for_symlink(
    monkeypatch: pytest.MonkeyPatch, release: Path, outside: Path, when: str, swap: str
) -> None:
    """Replace the release's directory ``swap`` with a symlink to ``outside`` just before the walker opens
    the directory ``when`` (by its full path, or by its name in its parent): the owner of a release
    racing a drift check run by root."""
    real_open = os.open
    name = when.rpartition("/")[2]

    def racing_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        target = os.fspath(path)
        at_when = target == f"{release}/{when}" or (dir_fd is not None and target == name)
        if flags & os.O_DIRECTORY and at_when and not (release / swap).is_symlink():
            (release / swap).rename(release / "moved")
            (release / swap).symlink_to(outside)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing_open)


def _swap_release(tmp_path: Path) -> tuple[Path, Path]:
    release = tmp_path / "releases" / "r"
    (release / "a" / "b").mkdir(parents=True)
    (release / "a" / "b" / "mine.txt").write_text("mine")
    outside = tmp_path / "secret"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "shadow").write_text("root only")
    (outside / "top").write_text("root only")
    return release, outside


def test_the_forked_walker_never_follows_a_middle_directory_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release's owner who swaps ``a`` for a symlink to a directory outside the release once the walker
    is inside ``a`` (about to open ``a/b``) never makes it list or hash files outside the release (a
    drift check runs as root): each directory is opened in its already opened parent."""
    import marshal

    from graven.drift.walk import raw_walk

    release, outside = _swap_release(tmp_path)
    _swap_for_symlink(monkeypatch, release, outside, "a/b", "a")
    observed = marshal.loads(raw_walk(str(release), [""], frozenset()))[0]
    assert "a/b/shadow" not in observed
    assert all(raw[3] != hashlib.sha256(b"root only").hexdigest() for raw in observed.values())


def test_the_forked_walker_reports_a_directory_swapped_for_a_symlink_as_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory swapped for a symlink between its parent's listing and its own opening is reported as
    what is there now (a symlink: a type change), and nothing below it is read."""
    import marshal

    from graven.drift.walk import raw_walk

    release, outside = _swap_release(tmp_path)
    _swap_for_symlink(monkeypatch, release, outside, "a", "a")
    observed = marshal.loads(raw_walk(str(release), [""], frozenset()))[0]
    assert observed["a"][0] == "symlink" and observed["a"][4] == str(outside)
    assert not any(path.startswith("a/") for path in observed)


def test_the_in_process_walker_never_reads_through_a_middle_directory_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walker of a small release (and the parent's half of a large one) opened each directory by its
    full path: a release's owner who swapped ``a`` for a link to a directory outside the release once
    the walker was inside it made root list and hash what lies there, and later still open (never read)
    the directory there (on an automount path, an open mounts it). Each directory is opened in its
    opened parent, never through a link, and must be the one its parent listed (its inode); a big file
    is hashed from the descriptor opened in its directory, never from its path again."""
    release, outside = _swap_release(tmp_path)
    (outside / "b" / "big.bin").write_bytes(b"root only" * (BIG // 9 + 1))
    (release / "a" / "b" / "big.bin").write_bytes(b"mine" * (BIG // 4 + 1))
    entries = [
        FileEntry(
            path, hashlib.sha256((release / path).read_bytes()).hexdigest(), (release / path).stat().st_size
        )
        for path in ("a/b/big.bin", "a/b/mine.txt")
    ]
    index = ReleaseIndex.of(TreeManifest.of(entries))
    leaks = _watch_outside(monkeypatch, release, outside, "a/b")
    hasher = Hasher()
    try:
        result = scan_release(release, index, full=True, hasher=hasher, parallel=False)
    finally:
        hasher.close()
    monkeypatch.undo()
    assert (release / "a").is_symlink()  # the race happened
    assert leaks == []
    secret = {hashlib.sha256(p.read_bytes()).hexdigest() for p in outside.rglob("*") if p.is_file()}
    assert "a/b/shadow" not in result.observed, result.observed
    assert not {seen.sha256 for seen in result.observed.values()} & secret, result.observed


def _watch_outside(
    monkeypatch: pytest.MonkeyPatch,
    release: Path,
    outside: Path,
    swap_at: str,
    names: tuple[str, ...] = ("b", "mine.txt"),
) -> list[str]:
    """Swap the release's directory ``a`` for a symlink to ``outside`` at the first look at ``a/b`` or
    below (by a full path; by its name in an open directory: one of ``names``) (the release's owner
    racing a check run by root), and note every stat, open, listing and listxattr that reached an
    inode of ``outside``."""
    secret = {os.lstat(p).st_ino for p in [outside, *outside.rglob("*")]}
    leaks: list[str] = []
    real = {name: getattr(os, name) for name in ("lstat", "stat", "open", "scandir", "listxattr", "readlink")}

    def hook(name: str) -> Any:
        def racing(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            target = os.fspath(path) if not isinstance(path, int) else ""
            at = target.endswith(f"/{swap_at}") or f"/{swap_at}/" in target
            at = at or (kwargs.get("dir_fd") is not None and target in names)
            if at and not (release / "a").is_symlink():
                (release / "a").rename(release / "moved")
                (release / "a").symlink_to(outside)
            result = real[name](path, *args, **kwargs)
            if name in ("lstat", "stat"):
                inode = result.st_ino
            elif name == "open":
                inode = os.fstat(result).st_ino
            elif isinstance(path, int):
                inode = os.fstat(path).st_ino
            else:
                follow = name == "scandir" or kwargs.get("follow_symlinks", True)
                inode = real["stat"](path, follow_symlinks=follow).st_ino
            if inode in secret:
                leaks.append(f"{name}({path!r}, {kwargs})")
            return result

        return racing

    for name in real:
        monkeypatch.setattr(os, name, hook(name))
    return leaks


@pytest.mark.parametrize("table_known", [False, True])
def test_the_stat_check_never_follows_a_middle_directory_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table_known: bool
) -> None:
    """The default check stat'ed, listed, hashed and read the extended attributes of every path by its
    full path: a release's owner who swapped ``a`` for a symlink to a directory outside the release
    once the check had looked at ``a`` made root (a check may run as root) stat, list and hash what lies
    there (``a/b/shadow`` reported as added, the hash of a root-only file reported as drift). Every
    directory is now opened in its opened parent, never through a link; a directory that turned into a
    link is reported as what it is now."""
    release, outside = _swap_release(tmp_path)
    (outside / "b" / "mine.txt").write_text("root only, but a much longer file")
    (release / "a" / "b" / "extra").mkdir()
    (release / "a" / "b" / "extra" / "x").write_text("x")
    (outside / "b" / "extra").mkdir()
    (outside / "b" / "extra" / "y").write_text("root only")
    (release / "a" / "b" / "link").symlink_to("mine.txt")
    (outside / "b" / "link").symlink_to("/root/secret")
    mine = FileEntry("a/b/mine.txt", hashlib.sha256(b"mine").hexdigest(), 4)
    entries: list[FileEntry | SymlinkEntry] = [mine, SymlinkEntry("a/b/link", "mine.txt")]
    (release / "a" / "b" / "mine.txt").chmod(0o444)
    index = ReleaseIndex.of(TreeManifest.of(entries))
    table = StatTable()
    if table_known:
        for path in ("a", "a/b", "a/b/mine.txt"):
            st = os.lstat(release / path)
            table.record(st, DIR_SHA if path != mine.path else mine.sha256)
    leaks = _watch_outside(monkeypatch, release, outside, "a/b")
    hasher = Hasher()
    try:
        result = scan_release(release, index, full=False, hasher=hasher, table=lambda: (table, None))
    finally:
        hasher.close()
    monkeypatch.undo()
    assert (release / "a").is_symlink()  # the race happened
    secret = {hashlib.sha256(p.read_bytes()).hexdigest() for p in outside.rglob("*") if p.is_file()}
    assert leaks == []
    assert not any("shadow" in path or path.endswith("/y") for path in result.observed), result.observed
    assert not {seen.sha256 for seen in result.observed.values()} & secret, result.observed
    assert all(seen.target != "/root/secret" for seen in result.observed.values())
    differences = compare_tree(index.manifest, result.observed, verified=result.verified)
    assert any(d.path == "a" for d in differences), differences  # a directory turned into a link: drift


def test_the_stat_check_opens_each_directory_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default check looked at the directories, the files and the symlinks in three passes, each
    opening again every directory on its way (a third of a check with a verified cache went to opening
    directories): one walk now opens each directory once, in its opened parent, and finds every path,
    including those whose names sort between a directory and what it holds ("a/b-x", "a/b.txt")."""
    root = tmp_path / "rel"
    data = b"x\n"
    paths = ["a/b-x/f", "a/b.txt", "a/b/c/d/f", "a/b/f", "a/c.txt", "a/b/c/g", "e/f", "top"]
    entries: list[FileEntry | SymlinkEntry] = []
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        (root / path).chmod(0o444)
        entries.append(FileEntry(path, hashlib.sha256(data).hexdigest(), len(data)))
    for link in ("a/b/c/link", "a/b-x/link", "link"):
        (root / link).symlink_to("f")
        entries.append(SymlinkEntry(link, "f"))
    index = ReleaseIndex.of(TreeManifest.of(entries))
    for directory in reversed(index.dirs):
        (root / directory).chmod(0o555)
    hasher = Hasher()
    time.sleep(0.02)  # records are kept only when older than the check (one clock tick at least)
    first = scan_release(root, index, full=True, hasher=hasher, now_ns=fs_clock(tmp_path / "drift"))
    assert first.cache is not None and all(first.cache.dirs)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & os.O_DIRECTORY:
            opened.append(os.fspath(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", counting_open)
    try:
        second = scan_release(root, index, full=False, hasher=hasher, cache=first.cache, now_ns=None)
    finally:
        hasher.close()
    monkeypatch.undo()
    assert second.hashed == 0 and second.listed == 0
    assert second.verified == set(paths)
    assert compare_tree(index.manifest, second.observed, verified=second.verified) == []
    assert sorted(opened) == sorted([str(root), "a", "b-x", "b", "c", "d", "e"]), opened
    # a missing directory and a directory swapped for a file are found by the same walk
    for directory in ("", "a/b/c", "a/b/c/d", "e"):
        (root / directory).chmod(0o755)
    (root / "a/b/c/d/f").unlink()
    (root / "a/b/c/d").rmdir()
    (root / "e/f").unlink()
    (root / "e").rmdir()
    (root / "e").write_text("now a file")
    (root / "a/b/c").chmod(0o555)
    hasher = Hasher()
    try:
        third = scan_release(root, index, full=False, hasher=hasher, cache=first.cache, now_ns=None)
    finally:
        hasher.close()
    found = {(d.path, d.kind) for d in compare_tree(index.manifest, third.observed, verified=third.verified)}
    assert found == {("a/b/c/d", "removed"), ("a/b/c/d/f", "removed"), ("e", "type"), ("e/f", "removed")}


@pytest.mark.parametrize(
    ("walker", "swap_at"),
    [("in-process", "a/b/c"), ("in-process", "a/b/fifo"), ("in-process", "a/b/big.bin"), ("forked", "a/b/c")],
)
def test_the_full_check_never_reads_attributes_through_a_middle_directory_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walker: str, swap_at: str
) -> None:
    """``drift --full`` read the extended attributes of a subdirectory and of a big file, and the stat
    of a FIFO, by their full paths; ``listxattr(follow_symlinks=False)`` refuses a symlink as the last
    component only: a release's owner who swapped ``a`` for a symlink to a directory outside the
    release meanwhile made root (a check may run as root) list the extended attributes of, or stat,
    what lies there. They are read from a descriptor opened in the directory being listed."""
    import marshal

    from graven.drift.walk import raw_walk

    release, outside = _swap_release(tmp_path)
    for where in (release / "a" / "b", outside / "b"):
        (where / "c").mkdir()
        (where / "big.bin").write_bytes(b"x" * (BIG + 1))
    os.mkfifo(release / "a" / "b" / "fifo")
    (outside / "b" / "fifo").write_text("root only")
    name = swap_at.rpartition("/")[2]
    leaks = _watch_outside(monkeypatch, release, outside, swap_at, names=(name,))
    if walker == "forked":
        marshal.loads(raw_walk(str(release), [""], frozenset()))
    else:
        index = ReleaseIndex.of(
            TreeManifest.of([FileEntry("a/b/mine.txt", hashlib.sha256(b"mine").hexdigest(), 4)])
        )
        hasher = Hasher()
        try:
            scan_release(release, index, full=True, hasher=hasher, parallel=False)
        finally:
            hasher.close()
    monkeypatch.undo()
    assert (release / "a").is_symlink()  # the race happened
    assert leaks == []


@pytest.mark.parametrize("stop_after", [None, 9])
def test_the_in_process_walker_holds_one_directory_per_level_and_closes_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_after: int | None
) -> None:
    """The in-process walker opens each directory in its opened parent and holds a parent until its
    last subdirectory is opened: at most one directory descriptor per level of the path walked (never
    one per directory of the tree), and none is left open when the walk ends or is stopped half-way."""
    import threading

    from graven.drift.scan import ScanStopped

    root = tmp_path / "rel"
    entries: list[FileEntry | SymlinkEntry] = []
    for top in "abcd":  # 4 x 3 x 3 directories, 3 levels deep
        for mid in "xyz":
            for low in "pqr":
                path = f"{top}/{mid}/{low}/f"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(path.encode())
                entries.append(FileEntry(path, hashlib.sha256(path.encode()).hexdigest(), len(path)))
    index = ReleaseIndex.of(TreeManifest.of(entries))
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc/self/fd")
    before = set(os.listdir(fd_dir))
    stop = threading.Event()
    real_open = os.open
    held: set[int] = set()
    most = 0
    opened = 0

    def counting_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        nonlocal most, opened
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if flags & os.O_DIRECTORY:
            assert dir_fd is not None or os.fspath(path) == str(root)  # never by a path below the root
            opened += 1
            if opened == stop_after:
                stop.set()
            held.intersection_update(int(n) for n in os.listdir(fd_dir))
            held.add(fd)
            most = max(most, len(held))
        return fd

    monkeypatch.setattr(os, "open", counting_open)
    hasher = Hasher()
    try:
        if stop_after is None:
            result = scan_release(root, index, full=True, hasher=hasher, parallel=False, stop=stop)
            assert result.hashed == 36 and result.listed == 1 + 4 + 12 + 36
            assert {d.path for d in compare_tree(index.manifest, result.observed)} <= {
                e.path for e in index.manifest.entries
            } | set(index.dirs)  # modes only: everything was found where it is
        else:
            with pytest.raises(ScanStopped):
                scan_release(root, index, full=True, hasher=hasher, parallel=False, stop=stop)
    finally:
        hasher.close()
    monkeypatch.undo()
    assert set(os.listdir(fd_dir)) == before
    assert most <= 4 + 1, most  # the root and one per level (and the one an attribute check opens)


def test_the_in_process_walker_does_the_part_of_a_forked_walker_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the forked walker fails, the parent walks its starting points too (opened one component at a
    time from the release) and finds what a walk of its own would."""
    from graven.drift.walk import ForkedWalk

    root = tmp_path / "rel"
    entries: list[FileEntry | SymlinkEntry] = []
    for path in [f"{top}/{mid}/f{i}" for top in "abcde" for mid in "xy" for i in range(3)] + ["top"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(path.encode())
        entries.append(FileEntry(path, hashlib.sha256(path.encode()).hexdigest(), len(path)))
    index = ReleaseIndex.of(TreeManifest.of(entries))
    hasher = Hasher()
    try:
        alone = scan_release(root, index, full=True, hasher=hasher, parallel=False)
        failed: list[list[str]] = []

        def failing(self: ForkedWalk, stop: object = None) -> None:
            failed.append(self.start)
            self.cancel()

        monkeypatch.setattr(ForkedWalk, "result", failing)
        both = scan_release(root, index, full=True, hasher=hasher, parallel=True)
    finally:
        hasher.close()
    assert failed and all(failed[0])  # the child had starting points below the root, and failed
    assert (both.observed, both.verified, both.hashed, both.listed) == (
        alone.observed,
        alone.verified,
        alone.hashed,
        alone.listed,
    )
    assert both.hashed == len(entries)


def test_the_in_process_walker_out_of_descriptors_at_a_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running out of descriptors when opening a directory in its parent is graven's limit, never an
    empty directory (nor drift): the check fails, and nothing stays open."""
    import errno

    from graven.errors import BackendError

    release, _ = _swap_release(tmp_path)
    index = ReleaseIndex.of(
        TreeManifest.of([FileEntry("a/b/mine.txt", hashlib.sha256(b"mine").hexdigest(), 4)])
    )
    real_open = os.open
    looks: list[int] = []

    def failing(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & os.O_DIRECTORY and dir_fd is not None and path == "b":
            looks.append(dir_fd)
            if len(looks) == 2:  # the first: its attributes, while its parent is listed; then the walk
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()
    monkeypatch.setattr(os, "open", failing)
    hasher = Hasher()
    try:
        with pytest.raises(BackendError, match="open files"):
            scan_release(release, index, full=True, hasher=hasher, parallel=False)
    finally:
        hasher.close()
    monkeypatch.undo()
    assert len(looks) == 2
    if before:
        assert set(os.listdir("/proc/self/fd")) == before


def _differences_as_deployer(root: Path, index: ReleaseIndex, *, full: bool) -> list[list[str]]:
    """The differences a check of ``root`` finds run by a deployer that is not root (nobody, when the
    suite runs as root): the check runs in a forked child in ``root``'s parent, opened here (nobody may
    not search the directories above it), its result sent back through a pipe."""
    importlib.import_module("concurrent.futures.thread")  # the hasher's pool: nobody may not import it
    root.parent.chmod(0o711)
    parent_fd = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()

    def check() -> int:
        os.close(read_end)
        os.fchdir(parent_fd)
        hasher = Hasher()
        try:
            found = scan_release(Path(root.name), index, full=full, hasher=hasher)
        finally:
            hasher.close()
        differences = compare_tree(
            index.manifest, found.observed, verified=found.verified, root_mode=found.root_mode
        )
        payload = json.dumps([found.root_missing, [[d.path, d.kind] for d in differences]]).encode()
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        return 0

    try:
        code = exit_code_as_deployer(check)
    finally:
        os.close(write_end)
        os.close(parent_fd)
    with os.fdopen(read_end, "rb") as received:  # a few hundred bytes: never more than a pipe holds
        root_missing, differences = json.loads(received.read() or b"[true, null]")
    assert code == 0 and not root_missing
    return list(differences)


@pytest.mark.parametrize("directory", ["d", ""])
def test_the_stat_check_of_a_directory_that_cannot_be_listed_reports_its_mode_only(
    tmp_path: Path, directory: str
) -> None:
    """A deployer that is not root checks a release one of whose directories lost its read permission
    (0111: searched, not listed). The default check opened each directory O_RDONLY in its parent since
    fbef90e: refused there, everything below it was reported removed (the release's root: the whole
    release missing), where the check looked its files up by path before and reported the mode only.
    A directory it may only search is now opened O_PATH: its files are stat'ed, hashed and its links
    read in it, as before."""
    root = tmp_path / "rel"
    index, _table = make_release(root)
    give = root / directory if directory else root
    give.chmod(0o111)
    try:
        differences = _differences_as_deployer(root, index, full=False)
    finally:
        give.chmod(0o555)
    assert differences == ([[directory, "mode"]] if directory else [[".", "mode"]]), differences
