"""A damaged store heals: writers replace damaged copies, readers use any copy that verifies, and one
damaged pack index does not make the other packs unreadable (docs/formats/store-v1.md)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from graven.errors import BackendError, DigestMismatchError, IntegrityError
from graven.model.digest import Digest, sha256_digest
from graven.store.local import LOOSE_THRESHOLD, LocalStore, is_read_only

HEADER = 49  # a record header: digest 32 | codec 1 | raw size 8 | stored length 8


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore.at(tmp_path / "objects")


def _flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o644)  # objects are read-only
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _packs(store: LocalStore) -> list[Path]:
    return sorted((store.root / "pack").glob("*.pack"))


def _damage_packed(pack: Path, digest: Digest, size: int) -> None:
    """Flip a byte in the middle of the (raw, incompressible) payload of ``digest``'s record."""
    where = pack.read_bytes().find(digest.raw)
    assert where > 0, f"{digest} is not in {pack.name}"
    _flip_byte(pack, where + HEADER + size // 2)


def _pack_holding(store: LocalStore, digest: Digest) -> Path:
    return next(p for p in _packs(store) if digest.raw in p.read_bytes())


def _no_temp_files(store: LocalStore) -> bool:
    return not any((store.root / "tmp").iterdir())


# -- 1. repair on put ----------------------------------------------------------------------------------


def test_put_replaces_a_damaged_loose_object(store: LocalStore) -> None:
    data = os.urandom(5000)
    digest = store.put(data)
    path = store.loose_path(digest)
    _flip_byte(path, 100)
    with pytest.raises(DigestMismatchError):
        store.verify(digest)

    assert store.put(data) == digest
    assert path.read_bytes() == data
    assert is_read_only(path)
    assert _no_temp_files(store)
    store.verify(digest)
    assert LocalStore.at(store.root).read(digest) == data


def test_put_stream_replaces_a_damaged_large_loose_object(store: LocalStore, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(2 << 20))
    digest = store.put_file(big)
    path = store.loose_path(digest)
    _flip_byte(path, 1 << 20)

    assert store.put_file(big) == digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest.hex
    assert is_read_only(path)
    assert _no_temp_files(store)
    LocalStore.at(store.root).verify(digest)


def test_batch_add_stream_replaces_a_damaged_large_loose_object(store: LocalStore, tmp_path: Path) -> None:
    """What `graven build --no-cache` does with a file of 1 MiB or more."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(LOOSE_THRESHOLD + 1000))
    with store.batch() as batch, big.open("rb") as handle:
        digest = batch.add_stream(handle, big.stat().st_size)
    _flip_byte(store.loose_path(digest), 10)

    fresh = LocalStore.at(store.root)
    with fresh.batch() as batch, big.open("rb") as handle:
        assert batch.add_stream(handle, big.stat().st_size) == digest
    LocalStore.at(store.root).verify(digest)
    assert is_read_only(store.loose_path(digest))


def test_batch_add_replaces_a_damaged_small_loose_object(store: LocalStore) -> None:
    data = os.urandom(3000)
    digest = store.put(data)
    _flip_byte(store.loose_path(digest), 0)

    fresh = LocalStore.at(store.root)
    with fresh.batch() as batch:
        batch.add_known(digest, data)
    assert store.loose_path(digest).read_bytes() == data
    LocalStore.at(store.root).verify(digest)


def test_batch_add_writes_a_good_copy_of_a_damaged_packed_object(store: LocalStore) -> None:
    data = os.urandom(4000)
    with store.batch() as batch:
        digest = batch.add(data)
        batch.add(b"another object" * 10)
    (pack,) = _packs(store)
    _damage_packed(pack, digest, len(data))
    damaged_pack = pack.read_bytes()
    with pytest.raises(IntegrityError):
        LocalStore.at(store.root).verify(digest)

    writer = LocalStore.at(store.root)
    with writer.batch() as batch:
        assert batch.add(data) == digest
    writer.verify(digest)
    assert writer.read(digest) == data
    fresh = LocalStore.at(store.root)
    fresh.verify(digest)
    assert fresh.read(digest) == data
    assert list(fresh.read_many([digest])) == [data]
    with fresh.open(digest) as stream:
        assert stream.read() == data
    assert pack.read_bytes() == damaged_pack  # a pack is never rewritten


def test_put_writes_a_good_copy_of_a_damaged_packed_object(store: LocalStore) -> None:
    data = os.urandom(4000)
    with store.batch() as batch:
        digest = batch.add(data)
    _damage_packed(_packs(store)[0], digest, len(data))

    writer = LocalStore.at(store.root)
    assert writer.put(data) == digest
    writer.verify(digest)
    fresh = LocalStore.at(store.root)
    assert fresh.read(digest) == data
    assert list(fresh.read_many([digest, digest])) == [data, data]


def test_an_intact_object_is_never_replaced(store: LocalStore, tmp_path: Path) -> None:
    small = store.put(b"small object")
    big_file = tmp_path / "big"
    big_file.write_bytes(os.urandom(LOOSE_THRESHOLD + 1))
    big = store.put_file(big_file)
    with store.batch() as batch:
        packed = batch.add(b"packed object" * 20)
    inodes = {d: store.loose_path(d).stat().st_ino for d in (small, big)}
    packs = {p: p.stat().st_ino for p in (store.root / "pack").iterdir()}

    fresh = LocalStore.at(store.root)
    fresh.put(b"small object")
    fresh.put_file(big_file)
    with fresh.batch() as batch, big_file.open("rb") as handle:
        batch.add(b"small object")
        batch.add(b"packed object" * 20)
        batch.add_stream(handle, LOOSE_THRESHOLD + 1)
    assert {d: store.loose_path(d).stat().st_ino for d in (small, big)} == inodes
    assert {p: p.stat().st_ino for p in (store.root / "pack").iterdir()} == packs
    assert not store.loose_path(packed).exists()
    assert _no_temp_files(store)


def test_a_repair_is_refused_with_content_of_another_digest(store: LocalStore) -> None:
    data = os.urandom(3000)
    digest = store.put(data)
    path = store.loose_path(digest)
    _flip_byte(path, 0)
    damaged = path.read_bytes()
    with pytest.raises(DigestMismatchError), store.batch() as batch:
        batch.add_known(digest, b"not the content of that digest")
    assert path.read_bytes() == damaged
    assert _no_temp_files(store)


# -- 2. a damaged pack index -----------------------------------------------------------------------


def _two_packs(store: LocalStore) -> tuple[dict[Digest, bytes], dict[Digest, bytes], Path, Path]:
    """Two batches of objects, one pack each: (objects of A, objects of B, index A, index B), where A is
    the pack whose index is loaded first."""
    first = {sha256_digest(d): d for d in (os.urandom(2000) for _ in range(5))}
    second = {sha256_digest(d): d for d in (os.urandom(2000) for _ in range(5))}
    with store.batch() as batch:
        for data in first.values():
            batch.add(data)
    with store.batch() as batch:
        for data in second.values():
            batch.add(data)
    idx_a, idx_b = sorted((store.root / "pack").glob("*.idx"))
    if next(iter(first)).raw not in idx_a.with_suffix(".pack").read_bytes():
        first, second = second, first
    return first, second, idx_a, idx_b


def test_a_damaged_index_does_not_poison_the_other_packs(store: LocalStore) -> None:
    in_a, in_b, idx_a, _ = _two_packs(store)
    _flip_byte(idx_a, 40)
    fresh = LocalStore.at(store.root)
    for digest, data in in_b.items():
        assert fresh.has(digest)
        fresh.verify(digest)
        assert fresh.read(digest) == data
    assert fresh.missing(d.hex for d in in_b) == set()
    assert list(fresh.read_many(in_b)) == list(in_b.values())
    # the damaged index is rebuilt from its pack's record headers: A's objects stay readable too
    for digest, data in in_a.items():
        assert fresh.has(digest)
        assert fresh.read(digest) == data
    assert list(fresh.read_many(in_a)) == list(in_a.values())
    assert any(idx_a.name in line for line in fresh.damage())
    assert set(fresh.list()) == set(in_a) | set(in_b)


def test_an_index_rebuilt_from_its_pack_serves_every_codec(store: LocalStore) -> None:
    text = b"".join(f"line {i} of some compressible text\n".encode() for i in range(2000))
    blobs = {"raw": os.urandom(3000), "zstd": text, "empty": b""}
    with store.batch() as batch:
        digests = {name: batch.add(data) for name, data in blobs.items()}
    with store.batch() as batch:
        delta = batch.add(text + b"one more line\n", delta_base=digests["zstd"])
    contents = {digests[name]: data for name, data in blobs.items()} | {delta: text + b"one more line\n"}
    for idx in (store.root / "pack").glob("*.idx"):
        _flip_byte(idx, idx.stat().st_size - 1)  # the checksum
    fresh = LocalStore.at(store.root)
    for digest, data in contents.items():
        assert fresh.read(digest) == data
    assert list(LocalStore.at(store.root).read_many(contents)) == list(contents.values())
    assert len(fresh.damage()) == 2


@pytest.mark.parametrize("loaded", [False, True], ids=["point-lookups", "loaded-index"])
def test_a_damaged_record_header_ends_the_scan_of_a_damaged_index_not_its_rebuild(
    store: LocalStore, loaded: bool
) -> None:
    """The scan of a pack stops at its first damaged record; the records after it are still found
    through the damaged index's entries whose record header the pack holds where they say (as point
    lookups find them), so both ways of looking agree."""
    blobs = [os.urandom(1000) for _ in range(6)]
    with store.batch() as batch:
        digests = [batch.add(data) for data in blobs]
    (pack,) = _packs(store)
    offsets = sorted((pack.read_bytes().find(d.raw), n) for n, d in enumerate(digests))
    _flip_byte(pack, offsets[3][0] + 33)  # the raw size of the fourth record: no longer its length
    idx = pack.with_suffix(".idx")
    _flip_byte(idx, 40)  # in the digest of the index's first entry (the smallest digest)
    fresh = LocalStore.at(store.root)
    if loaded:
        fresh._packed()
    before = [digests[n] for _, n in offsets[:3]]
    after = [digests[n] for _, n in offsets[3:]]
    renamed = min(digests, key=lambda d: d.raw)  # its entry names another digest now
    lost = {digests[offsets[3][1]]} | ({renamed} & set(after))
    assert all(fresh.read(d) == blobs[digests.index(d)] for d in before)
    assert fresh.missing(d.hex for d in after) == {d.hex for d in lost}
    assert all(fresh.read(d) == blobs[digests.index(d)] for d in after if d not in lost)
    (damage,) = fresh.damage()
    assert idx.name in damage and f"{6 - len(lost)} objects recovered" in damage


@pytest.mark.parametrize("loaded", [False, True], ids=["point-lookups", "loaded-index"])
def test_a_record_a_truncated_pack_cut_short_is_missing_either_way_when_its_index_is_damaged(
    store: LocalStore, loaded: bool
) -> None:
    """A damaged index is rebuilt without a record that runs past the end of its pack, so the loaded
    index says it is missing; point lookups said "stored" from its record header alone, and a build
    then named the cached blob instead of adding it again: an artifact whose object no copy holds."""
    blobs = [os.urandom(1000) for _ in range(3)]
    with store.batch() as batch:
        digests = [batch.add(data) for data in blobs]
    (pack,) = _packs(store)
    data = pack.read_bytes()
    last = max(digests, key=lambda d: data.find(d.raw))
    pack.chmod(0o644)
    os.truncate(pack, data.find(last.raw) + HEADER + 500)  # its header is left, half its bytes
    idx = pack.with_suffix(".idx")
    _flip_byte(idx, idx.stat().st_size - 1)  # the checksum: damaged, every entry as written
    fresh = LocalStore.at(store.root)
    if loaded:
        fresh._packed()
    assert not fresh.has(last)
    assert fresh.missing([last.hex]) == {last.hex}
    with fresh.batch() as batch:  # what a build does with a cached blob that is missing
        batch.add(blobs[digests.index(last)])
    assert LocalStore.at(store.root).read(last) == blobs[digests.index(last)]


def test_objects_of_a_damaged_index_and_pack_read_as_missing_and_name_the_index(
    store: LocalStore,
) -> None:
    in_a, in_b, idx_a, _ = _two_packs(store)
    _flip_byte(idx_a, 40)
    pack_a = idx_a.with_suffix(".pack")
    pack_a.chmod(0o644)
    os.truncate(pack_a, 5)  # not even the pack header is left: nothing can be recovered
    fresh = LocalStore.at(store.root)
    lost = next(iter(in_a))
    assert not fresh.has(lost)
    assert fresh.missing([lost.hex]) == {lost.hex}
    with pytest.raises(IntegrityError, match="missing") as info:
        fresh.read(lost)
    assert idx_a.name in str(info.value)
    for digest, data in in_b.items():
        assert fresh.read(digest) == data
    # putting a lost object again stores it anew
    with fresh.batch() as batch:
        batch.add(in_a[lost])
    assert LocalStore.at(store.root).read(lost) == in_a[lost]


def test_an_unreadable_index_is_not_cached_half_loaded(store: LocalStore) -> None:
    """A failure to read an index (say, EIO) is an error, and the next look tries again."""
    in_a, in_b, idx_a, _ = _two_packs(store)
    saved = idx_a.read_bytes()
    idx_a.chmod(0o644)
    idx_a.unlink()
    idx_a.mkdir()  # reading it fails with an OSError
    pack_dir = idx_a.parent
    fresh = LocalStore.at(store.root)
    with pytest.raises(BackendError):
        fresh.has(next(iter(in_b)))
    when = pack_dir.stat().st_mtime_ns
    idx_a.rmdir()
    idx_a.write_bytes(saved)
    os.utime(pack_dir, ns=(when, when))  # a transient failure: the directory looks unchanged
    for digest in [*in_a, *in_b]:
        assert fresh.has(digest)
        fresh.verify(digest)


# -- several copies ---------------------------------------------------------------------------------


def _two_copies(store: LocalStore) -> tuple[Digest, bytes, Path, Path]:
    """One object in two packs, as two concurrent builds leave it: (digest, data, first, second)
    where ``first`` is the pack whose copy a fresh store finds first."""
    data = os.urandom(3000)
    one, two = LocalStore.at(store.root), LocalStore.at(store.root)
    with one.batch() as batch_one:
        digest = batch_one.add(data)
        batch_one.add(b"only in one" * 10)
        with two.batch() as batch_two:
            batch_two.add(data)
            batch_two.add(b"only in two" * 10)
    packs = _packs(store)
    assert len(packs) == 2
    assert all(digest.raw in p.read_bytes() for p in packs)
    return digest, data, packs[0], packs[1]


@pytest.mark.parametrize("damaged", ["first", "second"])
def test_a_damaged_copy_in_one_pack_falls_back_to_another(store: LocalStore, damaged: str) -> None:
    digest, data, first, second = _two_copies(store)
    _damage_packed(first if damaged == "first" else second, digest, len(data))
    fresh = LocalStore.at(store.root)
    fresh.verify(digest)
    assert fresh.read(digest) == data
    with fresh.open(digest) as stream:
        assert stream.read() == data
    fresh = LocalStore.at(store.root)
    assert list(fresh.read_many([digest, digest])) == [data, data]


def test_a_damaged_packed_copy_falls_back_to_a_loose_copy(store: LocalStore) -> None:
    data = os.urandom(3000)
    with store.batch() as batch:
        digest = batch.add(data)
    _damage_packed(_packs(store)[0], digest, len(data))
    loose = store.loose_path(digest)  # a loose copy, as an older graven or a repair leaves it
    loose.parent.mkdir(exist_ok=True)
    loose.write_bytes(data)
    loose.chmod(0o444)
    fresh = LocalStore.at(store.root)
    fresh.verify(digest)
    assert fresh.read(digest) == data
    assert list(LocalStore.at(store.root).read_many([digest])) == [data]


def test_every_copy_damaged_is_still_an_error(store: LocalStore) -> None:
    digest, data, first, second = _two_copies(store)
    _damage_packed(first, digest, len(data))
    _damage_packed(second, digest, len(data))
    fresh = LocalStore.at(store.root)
    with pytest.raises(DigestMismatchError):
        fresh.verify(digest)
    with pytest.raises(DigestMismatchError):
        fresh.read(digest)
    with pytest.raises(DigestMismatchError):
        list(LocalStore.at(store.root).read_many([digest]))
    assert fresh.has(digest)
    # ... until a writer puts the content again
    with fresh.batch() as batch:
        batch.add(data)
    LocalStore.at(store.root).verify(digest)


# -- a deleted pack -----------------------------------------------------------------------------------


def test_an_index_whose_pack_was_deleted_reports_its_objects_missing(store: LocalStore) -> None:
    data = os.urandom(3000)
    with store.batch() as batch:
        digest = batch.add(data)
    (pack,) = _packs(store)
    pack.chmod(0o644)
    pack.unlink()
    fresh = LocalStore.at(store.root)
    assert not fresh.has(digest)
    assert fresh.missing([digest.hex]) == {digest.hex}
    with pytest.raises(IntegrityError, match="missing") as info:
        fresh.verify(digest)
    assert pack.name in str(info.value)
    assert fresh.put(data) == digest
    LocalStore.at(store.root).verify(digest)


def test_a_pack_deleted_after_the_indexes_were_loaded_reports_missing(store: LocalStore) -> None:
    with store.batch() as batch:
        digest = batch.add(os.urandom(3000))
    fresh = LocalStore.at(store.root)
    assert fresh.has(digest)  # the indexes are loaded; the pack is not open yet
    (pack,) = _packs(store)
    pack.chmod(0o644)
    pack.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        fresh.verify(digest)
    assert not fresh.has(digest)


# -- a damaged zstd frame header ----------------------------------------------------------------------


def _compressed_pair(store: LocalStore) -> dict[Digest, bytes]:
    """A zstd record and a delta record (codecs 1 and 2), one pack each."""
    text = b"".join(f"line {i} of some compressible text\n".encode() for i in range(2000))
    with store.batch() as batch:
        base = batch.add(text)
    with store.batch() as batch:
        delta = batch.add(text + b"one more line\n", delta_base=base)
    return {base: text, delta: text + b"one more line\n"}


def _flip_frame_size_flag(store: LocalStore, digest: Digest) -> None:
    """Set the two top bits of the frame header descriptor of ``digest``'s zstd frame (one or two bits
    flipped): the frame then says it holds an 8-byte content size, read from the bytes after it."""
    pack = _pack_holding(store, digest)
    data = pack.read_bytes()
    at = data.find(digest.raw)
    payload = at + HEADER + (32 if data[at + 32] == 2 else 0)  # a delta's base digest
    assert data[payload : payload + 4] == b"\x28\xb5\x2f\xfd"  # zstd's magic number
    assert data[payload + 4] & 0xC0 != 0xC0
    pack.chmod(0o644)
    with pack.open("r+b") as handle:
        handle.seek(payload + 4)
        handle.write(bytes([data[payload + 4] | 0xC0]))


@pytest.mark.parametrize("which", [0, 1], ids=["zstd", "delta"])
def test_a_frame_header_that_claims_a_huge_size_is_a_damaged_copy(store: LocalStore, which: int) -> None:
    contents = _compressed_pair(store)
    digest = list(contents)[which]
    _flip_frame_size_flag(store, digest)
    for read in (
        lambda s: s.read(digest),
        lambda s: s.verify(digest),
        lambda s: s.open(digest).read(),
        lambda s: list(s.read_many([digest])),
    ):
        with pytest.raises(IntegrityError, match="cannot be decompressed"):
            read(LocalStore.at(store.root))
    with LocalStore.at(store.root).batch() as batch:  # a writer repairs it with a good loose copy
        batch.add(contents[digest])
    fresh = LocalStore.at(store.root)
    assert fresh.read(digest) == contents[digest]
    assert list(LocalStore.at(store.root).read_many([digest])) == [contents[digest]]
