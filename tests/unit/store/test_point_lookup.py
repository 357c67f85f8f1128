"""Before a store loads its whole index, a few reads find their objects by binary search in the pack
index files: the same location the loaded index gives, nothing for what no pack holds, and every read
still verified."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graven.errors import IntegrityError
from graven.model.digest import Digest, sha256_digest
from graven.store import local
from graven.store.local import LocalStore


def _packed(root: Path, batches: list[list[bytes]]) -> list[Digest]:
    store = LocalStore.at(root)
    digests: list[Digest] = []
    for blobs in batches:
        with store.batch() as batch:
            digests.extend(batch.add(blob) for blob in blobs)
    store.close()
    return digests


blobs = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(blobs, min_size=1, max_size=4), absent=st.lists(st.binary(max_size=50), max_size=5))
def test_a_point_lookup_finds_what_the_loaded_index_finds(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[bytes]], absent: list[bytes]
) -> None:
    root = tmp_path_factory.mktemp("objects")
    digests = _packed(root, batches)  # the same blob in two batches: two packs hold it
    probes = [d.raw for d in digests] + [sha256_digest(b"absent" + a).raw for a in absent]
    pointed = LocalStore.at(root)
    found = [pointed._point_lookup(raw) for raw in probes]
    assert pointed._index is None  # nothing loaded for that
    loaded = LocalStore.at(root)._packed()
    assert found == [loaded.where(raw) for raw in probes]
    pointed.close()


def test_the_first_reads_load_no_index_and_later_ones_do(tmp_path: Path) -> None:
    data = [f"object {i}".encode() * 20 for i in range(local._POINT_LOOKUPS + 5)]
    digests = _packed(tmp_path / "objects", [data[:10], data[10:]])
    store = LocalStore.at(tmp_path / "objects")
    for digest, blob in zip(digests[: local._POINT_LOOKUPS // 2], data, strict=False):
        assert store.read(digest) == blob
        store.verify(digest)  # a lookup each
    assert store._index is None
    for digest, blob in zip(digests, data, strict=True):
        assert store.read(digest) == blob
    assert store._index is not None  # bulk work: one table of every object
    store.close()


def test_an_object_no_pack_holds_falls_back_to_loose_and_the_loaded_index(tmp_path: Path) -> None:
    store = LocalStore.at(tmp_path / "objects")
    _packed(tmp_path / "objects", [[b"packed" * 30]])
    loose = store.put(b"loose object")
    assert store.read(loose) == b"loose object"
    with pytest.raises(IntegrityError, match="missing"):
        store.read(sha256_digest(b"never stored"))
    store.close()


def test_a_tampered_index_entry_never_yields_wrong_bytes(tmp_path: Path) -> None:
    first, second = _packed(tmp_path / "objects", [[b"A" * 400, b"B" * 400]])
    (idx,) = (tmp_path / "objects" / "pack").glob("*.idx")
    # point both entries at the first record: the second object's lookup lands on the wrong record
    data = bytearray(idx.read_bytes())
    entry = local._IDX_ENTRY
    rows = [list(entry.unpack_from(data, local._IDX_HEADER + i * entry.size)) for i in range(2)]
    target = 0 if rows[0][0] == second.raw else 1
    other = 1 - target
    rows[target][1:] = rows[other][1:]
    entry.pack_into(data, local._IDX_HEADER + target * entry.size, *rows[target])
    idx.chmod(0o644)
    idx.write_bytes(bytes(data))  # its checksum no longer matches: the loaded index rebuilds it
    store = LocalStore.at(tmp_path / "objects")
    assert store.read(second) == b"B" * 400
    assert store.read(first) == b"A" * 400
    store.close()


def _tamper_entry(idx: Path, digest: Digest, field: int, value: int, *, checksum: bool) -> None:
    """Set one field of ``digest``'s entry in ``idx``; with ``checksum``, make the checksum match again
    (the index then loads as a sound one)."""
    data = bytearray(idx.read_bytes())
    entry = local._IDX_ENTRY
    (count,) = struct.unpack_from(">Q", data, len(local.IDX_MAGIC))
    for i in range(count):
        at = local._IDX_HEADER + i * entry.size
        row = list(entry.unpack_from(data, at))
        if row[0] == digest.raw:
            row[field] = value
            entry.pack_into(data, at, *row)
    if checksum:
        data[-32:] = hashlib.sha256(data[:-32]).digest()
    idx.chmod(0o644)
    idx.write_bytes(bytes(data))


@pytest.mark.parametrize("checksum", [False, True], ids=["unchecked-index", "checksum-made-again"])
@pytest.mark.parametrize(
    ("field", "value"),
    [(1, 2**64 - 1), (1, 2**63), (2, 2**62), (2, 2**40)],
    ids=["offset-2^64-1", "offset-2^63", "stored-2^62", "stored-2^40"],
)
def test_an_index_entry_out_of_the_pack_is_corruption_never_a_crash(
    tmp_path: Path, field: int, value: int, checksum: bool
) -> None:
    """A read took the offset and length an index entry gives on trust: os.pread was asked for 2**62
    bytes (MemoryError) or an offset past what it takes (OverflowError), a traceback on the command
    line, where a damaged index is corruption (or, unchecked, no copy at all)."""
    root = tmp_path / "objects"
    (digest,) = _packed(root, [[b"A" * 400]])
    (idx,) = (root / "pack").glob("*.idx")
    _tamper_entry(idx, digest, field, value, checksum=checksum)
    for reader in ("point", "loaded", "many"):
        store = LocalStore.at(root)
        if reader == "loaded":
            store._packed()
        try:
            if checksum:  # the only index says where the only copy is: it is corrupt
                with pytest.raises(IntegrityError, match="runs past the end of the pack file"):
                    store.read(digest) if reader != "many" else list(store.read_many([digest]))
            else:  # a damaged index is rebuilt from its pack: the object reads
                got = store.read(digest) if reader != "many" else next(store.read_many([digest]))
                assert got == b"A" * 400
        finally:
            store.close()


def test_a_delta_base_whose_index_entry_is_out_of_the_pack_is_no_base(tmp_path: Path) -> None:
    """A batch asked how deep the delta chain of its base is by reading the base's record header at
    the offset its index gives: an offset past 2**63 raised OverflowError out of the build."""
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    with store.batch() as batch:
        base = batch.add(b"manifest " * 300, pack=True)
        delta = batch.add(b"manifest " * 299 + b"changed", delta_base=base)
    store.close()
    (idx,) = (root / "pack").glob("*.idx")
    _tamper_entry(idx, delta, 1, 2**64 - 1, checksum=True)
    store = LocalStore.at(root)
    with store.batch() as batch:
        newer = batch.add(b"manifest " * 298 + b"changed twice", delta_base=delta)
    assert store.read(newer) == b"manifest " * 298 + b"changed twice"
    store.close()


def test_has_answers_for_a_packed_object_without_loading_the_index(tmp_path: Path) -> None:
    """A deploy or a rollback asks whether one artifact is stored: in a store of a million objects,
    loading the whole index for that took ~2 s and ~250 MB."""
    root = tmp_path / "objects"
    first, second = _packed(root, [[b"A" * 400], [b"B" * 400]])
    store = LocalStore.at(root)
    assert store.has(first)
    assert store.has(second)
    assert store._index is None
    assert not store.has(sha256_digest(b"never stored"))  # an absence is the loaded index's answer
    assert store._index is not None
    store.close()


def test_has_loads_the_index_once_its_point_lookups_are_spent(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    digests = _packed(root, [[f"object {i}".encode() * 20 for i in range(local._POINT_LOOKUPS + 2)]])
    store = LocalStore.at(root)
    for digest in digests[: local._POINT_LOOKUPS]:
        assert store.has(digest)
    assert store._index is None
    assert all(store.has(digest) for digest in digests[local._POINT_LOOKUPS :])
    assert store._index is not None
    store.close()


def test_has_trusts_no_index_entry_its_pack_does_not_bear_out(tmp_path: Path) -> None:
    """An entry whose record is not in the pack (a damaged index that still checks, or a pack file that
    is gone) is not taken for the object: the loaded index answers, as before."""
    root = tmp_path / "objects"
    first, second = _packed(root, [[b"A" * 400, b"B" * 400]])
    (idx,) = (root / "pack").glob("*.idx")
    entry = local._IDX_ENTRY
    data = idx.read_bytes()
    rows = {
        row[0]: row for row in (entry.unpack_from(data, local._IDX_HEADER + i * entry.size) for i in range(2))
    }
    # second's entry names first's record (another digest there), with a checksum made again
    _tamper_entry(idx, second, 1, rows[first.raw][1], checksum=True)
    store = LocalStore.at(root)
    assert store.has(first)
    assert store._index is None
    assert store.has(second)  # the loaded index lists it too (a read then says it is corrupt)
    assert store._index is not None
    store.close()
    for pack in (root / "pack").glob("*.pack"):
        pack.unlink()  # the index remains, its pack is gone
    store = LocalStore.at(root)
    assert not store.has(first)
    assert any("is missing" in line for line in store.damage())
    store.close()


def test_reading_a_few_objects_of_a_larger_store_loads_no_index(tmp_path: Path) -> None:
    """The number of lookups served before the index is loaded grows with the store (about what the
    load would cost): a deploy of a small artifact reads its objects from a store of many more."""
    root = tmp_path / "objects"
    data = [f"object {i}".encode() * 20 for i in range(3000)]
    digests = _packed(root, [data[:2000], data[2000:]])
    store = LocalStore.at(root)
    wanted = list(range(0, 3000, 30))  # 100 objects, more than the fixed minimum of lookups
    assert list(store.read_many([digests[i] for i in wanted])) == [data[i] for i in wanted]
    assert all(store.read(digests[i]) == data[i] for i in range(5))
    assert store._index is None
    assert store._point_left > 0
    everything = list(store.read_many(digests))  # more than the lookups left: one table
    assert everything == data
    assert store._index is not None
    store.close()


def _many(count: int, tag: str = "object") -> list[bytes]:
    return [f"{tag} {i} ".encode() * 10 for i in range(count)]


def test_a_small_batch_in_a_larger_store_loads_no_index_and_copies_nothing_twice(tmp_path: Path) -> None:
    """A build of a small repository in a home of many objects asked the loaded index whether each
    object was stored: ~1.1 s and ~370 MB in a store of a million objects."""
    root = tmp_path / "objects"
    old = _many(3000)
    stored = _packed(root, [old])
    store = LocalStore.at(root)
    assert store.missing([d.hex for d in stored[:50]]) == set()
    absent = sha256_digest(b"not stored").hex
    assert store.missing([stored[0].hex, absent]) == {absent}  # an absence: the loaded index says so
    store.close()
    store = LocalStore.at(root)
    with store.batch() as batch:
        kept = [batch.add(blob) for blob in old[:20]]  # stored already: verified, not written again
        new = [batch.add(blob) for blob in _many(20, "new")]
    assert kept == stored[:20]
    assert store._index is None
    assert all(store.has(d) for d in new)  # the batch's own pack: mapped after its commit
    assert store._index is None
    store.close()
    packs = sorted((root / "pack").glob("*.pack"), key=lambda p: p.stat().st_mtime_ns)
    newest = packs[-1].read_bytes()
    assert all(d.raw in newest for d in new)
    assert not any(d.raw in newest for d in kept)
    fresh = LocalStore.at(root)
    assert fresh.missing(d.hex for d in [*stored, *new]) == set()
    assert fresh._index is not None  # more than the lookups left: one table
    fresh.close()


def test_a_merge_reads_only_the_indexes_of_the_packs_it_merges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    _packed(root, [_many(2000, "big")])
    big = {p.name for p in (root / "pack").glob("*.idx")}
    _packed(root, [[f"small {i}".encode() * 5] for i in range(4)])
    read: list[str] = []
    real = local._read_index

    def spy(idx: Path) -> object:
        read.append(idx.name)
        return real(idx)

    monkeypatch.setattr(local, "_read_index", spy)
    store = LocalStore.at(root)
    assert store.consolidate(above=1) == 4
    assert len(read) == 4
    assert not big & set(read)
    store.close()


def test_a_caller_that_says_it_will_ask_about_many_objects_loads_the_index_at_once(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    _packed(root, [_many(3000)])
    store = LocalStore.at(root)
    store.expect_lookups(10)
    assert store._index is None  # few: point lookups serve them
    left = store._point_left
    assert 32 < left < 3000  # more than the minimum for a store this size, less than a lookup each
    store.expect_lookups(left + 1)
    assert store._index is not None
    store.close()


def test_a_batch_adding_as_many_stored_objects_as_it_said_loads_no_index(tmp_path: Path) -> None:
    """A build says how many blobs it will add (expect_lookups), and the index is loaded at once when
    point lookups would not serve them all; a blob found stored then took a second lookup to be
    verified, so a build adding no more than it said spent every lookup by half-way and loaded the
    index after all: half a load wasted, which saying so first is meant to spare."""
    root = tmp_path / "objects"
    old = _many(3000)
    _packed(root, [old])
    store = LocalStore.at(root)
    said = store._lookups_left()
    store.expect_lookups(said)
    assert store._index is None
    with store.batch() as batch:
        assert [batch.add(blob) for blob in old[:said]] == [sha256_digest(blob) for blob in old[:said]]
    assert store._index is None
    assert len(list((root / "pack").glob("*.pack"))) == 1  # verified, not written again
    store.close()


def test_an_object_stored_loose_is_found_without_loading_the_index(tmp_path: Path) -> None:
    """Files of a MiB and more are stored loose: a point lookup finds no pack that holds them, and a
    deploy or verify of an artifact with one loaded the whole index for it."""
    root = tmp_path / "objects"
    _packed(root, [_many(200)])
    big = os.urandom(local.LOOSE_THRESHOLD + 10)
    with LocalStore.at(root).batch() as batch:
        loose = batch.add(big)
    assert (root / "sha256" / loose.hex[:2] / loose.hex[2:]).exists()
    store = LocalStore.at(root)
    assert store.has(loose)
    assert store.missing([loose.hex]) == set()
    assert store.read(loose) == big
    store.verify(loose)
    assert store._index is None
    store.close()


def test_an_index_file_merged_away_while_they_are_mapped_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    first, second = _packed(root, [[b"A" * 400], [b"B" * 400]])
    store = LocalStore.at(root)
    real = os.listdir

    def listing_a_ghost(path: str | Path) -> list[str]:
        return [*real(path), "pack-0000-merged-away.idx"]

    monkeypatch.setattr(os, "listdir", listing_a_ghost)
    assert store.has(first) and store.has(second)
    assert store._index is None
    store.close()
