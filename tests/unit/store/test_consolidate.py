"""Packs are merged as they accumulate (a review measured ~20 us per pack on every command, 2,000
builds: ~85 ms each, and nothing ever merged them): past :data:`CONSOLIDATE_AT` packs a batch's commit
merges the small ones, as ``git repack --geometric`` does. Every object stays readable and verified,
by a fresh store and by one that loaded the old indexes before they went; a damaged pack is not
merged away; one process merges at a time."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.errors import IntegrityError
from graven.model.digest import Digest
from graven.store import local
from graven.store.local import LocalStore, rollup


def _packs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "pack").iterdir() if p.suffix in (".pack", ".idx"))


def _batches(store: LocalStore, count: int, *, start: int = 0) -> dict[Digest, bytes]:
    made: dict[Digest, bytes] = {}
    for i in range(start, start + count):
        with store.batch() as batch:
            for j in range(3):
                blob = f"batch {i} object {j} ".encode() * (5 + j)
                made[batch.add(blob)] = blob
    return made


# -- the choice (pure) -----------------------------------------------------------------------------


def test_rollup_merges_what_breaks_the_progression() -> None:
    assert rollup([]) == 0
    assert rollup([100]) == 0
    assert rollup([1, 2, 4, 8, 16]) == 0  # already geometric
    assert rollup([1, 1]) == 2
    assert rollup([10] * 15 + [16_000_000]) == 15  # the small ones, never the big one
    assert rollup([5, 5, 5, 100, 10_000]) == 3
    assert rollup([5, 5, 5, 20, 10_000]) == 4  # 15 merged would be under 2 x 20: it joins


@given(st.lists(st.integers(min_value=1, max_value=10**9), max_size=40))
def test_rollup_leaves_a_geometric_progression(sizes: list[int]) -> None:
    merged = rollup(sizes)
    ordered = sorted(sizes)
    assert merged == 0 or 2 <= merged <= len(ordered)
    # the packs left after merging (the merged one below them) form a progression
    left = [sum(ordered[:merged]), *ordered[merged:]] if merged else ordered
    assert all(b >= 2 * a for a, b in itertools.pairwise(left))


# -- the store ---------------------------------------------------------------------------------------


def test_many_batches_stay_few_packs_and_every_object_reads(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    made = _batches(store, local.CONSOLIDATE_AT + 10)
    packs = len(_packs(root)) // 2
    assert packs <= local.CONSOLIDATE_AT
    assert not list((root / "tmp").iterdir())
    fresh = LocalStore.at(root)
    for digest, blob in made.items():
        assert fresh.read(digest) == blob
        assert store.read(digest) == blob
        fresh.verify(digest)
    assert list(fresh.read_many(list(made))) == list(made.values())
    assert fresh.missing(d.hex for d in made) == set()
    assert fresh.damage() == []
    store.close()
    fresh.close()


def test_a_store_that_loaded_the_old_indexes_reads_through_the_merge(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    writer = LocalStore.at(root)
    made = _batches(writer, local.CONSOLIDATE_AT)  # not merged yet: exactly at the limit
    old = LocalStore.at(root)
    old._packed()  # the whole index of the packs as they are now
    pointed = LocalStore.at(root)
    pointed._point_lookup(next(iter(made)).raw)  # the index files mapped
    made |= _batches(writer, 1, start=100)  # one more: the commit merges
    assert len(_packs(root)) // 2 < local.CONSOLIDATE_AT
    for reader in (old, pointed):
        for digest, blob in made.items():
            assert reader.read(digest) == blob
        assert reader.damage() == []  # a merged pack is no damage
    for store in (writer, old, pointed):
        store.close()


def test_a_pack_with_a_damaged_record_is_not_merged_away(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    first = _batches(store, 1)
    (pack,) = [p for p in (root / "pack").iterdir() if p.suffix == ".pack"]
    damaged = bytearray(pack.read_bytes())
    damaged[-3] ^= 0xFF  # the payload of the last record
    pack.chmod(0o644)
    pack.write_bytes(bytes(damaged))
    _batches(store, local.CONSOLIDATE_AT + 2, start=1)
    assert pack.exists() and pack.with_suffix(".idx").exists()
    fresh = LocalStore.at(root)
    bad = [d for d in first if not _reads(fresh, d)]
    assert len(bad) == 1  # still damaged (and named by verify), the other objects still read
    store.close()
    fresh.close()


def _reads(store: LocalStore, digest: Digest) -> bool:
    try:
        store.read(digest)
    except IntegrityError:
        return False
    return True


def test_one_process_merges_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    _batches(store, local.CONSOLIDATE_AT)
    fd = os.open(root / "consolidate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is at it (a batch would wait to publish)
        assert store.consolidate(above=1) == 0
        assert len(_packs(root)) // 2 == local.CONSOLIDATE_AT
    finally:
        os.close(fd)
    _batches(store, 2, start=50)  # the second commit merges
    assert len(_packs(root)) // 2 < local.CONSOLIDATE_AT
    store.close()


@pytest.mark.parametrize("above", [0, 1])
def test_consolidate_on_demand_keeps_the_delta_records(tmp_path: Path, above: int) -> None:
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    base = b"".join(f"entry {i}\n".encode() for i in range(3000))
    with store.batch() as batch:
        first = batch.add(base, pack=True)
    (pack,) = [p for p in (root / "pack").iterdir() if p.suffix == ".pack"]
    with store.batch() as batch:  # as large as the first pack: the two are no progression
        second = batch.add(base + b"entry 3000\n", delta_base=first, pack=True)
        batch.add(os.urandom(pack.stat().st_size))
    assert store.consolidate(above=above) == 2
    fresh = LocalStore.at(root)
    assert fresh.read(second) == base + b"entry 3000\n"
    assert fresh.read(first) == base
    location = fresh._packed().where(second.raw)
    assert location is not None and location.codec == local.CODEC_ZSTD_DELTA  # copied, not re-encoded
    assert len(_packs(root)) == 2
    store.close()
    fresh.close()


def test_a_merge_that_gives_a_chosen_packs_bytes_keeps_that_pack(tmp_path: Path) -> None:
    """Two builds that share a file, each with the index it loaded before the other committed, make
    packs B=[x] and A=[x, y]; merged, they give A's very bytes, and the merge removed A as a source:
    x and y were gone (a review's find). The same happens to a merge killed before it removed its
    sources, merged again with them."""
    root = tmp_path / "objects"
    first, second = LocalStore.at(root), LocalStore.at(root)
    second._packed()
    x, y = os.urandom(200), os.urandom(200)
    with first.batch() as batch:
        dx = batch.add(x)
    with second.batch() as batch:
        batch.add(x)
        dy = batch.add(y)
    assert len(_packs(root)) == 4
    assert LocalStore.at(root).consolidate(above=1) == 1  # B only: A holds everything already
    fresh = LocalStore.at(root)
    assert (fresh.read(dx), fresh.read(dy)) == (x, y)
    for store in (first, second, fresh):
        store.close()


def test_a_merge_killed_before_it_removed_its_sources_loses_nothing_when_merged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    made = _batches(store, 3)

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt  # right after the merged pack was published

    with monkeypatch.context() as patch:
        patch.setattr(Path, "unlink", killed)
        with pytest.raises(KeyboardInterrupt):
            LocalStore.at(root).consolidate(above=1)
    assert len(_packs(root)) == 8  # the three sources and the merged pack
    assert LocalStore.at(root).consolidate(above=1) == 3
    fresh = LocalStore.at(root)
    for digest, blob in made.items():
        assert fresh.read(digest) == blob
    assert len(_packs(root)) == 2
    store.close()
    fresh.close()


def test_a_long_lived_reader_lets_go_of_merged_packs(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    writer = LocalStore.at(root)
    made = _batches(writer, 4)
    reader = LocalStore.at(root)
    for digest in made:
        reader.read(digest)  # every pack opened
    assert len(reader._fds) == 4
    assert LocalStore.at(root).consolidate(above=1) == 4
    reader.refresh_index()
    assert not reader._fds  # the merged-away packs' descriptors are closed (their space is freed)
    for digest, blob in made.items():
        assert reader.read(digest) == blob
    assert reader.damage() == []
    writer.close()
    reader.close()


def test_a_pack_left_without_its_index_is_removed_a_day_later(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    _batches(store, 2)
    orphan = root / "pack" / ("pack-" + "ab" * 32 + ".pack")
    orphan.write_bytes(local.PACK_MAGIC)
    fresh = root / "pack" / ("pack-" + "cd" * 32 + ".pack")
    fresh.write_bytes(local.PACK_MAGIC)
    old = time.time() - local.STALE_TMP_SECONDS - 60
    os.utime(orphan, (old, old))
    store.consolidate(above=0)
    assert not orphan.exists() and fresh.exists()
    store.close()


def test_readers_in_other_threads_never_miss_an_object_while_packs_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review ran readers in threads of one store while batches merged packs: descriptors closed
    under them were soon other files' (a map past that file's end: SIGBUS), and reads reported
    present objects missing. Every read must succeed, every time."""
    import random
    import threading

    monkeypatch.setattr(local, "CONSOLIDATE_AT", 3)
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    made = list(_batches(store, 12).items())
    stop = threading.Event()
    errors: list[str] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        turn = 0
        while not stop.is_set():
            digest, blob = made[rnd.randrange(len(made))]
            try:
                if turn % 3 == 0:
                    got = store.read(digest)
                elif turn % 3 == 1:
                    got = b"".join(store.read_many([digest]))
                else:
                    assert store.has(digest)
                    got = blob
                if got != blob:
                    errors.append(f"wrong bytes for {digest}")
            except Exception as exc:  # any failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")
            turn += 1

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2.0
    batch = 100
    while time.monotonic() < deadline:
        made.extend(_batches(store, 1, start=batch).items())  # each commit may merge packs
        batch += 1
    stop.set()
    for thread in threads:
        thread.join()
    store.close()
    assert errors == []


def test_a_reader_holding_the_table_a_merge_dropped_never_empties_the_new_one(tmp_path: Path) -> None:
    """A reader took the table, a merge in another thread reset it, and the reader then loaded every
    index into the dropped table: marked seen, they were never loaded into the new one, and the
    store reported every packed object missing from then on (a review's find)."""
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    made = _batches(store, 3)
    old = store._packed()  # a reader's table ...
    store._reset_index(set())  # ... dropped by a merge in another thread ...
    with store._lock:
        store._load_new_indexes(old, force=True)  # ... and the reader goes on loading into it
    assert all(store.has(digest) for digest in made)
    assert all(store.read(digest) == blob for digest, blob in made.items())
    store.close()


def test_descriptors_of_merged_away_packs_are_closed_once_no_read_uses_them(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    writer = LocalStore.at(root)
    reader = LocalStore.at(root)
    made: dict[Digest, bytes] = {}
    for round_ in range(30):
        made |= _batches(writer, 1, start=round_)
        for digest in made:
            reader.read(digest)
        writer.consolidate(above=2)
    reader.refresh_index()
    for digest, blob in made.items():
        assert reader.read(digest) == blob
    assert not reader._retired_fds
    assert len(reader._fds) <= len(_packs(root)) // 2  # only packs that exist are open
    writer.close()
    reader.close()


def test_a_batch_whose_identical_pack_is_merged_away_as_it_commits_leaves_no_orphan_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches with the same new objects make the same pack; the second finds it published and
    drops its copy, and a merge then removed that pack before the second renamed its index into place:
    an index without its pack was left, which every missing-object error named as damage (a review
    found it in the code)."""
    root = tmp_path / "objects"
    z = os.urandom(300)
    with LocalStore.at(root).batch() as batch:
        dz = batch.add(z)
    first, second = LocalStore.at(root), LocalStore.at(root)
    second._packed()  # loaded before the first commits: it writes x again
    x = os.urandom(300)
    with first.batch() as batch:
        dx = batch.add(x)
    real_hold = local._merges_held
    merged: list[int] = []

    def hold(store: LocalStore) -> contextlib.AbstractContextManager[None]:
        # the second batch found its pack published and is about to take the shared hold under
        # which it renames its index into place: a merge gets there first
        merged.append(LocalStore.at(root).consolidate(above=1))
        return real_hold(store)

    with monkeypatch.context() as patch:
        patch.setattr(local, "_merges_held", hold)
        with second.batch() as batch:
            assert batch.add(x) == dx
    assert merged == [2]  # the first batch's pack and z's went into one
    names = _packs(root)
    assert [n for n in names if n.endswith(".idx") and f"{n[:-4]}.pack" not in names] == []
    fresh = LocalStore.at(root)
    assert (fresh.read(dx), fresh.read(dz)) == (x, z)
    for store in (first, second, fresh):
        store.close()


def test_a_batch_publishing_its_pack_as_a_merge_removes_the_identical_one_leaves_no_orphan_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches with the same new objects make the same pack. The second found no pack of that name;
    the first then published it, and a merge took it and removed its index; the second renamed its own
    pack and index into place and found the pack there, and the merge then removed that pack: an index
    whose pack is missing stayed for good (every missing-object error named it as damage). A batch now
    renames its pack and its index under a shared hold of the merge lock, so no merge removes between."""
    root = tmp_path / "objects"
    with LocalStore.at(root).batch() as batch:
        dz = batch.add(z := os.urandom(300))  # a second pack: the merge has two to merge
    before = set(_packs(root))
    first, second = LocalStore.at(root), LocalStore.at(root)
    x = os.urandom(300)
    real_rename, real_unlink = os.rename, Path.unlink
    at_rename, go = threading.Event(), threading.Event()
    published: list[str] = []

    def rename(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if threading.current_thread() is committer and str(dst).endswith(".pack"):
            at_rename.set()  # the second batch found no such pack: it renames its own now
            go.wait(10)
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    def unlink(path: Path, missing_ok: bool = False) -> None:
        real_unlink(path, missing_ok=missing_ok)
        if path.name in published:  # the merge removed the first batch's index, not yet its pack
            go.set()
            committer.join(10)

    def commit_second() -> None:
        with second.batch() as batch:
            batch.add(x)

    committer = threading.Thread(target=commit_second)
    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", rename)
        patch.setattr(Path, "unlink", unlink)
        committer.start()
        assert at_rename.wait(10)
        with first.batch() as batch:
            dx = batch.add(x)
        published.extend(n for n in set(_packs(root)) - before if n.endswith(".idx"))
        LocalStore.at(root).consolidate(above=1)
        go.set()
        committer.join(10)
    assert not committer.is_alive()
    names = _packs(root)
    assert [n for n in names if n.endswith(".idx") and f"{n[:-4]}.pack" not in names] == []
    fresh = LocalStore.at(root)
    assert (fresh.read(dx), fresh.read(dz)) == (x, z)
    assert fresh.damage() == []
    for store in (first, second, fresh):
        store.close()


def test_a_pack_sealed_a_day_before_its_batch_commits_is_not_taken_for_an_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge removes a pack without its index once its mtime is a day old; a batch renames its pack
    a moment before its index, and a long one (an import through a slow pipe) seals a pack long before
    it commits: a merge at that moment removed the pack just published."""
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    real_chmod, real_rename = os.chmod, os.rename
    old = time.time() - 2 * local.STALE_TMP_SECONDS

    def chmod(path: object, mode: int, *args: object, **kwargs: object) -> None:
        real_chmod(path, mode, *args, **kwargs)  # type: ignore[arg-type]
        sealed = Path(str(path))
        if sealed.parent.name == "tmp" and sealed.name.startswith("pack-"):  # sealed two days ago
            os.utime(sealed, (old, old))

    def rename(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if str(dst).endswith(".idx"):  # another process merges between the two renames
            LocalStore.at(root)._remove_orphan_packs()
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    blob = os.urandom(300)
    with monkeypatch.context() as patch:
        patch.setattr(os, "chmod", chmod)
        patch.setattr(os, "rename", rename)
        with store.batch() as batch:
            digest = batch.add(blob)
    fresh = LocalStore.at(root)
    assert fresh.read(digest) == blob
    for each in (store, fresh):
        each.close()


def test_a_store_read_that_the_system_refuses_says_why_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors, the error was "cannot read X: [Errno 24] Too many open files: 'X'"."""
    import errno

    from graven.errors import BackendError

    store = LocalStore.at(tmp_path / "objects")
    digest = store.put(b"a loose object\n")
    path = store.loose_path(digest)

    def refused(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(self))

    monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(BackendError) as raised:
        store._read_loose(digest)
    store.close()
    assert str(raised.value) == f"cannot read {path}: Too many open files"


def _left_by_a_killed_batch(root: Path, monkeypatch: pytest.MonkeyPatch, blobs: list[bytes]) -> Path:
    """The pack file a batch of ``blobs`` killed between renaming its pack and its index leaves
    (without an index), two days old."""
    real_rename = os.rename

    def killed(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if str(dst).endswith(".idx"):
            raise KeyboardInterrupt  # killed between the two renames: the pack stays, its index not
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    store = LocalStore.at(root)
    before = set(_packs(root))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(os, "rename", killed)
        with store.batch() as batch:
            for blob in blobs:
                batch.add(blob)
    store.close()
    (orphan,) = [root / "pack" / n for n in set(_packs(root)) - before]
    assert orphan.suffix == ".pack"
    old = time.time() - 2 * local.STALE_TMP_SECONDS
    os.utime(orphan, (old, old))
    return orphan


def test_a_batch_that_finds_its_pack_left_by_a_killed_one_never_loses_it_to_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch killed between renaming its pack and its index leaves the pack without an index; the
    same batch again (the same import, retried a day later) makes the same pack, finds it there and
    drops its own copy. A merge then removing that day-old pack as an orphan, before the index was
    renamed into place, left a committed batch whose objects were in no pack (the artifact row would
    name missing objects): a batch now renames its index there under a shared hold of the merge lock."""
    root = tmp_path / "objects"
    with LocalStore.at(root).batch() as batch:
        batch.add(os.urandom(300))  # a pack with its index: the merge below has something to look at
    blobs = [f"imported object {i}".encode() * 10 for i in range(50)]
    orphan = _left_by_a_killed_batch(root, monkeypatch, blobs)  # retried two days later
    real_rename = os.rename
    merged: list[int] = []

    def racing(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if str(dst).endswith(".idx") and not merged:  # another process merges as the index goes in
            merged.append(LocalStore.at(root).consolidate(above=0))
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    store = LocalStore.at(root)
    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", racing)
        with store.batch() as batch:
            digests = [batch.add(blob) for blob in blobs]
    assert merged == [0]
    fresh = LocalStore.at(root)
    assert [fresh.read(digest) for digest in digests] == blobs
    assert orphan.exists() and orphan.with_suffix(".idx").exists()
    for each in (store, fresh):
        each.close()


# -- packs left without their index, in a store too small to merge -----------------------------------


def test_a_day_old_pack_without_its_index_goes_with_the_next_build_s_cleanup_in_a_small_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack left without its index (a batch killed between its two renames, a merge between its two
    removals) was removed only by a merge, which a store of 16 packs or fewer never makes: it kept the
    orphan's disk forever. The cleanup at a build's or import's start (clean_tmp) now removes a day-old
    one; a fresh one (a batch between its two renames now) and every pack with an index stay."""
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    made = _batches(store, 2)
    (root / "consolidate.lock").unlink()  # made by the batches, which publish their packs under it
    assert store.clean_tmp() == 0
    assert not (root / "consolidate.lock").exists()  # nothing to remove: no lock taken, nor made
    orphan = _left_by_a_killed_batch(root, monkeypatch, [b"killed batch %d" % i * 8 for i in range(20)])
    fresh = root / "pack" / ("pack-" + "cd" * 32 + ".pack")
    fresh.write_bytes(local.PACK_MAGIC)
    old = time.time() - 2 * local.STALE_TMP_SECONDS
    for name in _packs(root):  # the indexed packs are as old: an index, whatever its age, keeps its pack
        if root / "pack" / name != fresh:
            os.utime(root / "pack" / name, (old, old))
    indexed = [name for name in _packs(root) if root / "pack" / name not in (orphan, fresh)]
    assert len(indexed) == 4
    # a merge or a batch publishing a pack already there holds the lock: nothing removed, no wait
    for hold in (fcntl.LOCK_EX, fcntl.LOCK_SH):
        held = os.open(root / "consolidate.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(held, hold)
            assert store.clean_tmp() == 0
        finally:
            os.close(held)
        assert orphan.exists()
    assert store.clean_tmp() == 1
    assert not orphan.exists() and fresh.exists()
    assert _packs(root) == sorted([*indexed, fresh.name])
    reader = LocalStore.at(root)
    assert all(reader.read(digest) == blob for digest, blob in made.items())
    assert reader.damage() == []
    for each in (store, reader):
        each.close()


@pytest.mark.parametrize("when", ["between its look and its hold", "before its commit point", "after it"])
def test_a_batch_publishing_an_index_for_an_orphan_pack_is_never_harmed_by_the_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The cleanup of a build or an import runs while another batch (the killed one, retried two days
    later) finds its pack already there and renames its index in: at every point of that, the cleanup
    either removes the pack before the batch's shared hold (the batch then publishes its own copy) or
    removes nothing (the hold is taken, or the index is there); the batch's objects are never in no
    pack."""
    root = tmp_path / "objects"
    blobs = [f"retried object {i}".encode() * 10 for i in range(50)]
    orphan = _left_by_a_killed_batch(root, monkeypatch, blobs)
    real_hold, real_rename = local._merges_held, os.rename
    cleaned: list[int] = []

    def clean() -> None:  # another process's build starts
        cleaned.append(LocalStore.at(root).clean_tmp())

    def hold(store: LocalStore) -> contextlib.AbstractContextManager[None]:
        if when == "between its look and its hold":
            clean()
        return real_hold(store)

    def rename(src: object, dst: object, *args: object, **kwargs: object) -> None:
        commit_point = str(dst).endswith(".idx")
        if commit_point and when == "before its commit point":
            clean()
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        if commit_point and when == "after it":
            clean()

    store = LocalStore.at(root)
    with monkeypatch.context() as patch:
        patch.setattr(local, "_merges_held", hold)
        patch.setattr(os, "rename", rename)
        with store.batch() as batch:
            digests = [batch.add(blob) for blob in blobs]
    assert cleaned == [1 if when == "between its look and its hold" else 0]
    assert orphan.exists() and orphan.with_suffix(".idx").exists()  # the batch's own copy, or the one found
    fresh = LocalStore.at(root)
    assert [fresh.read(digest) for digest in digests] == blobs
    assert fresh.damage() == []
    assert LocalStore.at(root).clean_tmp() == 0
    for each in (store, fresh):
        each.close()


def test_the_cleanup_looks_again_under_the_lock_before_it_removes_a_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup finds a day-old pack without its index before it takes the lock (no lock on the
    common path); a batch that renames that pack's index in meanwhile must not lose it: what to remove
    is decided again under the lock."""
    root = tmp_path / "objects"
    blobs = [f"retried object {i}".encode() * 10 for i in range(50)]
    orphan = _left_by_a_killed_batch(root, monkeypatch, blobs)
    real_exclude = local._merges_excluded
    digests: list[Digest] = []

    def exclude(store: LocalStore) -> int | None:
        if not digests:  # the orphan was found: the killed import, retried, commits first
            with LocalStore.at(root).batch() as batch:
                digests.extend(batch.add(blob) for blob in blobs)
        return real_exclude(store)

    cleaner = LocalStore.at(root)
    with monkeypatch.context() as patch:
        patch.setattr(local, "_merges_excluded", exclude)
        assert cleaner.clean_tmp() == 0
    assert len(digests) == len(blobs)
    assert orphan.exists() and orphan.with_suffix(".idx").exists()
    fresh = LocalStore.at(root)
    assert [fresh.read(digest) for digest in digests] == blobs
    for each in (cleaner, fresh):
        each.close()


def test_a_store_that_commits_batch_after_batch_keeps_no_map_of_a_merged_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point lookups map the index files; a merge (or a refresh after one) put the maps it let go of
    aside, closed only with the store: a process committing batch after batch kept a map of every
    index file at every merge, those of indexes merged away holding their disk space."""
    monkeypatch.setattr(local, "CONSOLIDATE_AT", 3)
    monkeypatch.setattr(local, "_POINT_LOOKUPS", 10_000)  # a store large enough to serve them all
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    made: dict[Digest, bytes] = {}
    for round_ in range(20):
        made |= _batches(store, 1, start=round_)
        assert all(store.has(digest) for digest in made)  # by point lookups, maps made again
    assert store._index is None
    maps = [mapped for _pack, mapped in [*(store._point_maps or []), *store._retired_maps]]
    assert len([mapped for mapped in maps if not mapped.closed]) <= len(list((root / "pack").glob("*.idx")))
    assert all(store.read(digest) == blob for digest, blob in made.items())
    store.close()
