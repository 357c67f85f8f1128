"""Building a release with more than one worker: the plan of the work, threads or a forked process, and
failures half-way (nothing keeps writing into the release, nothing partial is left visible)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from graven.deploy import materialize
from graven.deploy.materialize import DIR_MODE, build_release, check_release, remove_tree
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.errors import BackendError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.store.local import LocalStore
from helpers_deploy import env_toml, make_world, tree_problems


def tree_files(version: int = 1) -> dict[str, bytes]:
    """About 900 files in about 200 directories, with repeated contents (links within the release),
    executables, files in the root, and a few files that change with ``version``."""
    files: dict[str, bytes] = {"README": b"readme\n", "bin/tool": b"#!/bin/sh\necho tool\n"}
    for top in range(8):
        for sub in range(top + 2):
            for leaf in range(3):
                base = f"pkg{top}/mod{sub}/part{leaf}"
                files[f"{base}/__init__.py"] = b""  # the same (empty) content everywhere
                for n in range(top + 1):
                    files[f"{base}/f{n}.py"] = f"# {base}/f{n}\n".encode() * (n + 1)
                files[f"{base}/bin/run"] = b"#!/bin/sh\nexit 0\n"
    for path in ("pkg1/mod0/part0/f0.py", "pkg7/mod8/part2/f3.py", "pkg3/mod2/part1/__init__.py"):
        files[path] = f"{path} changed in version {version}\n".encode() if version > 1 else files[path]
    return files


EXTRA: list[TreeEntry] = [
    SymlinkEntry("pkg2/mod1/link", "part0/f0.py"),
    SymlinkEntry("top-link", "README"),
    DirEntry("pkg5/mod3/empty"),
    DirEntry("var/cache/empty"),
]


def stored_manifest(store: LocalStore, files: dict[str, bytes]) -> TreeManifest:
    entries: list[TreeEntry] = list(EXTRA)
    with store.batch() as batch:
        for path, data in files.items():
            digest = batch.add(data)
            executable = path.startswith("bin/") or "/bin/" in path
            entries.append(FileEntry(path, digest.hex, len(data), executable=executable))
    return TreeManifest.of(entries)


def inodes(root: Path) -> set[int]:
    found: set[int] = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                found.add(st.st_ino)
    return found


def listing(root: Path) -> list[tuple[str, int]]:
    """Every entry below ``root`` with its mtime: to see that nothing changes any more."""
    out: list[tuple[str, int]] = []
    for dirpath, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            full = os.path.join(dirpath, name)
            out.append((full, os.lstat(full).st_mtime_ns))
    return sorted(out)


# -- the plan -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("linking", [True, False])
@pytest.mark.parametrize("parts", [1, 2, 4])
def test_the_plan_makes_every_directory_once_parents_first(
    store: LocalStore, linking: bool, parts: int
) -> None:
    manifest = stored_manifest(store, tree_files())
    tree = materialize._Tree.of(manifest, parts=parts, linking=linking)
    assert len(tree.tasks) > 1
    made: list[str] = list(tree.spine)
    own_entries: list[str] = []
    for _load, task in tree.tasks:
        for top, whole in task:
            own_entries.append(top)
            if not whole:
                continue
            pending = [top]
            while pending:  # as a task makes them: each one's parent first
                rel = pending.pop()
                parent = rel.rpartition("/")[0]
                assert parent == "" or parent in tree.spine or parent in made
                made.append(rel)
                if rel != top:
                    own_entries.append(rel)
                pending.extend(tree.children.get(rel, ()))
    assert sorted(made) == tree.dirs  # each directory exactly once
    assert len(own_entries) == len(set(own_entries))  # each directory's entries by one unit
    assert set(tree.files) | set(tree.links) <= set(own_entries)
    assert (tree.firsts, tree.duplicates) == materialize.unique_files(manifest)  # what plan_transfer counts
    firsts = {e.path for files in tree.files.values() for e in files}
    assert firsts == {e.path for e in tree.firsts}
    assert len(tree.firsts) + len(tree.duplicates) == sum(1 for _ in manifest.files())
    assert {dup.path.rpartition("/")[0] for dup, _first in tree.duplicates} == tree.later
    mine, theirs = tree.halves()
    assert sorted(map(id, mine + theirs)) == sorted(id(task) for _, task in tree.tasks)
    weight = {id(task): load for load, task in tree.tasks}
    assert abs(sum(weight[id(t)] for t in mine) - sum(weight[id(t)] for t in theirs)) <= max(weight.values())


# -- threads or a forked process give the same release -----------------------------------------------------

SCRIPT = """
out = {}
for fork in (True, False):
    assert threading.active_count() == 1
    base = Path(args["base"]) / ("fork" if fork else "threads")
    base.mkdir()
    table = StatTable()
    one = build_release(store, first, base / "r1", table, fork=fork)
    table.record(os.lstat(base / "r1"), DIR_SHA)
    two = build_release(store, second, base / "r2", table, reuse_root=base / "r1", fork=fork)
    table.record(os.lstat(base / "r2"), DIR_SHA)
    out[str(fork)] = {
        "first": one.to_json(),
        "second": two.to_json(),
        "r1_by_stat": check_release(base / "r1", first, table, rehash=False).by_stat,
        "r2_by_stat": check_release(base / "r2", second, table, rehash=False).by_stat,
        "threads": len(os.listdir(f"/proc/{os.getpid()}/task")),
    }
    try:
        os.waitpid(-1, os.WNOHANG)
        out[str(fork)]["children"] = "some"
    except ChildProcessError:
        out[str(fork)]["children"] = "none"
store.close()
print(json.dumps(out))
"""


# What every script starts with: the imports it may need, the store and the manifests ``args`` names.
SCRIPT_PRELUDE = """
import errno, json, os, sys, threading, time
from pathlib import Path
from graven.deploy import materialize
from graven.deploy.materialize import build_release, check_release, plan_transfer, remove_tree
from graven.deploy.statdb import DIR_SHA, StatTable
from graven.errors import BackendError, IntegrityError
from graven.model.digest import Digest
from graven.model.manifest import TreeManifest
from graven.store.local import LocalStore

args = json.loads(sys.stdin.read())
store = LocalStore.at(Path(args["store"]))
first = TreeManifest.from_bytes(store.read(Digest.parse(args["first"])))
if "second" in args:
    second = TreeManifest.from_bytes(store.read(Digest.parse(args["second"])))
"""


def run_script(script: str, args: dict[str, Any]) -> Any:
    """Run :data:`SCRIPT_PRELUDE` and ``script`` in a new interpreter (no other thread alive, as in
    the command line)."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_PRELUDE + textwrap.dedent(script)],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def digest_text(manifest: TreeManifest) -> str:
    return str(manifest.digest)


def script_world(
    store: LocalStore, tmp_path: Path, versions: int = 2, **extra: str
) -> tuple[dict[str, Any], list[TreeManifest]]:
    """The arguments of a script (:func:`run_script`): the manifests of ``tree_files(1..versions)``
    stored with their objects (as "first", "second"), an empty ``base`` directory, and ``extra``."""
    manifests = [stored_manifest(store, tree_files(version)) for version in range(1, versions + 1)]
    with store.batch() as batch:  # the manifests, for the script to read
        for manifest in manifests:
            batch.add(manifest.to_bytes())
    base = tmp_path / "out"
    base.mkdir()
    names = dict(zip(("first", "second"), map(digest_text, manifests), strict=False))
    return {"store": str(store.root), **names, "base": str(base), **extra}, manifests


def test_a_forked_build_and_a_threaded_one_give_the_same_release(tmp_path: Path, store: LocalStore) -> None:
    args, (first, second) = script_world(store, tmp_path)
    base = Path(args["base"])
    out = run_script(SCRIPT, args)
    assert out["True"]["first"] == out["False"]["first"]
    assert out["True"]["second"] == out["False"]["second"]
    stats = out["True"]["second"]
    assert stats["copied"] == 3 and stats["linked"] == stats["files"] - 3
    for mode in ("True", "False"):
        assert out[mode]["r1_by_stat"] and out[mode]["r2_by_stat"]
        assert out[mode]["threads"] == 1  # the pool is gone
        assert out[mode]["children"] == "none"  # and the forked process too
    store_inodes = inodes(store.root)
    for mode in ("fork", "threads"):
        assert tree_problems(base / mode / "r1", first) == []
        assert tree_problems(base / mode / "r2", second) == []
        assert not (inodes(base / mode / "r1") | inodes(base / mode / "r2")) & store_inodes
        for dirpath, dirs, _names in os.walk(base / mode / "r2"):
            for name in dirs:
                assert os.lstat(os.path.join(dirpath, name)).st_mode & 0o777 == DIR_MODE
        unchanged = "pkg6/mod2/part1/f4.py"
        assert (
            os.lstat(base / mode / "r1" / unchanged).st_ino == os.lstat(base / mode / "r2" / unchanged).st_ino
        )
        changed = "pkg1/mod0/part0/f0.py"
        assert os.lstat(base / mode / "r1" / changed).st_ino != os.lstat(base / mode / "r2" / changed).st_ino


# -- failures half-way ----------------------------------------------------------------------------------


def test_a_failure_in_a_linking_thread_stops_every_thread(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = stored_manifest(store, tree_files(1))
    second = stored_manifest(store, tree_files(2))
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table, fork=False)
    table.record(os.lstat(tmp_path / "r1"), DIR_SHA)
    real_lstat = os.lstat
    calls = {"links": 0}
    threads_before = threading.active_count()

    def failing_lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # the stat of a new link, on a pool thread, half-way through the release
        if "/r2/" in str(path) and threading.current_thread() is not threading.main_thread():
            calls["links"] += 1
            if calls["links"] == 200:
                raise OSError(errno.EIO, "Input/output error", str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", failing_lstat)
    with pytest.raises(BackendError, match="Input/output error"):
        build_release(store, second, tmp_path / "r2", table, reuse_root=tmp_path / "r1", fork=False)
    monkeypatch.setattr(os, "lstat", real_lstat)
    assert threading.active_count() == threads_before  # every thread has stopped
    seen = listing(tmp_path / "r2")
    time.sleep(0.05)
    assert listing(tmp_path / "r2") == seen  # and nothing writes into the release any more
    remove_tree(tmp_path / "r2", table)
    # the live release is intact (the links it lost changed its files' ctime: they are hashed again)
    assert check_release(tmp_path / "r1", first, table).ok
    assert tree_problems(tmp_path / "r1", first) == []
    build_release(store, second, tmp_path / "r2", table, reuse_root=tmp_path / "r1", fork=False)
    assert tree_problems(tmp_path / "r2", second) == []


FAILING_SCRIPT = """
base = Path(args["base"])
table = StatTable()
build_release(store, first, base / "r1", table, fork=True)
table.record(os.lstat(base / "r1"), DIR_SHA)
parent = os.getpid()
real_mkdir = os.mkdir
count = [0]

def failing_mkdir(path, *rest, **kwargs):
    # half-way through the part of one of the two processes
    if "/r2/" in str(path) and (os.getpid() == parent) == (args["who"] == "parent"):
        count[0] += 1
        if count[0] == 40:
            if args["who"] == "parent":
                time.sleep(0.05)  # the child is busy meanwhile
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real_mkdir(path, *rest, **kwargs)

os.mkdir = failing_mkdir
out = {}
try:
    build_release(store, second, base / "r2", table, reuse_root=base / "r1", fork=True)
except BackendError as exc:
    out["error"] = str(exc)
os.mkdir = real_mkdir
try:
    os.waitpid(-1, os.WNOHANG)
    out["children"] = "some"
except ChildProcessError:
    out["children"] = "none"
def listing():
    return sorted((d, sorted(n)) for d, _, n in os.walk(base / "r2"))
seen = listing()
time.sleep(0.1)
out["still"] = listing() == seen
remove_tree(base / "r2", table)
out["r1_ok"] = check_release(base / "r1", first, table).ok
build_release(store, second, base / "r2", table, reuse_root=base / "r1", fork=True)
store.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("who", ["child", "parent"])
def test_a_failure_in_either_process_stops_both(tmp_path: Path, store: LocalStore, who: str) -> None:
    args, (_, second) = script_world(store, tmp_path, who=who)
    base = Path(args["base"])
    out = run_script(FAILING_SCRIPT, args)
    assert "No space left on device" in out.get("error", ""), out
    assert out["children"] == "none" and out["still"] and out["r1_ok"]
    assert tree_problems(base / "r2", second) == []


def test_without_a_process_to_fork_threads_do_it_all(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = stored_manifest(store, tree_files(1))
    second = stored_manifest(store, tree_files(2))

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table, fork=True)
    table.record(os.lstat(tmp_path / "r1"), DIR_SHA)
    stats = build_release(store, second, tmp_path / "r2", table, reuse_root=tmp_path / "r1", fork=True)
    assert stats.copied == 3
    assert tree_problems(tmp_path / "r1", first) == [] and tree_problems(tmp_path / "r2", second) == []


def test_a_live_file_replaced_between_the_check_and_the_link_is_copied(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tree_files(1)
    first = stored_manifest(store, files)
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table, fork=False)
    victim = tmp_path / "r1" / "pkg4/mod1/part2/f3.py"
    real_link = os.link

    def swapping_link(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(src) == str(victim):  # after the stat check: another file takes its place
            os.chmod(victim.parent, 0o755)
            other = victim.with_name("evil")
            other.write_bytes(b"evil\n")
            other.chmod(0o444)
            os.rename(other, victim)
            os.chmod(victim.parent, 0o555)
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", swapping_link)
    stats = build_release(store, first, tmp_path / "r2", table, reuse_root=tmp_path / "r1", fork=False)
    assert stats.copied == 1
    assert tree_problems(tmp_path / "r2", first) == []
    assert (tmp_path / "r2" / "pkg4/mod1/part2/f3.py").read_bytes() == files["pkg4/mod1/part2/f3.py"]


def test_without_the_right_to_write_into_read_only_directories_they_are_sealed_at_the_end(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(materialize, "_can_override_permissions", lambda: False)
    first = stored_manifest(store, tree_files(1))
    second = stored_manifest(store, tree_files(2))
    table = StatTable()
    build_release(store, first, tmp_path / "r1", table, fork=False)
    table.record(os.lstat(tmp_path / "r1"), DIR_SHA)
    build_release(store, second, tmp_path / "r2", table, reuse_root=tmp_path / "r1", fork=False)
    table.record(os.lstat(tmp_path / "r2"), DIR_SHA)
    for root in (tmp_path / "r1", tmp_path / "r2"):
        assert os.lstat(root).st_mode & 0o777 == DIR_MODE
        for dirpath, dirs, _names in os.walk(root):
            for name in dirs:
                assert os.lstat(os.path.join(dirpath, name)).st_mode & 0o777 == DIR_MODE
    assert check_release(tmp_path / "r1", first, table, rehash=False).by_stat
    assert check_release(tmp_path / "r2", second, table, rehash=False).by_stat


# -- a deployment that fails half-way -----------------------------------------------------------------


def test_a_deploy_failing_half_way_in_a_linking_thread_leaves_no_partial_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path, monkeypatch, env_toml("app", {"staging": {"path": "staging"}}))
    try:
        many = {f"lib/m{i // 20}/f{i}.py": f"{i}\n" for i in range(400)}
        world.commit(many)
        v1 = world.build()
        assert world.deploy(v1, "staging").ok
        world.commit({"lib/m3/f61.py": "changed\n"})
        v2 = world.build()
        real_lstat = os.lstat
        calls = {"n": 0}

        def failing_lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if "/.tmp-" in str(path) and threading.current_thread() is not threading.main_thread():
                calls["n"] += 1
                if calls["n"] == 150:
                    raise OSError(errno.EIO, "Input/output error", str(path))
            return real_lstat(path, *args, **kwargs)

        monkeypatch.setattr(os, "lstat", failing_lstat)
        with pytest.raises(BackendError, match="Input/output error"):
            world.deploy(v2, "staging")
        monkeypatch.setattr(os, "lstat", real_lstat)
        assert calls["n"] >= 150
        releases = world.env_dir("staging") / "releases"
        assert world.live("staging") == v1
        assert sorted(os.listdir(releases)) == [v1.removeprefix("sha256:")]  # nothing partial is left
        assert tree_problems(world.env_dir("staging") / "current", world.manifest(v1)) == []
        result = world.deploy(v2, "staging")
        assert result.ok and world.live("staging") == v2
        assert (
            result.stats["copied"] >= 1
        )  # (and the live files the failed one had linked: their ctime changed)
        assert tree_problems(world.env_dir("staging") / "current", world.manifest(v2)) == []
        assert not inodes(releases) & inodes(world.home / "objects")
    finally:
        world.close()


DAMAGED_SCRIPT = """
parent = os.getpid()
real = LocalStore.read_many

def damaged(self, digests):
    if (os.getpid() == parent) == (args["who"] == "parent"):
        raise IntegrityError("object sha256:0123: content hashes to something else")
    return real(self, digests)

LocalStore.read_many = damaged
out = {}
try:
    build_release(store, first, Path(args["base"]) / "r1", StatTable(), fork=True)
except IntegrityError as exc:
    out["integrity"] = str(exc)
except BackendError as exc:
    out["backend"] = str(exc)
try:
    os.waitpid(-1, os.WNOHANG)
    out["children"] = "some"
except ChildProcessError:
    out["children"] = "none"
store.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("who", ["child", "parent"])
def test_a_damaged_object_read_by_either_process_is_an_integrity_error(
    tmp_path: Path, store: LocalStore, who: str
) -> None:
    # each process writes the files of its own directories: the child's failure to read a store
    # object must reach the caller as the IntegrityError it is (exit 1, audited), not as a crash
    args, _ = script_world(store, tmp_path, versions=1, who=who)
    out = run_script(DAMAGED_SCRIPT, args)
    assert out.get("integrity") == "object sha256:0123: content hashes to something else", out
    assert out["children"] == "none"


def test_a_forked_first_release_copies_in_both_processes(tmp_path: Path, store: LocalStore) -> None:
    first = stored_manifest(store, tree_files(1))
    stats = build_release(store, first, tmp_path / "r1", StatTable(), fork=True)
    assert stats.copied + stats.linked == len(list(first.files()))
    assert stats.copied_bytes > 0
    assert tree_problems(tmp_path / "r1", first) == []


NEXT_FAILING_SCRIPT = """
base = Path(args["base"])
table = StatTable()
build_release(store, first, base / "r1", table, fork=True)
table.record(os.lstat(base / "r1"), DIR_SHA)
linkable = plan_transfer(second, table, reuse_root=base / "r1").linked
real = materialize._write_file

def failing(root, entry, data, store, *, fix_mode):
    if "/r2" in root:
        raise OSError(errno.ENOSPC, "No space left on device", entry.path)
    return real(root, entry, data, store, fix_mode=fix_mode)

materialize._write_file = failing
out = {}
try:
    build_release(store, second, base / "r2", table, reuse_root=base / "r1", fork=True)
except OSError as exc:
    out["error"] = str(exc)
except Exception as exc:
    out["error"] = str(exc)
materialize._write_file = real
remove_tree(base / "r2", table)
out["r1_by_stat"] = check_release(base / "r1", first, table, rehash=False).by_stat
out["linkable"] = [linkable, plan_transfer(second, table, reuse_root=base / "r1").linked]
store.close()
print(json.dumps(out))
"""


def test_a_next_release_failing_while_copying_keeps_the_live_files_records(
    tmp_path: Path, store: LocalStore
) -> None:
    # the live files linked before the failure changed ctime: their records must be refreshed, or the
    # next deploy copies everything and drift re-hashes the live release
    args, _ = script_world(store, tmp_path)
    out = run_script(NEXT_FAILING_SCRIPT, args)
    assert "No space left on device" in out.get("error", ""), out
    assert out["r1_by_stat"], out
    assert out["linkable"][0] == out["linkable"][1], out


def test_a_forked_first_release_shows_progress_as_the_parent_writes(
    tmp_path: Path, store: LocalStore
) -> None:
    first = stored_manifest(store, tree_files(1))
    seen: list[tuple[int, int]] = []
    build_release(
        store, first, tmp_path / "r1", StatTable(), fork=True, progress=lambda d, t: seen.append((d, t))
    )
    total = seen[-1][1]
    assert seen[-1] == (total, total)
    assert all(done <= total for done, _ in seen)
    assert len(seen) >= 3  # not only at the end


# -- the check by stat, shared with a forked process -----------------------------------------------------

CHECK_SCRIPT = """
from graven.deploy.materialize import _check_by_stat
from graven.model.manifest import FileEntry
base = Path(args["base"])
table = StatTable()
build_release(store, first, base / "r1", table, fork=True)
root = base / "r1"
table.record(os.lstat(root), DIR_SHA)
entries = first.entries
half = len(entries) // 2
files = [e for e in entries if isinstance(e, FileEntry)]
early = next(e for e in files if entries.index(e) < half)
late = [e for e in files if entries.index(e) >= half][-1]
late_dir = late.path.rpartition("/")[0]
assert late_dir and all(not e.path.startswith(late_dir + "/") for e in entries[:half])

def answers():
    return [_check_by_stat(root, first, table, fork=fork) for fork in (True, False)]

out = {"intact": answers()}
for name, entry in (("early file", early), ("late file", late)):
    path = root / entry.path
    os.chmod(path, os.lstat(path).st_mode)  # the same mode: only the ctime moves
    out[name] = answers()
    table.record(os.lstat(path), entry.sha256)
    out[name + " recorded again"] = answers()
(root / late_dir / "extra").write_bytes(b"x")  # a new entry: the directory's ctime moves
out["late directory"] = answers()
try:
    os.waitpid(-1, os.WNOHANG)
    out["children"] = "some"
except ChildProcessError:
    out["children"] = "none"

def no_fork():
    raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

real_fork, os.fork = os.fork, no_fork
out["without a process to fork"] = answers()
os.fork = real_fork
store.close()
print(json.dumps(out))
"""


def test_a_check_by_stat_shared_with_a_forked_process_sees_a_change_in_either_half(
    tmp_path: Path, store: LocalStore
) -> None:
    """The forked process checks the second half of the entries (the directories above them too): a
    change there is seen as surely as one in the parent's half, and the process is always reaped."""
    args, _ = script_world(store, tmp_path, versions=1)
    out = run_script(CHECK_SCRIPT, args)
    assert out.pop("children") == "none"
    assert out == {
        "intact": [True, True],
        "early file": [False, False],
        "early file recorded again": [True, True],
        "late file": [False, False],
        "late file recorded again": [True, True],
        "late directory": [False, False],
        "without a process to fork": [False, False],  # checked whole, the change still seen
    }


INTERRUPTED_CHECK_SCRIPT = """
from graven.deploy.materialize import _check_by_stat
base = Path(args["base"])
table = StatTable()
build_release(store, first, base / "r1", table, fork=True)
table.record(os.lstat(base / "r1"), DIR_SHA)
real_waitpid = os.waitpid
calls = []

def interrupted_waitpid(pid, options):
    calls.append(pid)
    if len(calls) == 1:  # Ctrl-C while the parent waits for the child's answer
        raise KeyboardInterrupt
    return real_waitpid(pid, options)

os.waitpid = interrupted_waitpid
out = {}
try:
    _check_by_stat(base / "r1", first, table, fork=True)
    out["raised"] = False
except KeyboardInterrupt:
    out["raised"] = True
os.waitpid = real_waitpid
try:
    os.waitpid(-1, os.WNOHANG)
    out["children"] = "some"
except ChildProcessError:
    out["children"] = "none"
store.close()
print(json.dumps(out))
"""


def test_a_check_by_stat_interrupted_while_it_waits_for_the_forked_process_still_reaps_it(
    tmp_path: Path, store: LocalStore
) -> None:
    """Ctrl-C (or SIGTERM) while the parent waits for the forked process's answer: the interrupt goes
    on, and the process is not left behind (killed and reaped, as when the parent's own half fails)."""
    args, _ = script_world(store, tmp_path, versions=1)
    out = run_script(INTERRUPTED_CHECK_SCRIPT, args)
    assert out == {"raised": True, "children": "none"}
