"""The local store: write-once, atomic, verified on every read."""

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from graven.errors import DigestMismatchError, IntegrityError
from graven.model.digest import Digest, sha256_digest
from graven.store import local
from graven.store.base import ArtifactStore
from graven.store.local import LOOSE_THRESHOLD, LocalStore, is_read_only


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore.at(tmp_path / "objects")


def _flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_implements_the_protocol(store: LocalStore) -> None:
    assert isinstance(store, ArtifactStore)


def test_put_read_and_layout(store: LocalStore) -> None:
    digest = store.put(b"hello")
    assert digest == sha256_digest(b"hello")
    path = store.root / "sha256" / digest.hex[:2] / digest.hex[2:]
    assert path.read_bytes() == b"hello"
    assert is_read_only(path)
    assert store.read(digest) == b"hello"
    assert store.has(digest)
    assert list(store.list()) == [digest]
    assert not any((store.root / "tmp").iterdir())


def test_put_existing_verifies_and_never_rewrites_an_intact_object(store: LocalStore) -> None:
    digest = store.put(b"data")
    path = store.loose_path(digest)
    inode = path.stat().st_ino
    assert store.put(b"data") == digest
    assert path.stat().st_ino == inode  # intact: checked, not written again
    _flip_byte(path, 0)
    # damaged: the same content restores it (same digest, same bytes: its identity never changes)
    assert store.put(b"data") == digest
    assert path.read_bytes() == b"data" and is_read_only(path)
    store.verify(digest)


def test_loose_read_is_verified_while_streaming(store: LocalStore) -> None:
    digest = store.put(b"x" * 100_000)
    _flip_byte(store.loose_path(digest), 50_000)
    with store.open(digest) as stream, pytest.raises(DigestMismatchError) as info:
        while stream.read(4096):
            pass
    assert str(digest) in str(info.value)
    with pytest.raises(IntegrityError):
        store.verify(digest)


def test_missing_object(store: LocalStore) -> None:
    digest = sha256_digest(b"nope")
    assert not store.has(digest)
    with pytest.raises(IntegrityError, match="missing"):
        store.read(digest)


def test_batch_is_invisible_until_commit(store: LocalStore) -> None:
    blobs = [os.urandom(100) + bytes(1000) for _ in range(50)]
    digests: list[Digest] = []
    with store.batch() as batch:
        for blob in blobs:
            digests.append(batch.add(blob))
        other = LocalStore.at(store.root)
        assert not any(other.has(d) for d in digests)
    fresh = LocalStore.at(store.root)
    for blob, digest in zip(blobs, digests, strict=True):
        assert fresh.read(digest) == blob
    packs = list((store.root / "pack").iterdir())
    assert {p.suffix for p in packs} == {".pack", ".idx"}
    assert all(is_read_only(p) for p in packs)


def test_batch_abort_leaves_nothing(store: LocalStore) -> None:
    with pytest.raises(RuntimeError), store.batch() as batch:
        digest = batch.add(b"a" * 500)
        raise RuntimeError("boom")
    assert not LocalStore.at(store.root).has(digest)
    assert not any((store.root / "pack").iterdir())
    assert not any((store.root / "tmp").iterdir())


def test_large_objects_go_loose_and_stream(store: LocalStore, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(LOOSE_THRESHOLD + 5))
    with store.batch() as batch, big.open("rb") as handle:
        digest = batch.add_stream(handle, big.stat().st_size)
    assert store.loose_path(digest).exists()
    assert hashlib.sha256(store.read(digest)).hexdigest() == digest.hex


def test_delta_compressed_objects_round_trip(store: LocalStore) -> None:
    base = b"".join(f"line {i} {'x' * 40}\n".encode() for i in range(5000))
    with store.batch() as batch:
        first = batch.add(base)
    chain = [first]
    for step in range(20):  # longer than the maximum chain: later ones restart from full copies
        data = base + f"change {step}\n".encode() * (step + 1)
        with store.batch() as batch:
            chain.append(batch.add(data, delta_base=chain[-1]))
        base = data
    fresh = LocalStore.at(store.root)
    for digest in chain:
        assert hashlib.sha256(fresh.read(digest)).hexdigest() == digest.hex


def test_a_delta_whose_base_name_is_damaged_fails_naming_the_object_read(store: LocalStore) -> None:
    """A flipped bit in a delta record's base digest made every read of the object (``graven show``,
    a deploy, ``verify``'s detail) fail as "object <a digest nothing names> is missing from the
    store": the object read, and where its damaged record is, were not named at all."""
    base = b"".join(f"line {i} {'x' * 40}\n".encode() for i in range(2000))
    with store.batch() as batch:
        first = batch.add(base)
    with store.batch() as batch:
        second = batch.add(base + b"one more line\n", delta_base=first)
    fresh = LocalStore.at(store.root)
    location = fresh._packed().where(second.raw)
    assert location is not None and location.codec == local.CODEC_ZSTD_DELTA
    _flip_byte(location.pack, location.offset + local._RECORD.size + 3)  # in the base's digest
    fresh = LocalStore.at(store.root)
    with pytest.raises(IntegrityError) as caught:
        fresh.read(second)
    message = str(caught.value)
    assert str(second) in message and location.pack.name in message, message
    assert fresh.read(first) == base


def _packed_with_a_flipped_byte(store: LocalStore) -> tuple[list[bytes], list[Digest], LocalStore]:
    """Ten objects in one pack, a byte in the middle of the pack flipped, and a fresh store on it."""
    blobs = [bytes([i]) * 300 + os.urandom(300) for i in range(10)]
    with store.batch() as batch:
        digests = [batch.add(b) for b in blobs]
    pack = next((store.root / "pack").glob("*.pack"))
    _flip_byte(pack, pack.stat().st_size // 2)
    return blobs, digests, LocalStore.at(store.root)


def test_corrupt_pack_byte_is_detected(store: LocalStore) -> None:
    _blobs, digests, fresh = _packed_with_a_flipped_byte(store)
    failures = 0
    for digest in digests:
        try:
            fresh.verify(digest)
        except IntegrityError:
            failures += 1
    assert failures == 1


def test_a_corrupt_index_is_named_and_poisons_nothing_else(store: LocalStore) -> None:
    with store.batch() as batch:
        kept = batch.add(b"z" * 300)
    idx = next((store.root / "pack").glob("*.idx"))
    _flip_byte(idx, 30)
    fresh = LocalStore.at(store.root)
    assert not fresh.has(sha256_digest(b"anything"))
    assert any(idx.name in damage for damage in fresh.damage())
    assert fresh.read(kept) == b"z" * 300  # rebuilt from the pack's own record headers


def test_stale_temp_files_are_cleaned(store: LocalStore) -> None:
    stale = store.root / "tmp" / "obj-stale"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    fresh = store.root / "tmp" / "obj-fresh"
    fresh.write_bytes(b"in progress")
    assert store.clean_tmp() == 1
    assert fresh.exists()


def _put_many(root: str, seed: int) -> None:
    store = LocalStore.at(Path(root))
    for i in range(30):
        store.put(f"shared-{i}".encode() * 100)
    with store.batch() as batch:
        for i in range(30):
            batch.add(f"packed-{i}".encode() * 100)
        batch.add(f"own-{seed}".encode())


def test_concurrent_writers_of_the_same_objects(store: LocalStore) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(str(store.root), n)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    fresh = LocalStore.at(store.root)
    for digest in fresh.list():
        fresh.verify(digest)
    for i in range(30):
        assert fresh.read(sha256_digest(f"shared-{i}".encode() * 100))
        assert fresh.read(sha256_digest(f"packed-{i}".encode() * 100))


def test_zstd_multithreaded_output_does_not_depend_on_the_worker_count() -> None:
    """Exports rely on this: the same archive bytes on machines with any number of cores."""
    import io

    import zstandard

    data = b"".join(f"line {i} of a reasonably compressible text\n".encode() for i in range(400_000))
    outputs = set()
    for threads in (1, 2, 3):
        buffer = io.BytesIO()
        with zstandard.ZstdCompressor(level=3, threads=threads).stream_writer(buffer, closefd=False) as w:
            for start in range(0, len(data), 1 << 20):
                w.write(data[start : start + (1 << 20)])
        outputs.add(buffer.getvalue())
    assert len(outputs) == 1


def _mixed_objects(store: LocalStore) -> tuple[list[Digest], dict[Digest, bytes]]:
    """Packed raw and zstd records, a delta, a loose object: read_many's every path."""
    blobs = {
        "raw": b"x",  # too small to compress
        "random": os.urandom(5000),  # incompressible: raw record
        "text": b"compressible text\n" * 400,  # zstd record
        "empty": b"",
        "loose": os.urandom(LOOSE_THRESHOLD + 1),
    }
    with store.batch() as batch:
        digests = {name: batch.add(data) for name, data in blobs.items()}
    with store.batch() as batch:
        delta = batch.add(blobs["text"] + b"one more line\n", delta_base=digests["text"])
    contents = {digests[name]: data for name, data in blobs.items()}
    contents[delta] = blobs["text"] + b"one more line\n"
    order = [digests["text"], delta, digests["raw"], digests["loose"], digests["text"], digests["empty"]]
    return [*order, digests["random"]], contents


def test_read_many_returns_each_object_in_order(store: LocalStore) -> None:
    order, contents = _mixed_objects(store)
    fresh = LocalStore.at(store.root)
    assert list(fresh.read_many(order)) == [contents[d] for d in order]
    assert list(fresh.read_many([])) == []


def test_read_many_refuses_a_corrupt_packed_object(store: LocalStore) -> None:
    blobs, digests, fresh = _packed_with_a_flipped_byte(store)
    good = 0
    with pytest.raises(IntegrityError):
        for data in fresh.read_many(digests):
            assert data == blobs[good]
            good += 1
    assert good < len(blobs)


def test_read_many_refuses_a_truncated_pack_and_a_missing_object(store: LocalStore) -> None:
    with store.batch() as batch:
        digest = batch.add(os.urandom(3000))
    pack = next((store.root / "pack").glob("*.pack"))
    pack.chmod(0o644)
    os.truncate(pack, pack.stat().st_size - 10)
    with pytest.raises(IntegrityError, match="truncated"):
        list(LocalStore.at(store.root).read_many([digest]))
    with pytest.raises(IntegrityError, match="missing"):
        list(store.read_many([sha256_digest(b"never stored")]))


def test_missing_answers_for_packed_loose_and_new_packs(store: LocalStore, tmp_path: Path) -> None:
    with store.batch() as batch:
        packed = batch.add(b"packed object")
    loose = store.put(b"x" * (LOOSE_THRESHOLD + 1))
    absent = sha256_digest(b"never stored")
    wanted = {packed.hex, loose.hex, absent.hex, "not-hex", packed.hex.upper(), "ab" * 31}
    assert store.missing(wanted) == {absent.hex, "not-hex", packed.hex.upper(), "ab" * 31}
    assert store.missing([]) == set()
    # a pack committed by another store (process) after this one loaded its indexes is found
    other = LocalStore.at(store.root)
    with other.batch() as batch:
        later = batch.add(b"committed elsewhere")
    assert store.missing([later.hex, packed.hex]) == set()
    assert all(store.has(Digest(h)) for h in (packed.hex, loose.hex, later.hex))


@pytest.mark.parametrize("compressor", ["one-call", "no-such-method", "cffi-backend"])
def test_batch_packs_compress_each_object_to_its_own_frame(
    store: LocalStore, compressor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack writer compresses a submitted list in one call of zstd's C extension when it can
    (``multi_compress_to_buffer``), else one by one (a compressor without the method, or zstandard's
    cffi backend, whose method raises NotImplementedError): the same records either way;
    incompressible and tiny objects stay raw."""
    import zstandard

    from graven.store import local

    if compressor != "one-call":
        made = _OneByOne() if compressor == "no-such-method" else _CffiLike()
        monkeypatch.setattr(local, "_zstd", lambda: (made, zstandard.ZstdDecompressor()))
    texts = [(f"line {i}\n" * (i % 50 + 12)).encode() for i in range(300)]
    noise = [os.urandom(2000) for _ in range(20)]
    tiny = [b"t%d" % i for i in range(20)]
    blobs = texts + noise + tiny
    with store.batch() as batch:
        digests = [batch.add(blob) for blob in blobs]
    fresh = LocalStore.at(store.root)
    assert [fresh.read(d) for d in digests] == blobs
    table = fresh._packed()
    codecs = {d.raw: _where(table, d).codec for d in digests}
    assert {codecs[d.raw] for d in digests[:300]} == {local.CODEC_ZSTD}
    assert {codecs[d.raw] for d in digests[300:]} == {local.CODEC_RAW}
    pack = next((store.root / "pack").glob("*.pack")).read_bytes()
    frame = zstandard.ZstdCompressor(level=1).compress(texts[7])
    assert frame in pack  # exactly the frame compress() makes


class _OneByOne:
    """A compressor without multi_compress_to_buffer."""

    def __init__(self) -> None:
        import zstandard

        self._cctx = zstandard.ZstdCompressor(level=1)

    def compress(self, data: bytes) -> bytes:
        return self._cctx.compress(data)


class _CffiLike(_OneByOne):
    """As zstandard's cffi backend: the method is there and raises NotImplementedError."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def multi_compress_to_buffer(self, data: object, threads: int = 0) -> object:
        self.calls += 1
        raise NotImplementedError("Not yet supported by CFFI backend")


def test_a_large_object_the_store_has_holds_no_disk_until_the_commit(store: LocalStore) -> None:
    """A batch keeps a new large object's temp file until it commits; one the store already has
    (a re-import, a build --no-cache) needs none: on a nearly full disk the second import failed."""
    import io

    from graven.store.local import LOOSE_THRESHOLD

    data = os.urandom(LOOSE_THRESHOLD + 1)
    with store.batch() as batch:
        batch.add_stream(io.BytesIO(data), len(data))
    with store.batch() as batch:
        batch.add_stream(io.BytesIO(data), len(data))
        assert list((store.root / "tmp").iterdir()) == []  # before the commit
    with store.batch() as batch:
        fresh = os.urandom(LOOSE_THRESHOLD + 1)
        digest = batch.add_stream(io.BytesIO(fresh), len(fresh))
        assert not store.has(digest)  # a new one: visible only with the commit
    assert store.has(digest)


def test_a_large_object_added_whole_waits_for_the_commit_too(store: LocalStore) -> None:
    """add() of 1 MiB or more (an import's manifest of 12,000 files) went loose at once: a refused
    import left it behind."""
    from graven.store.local import LOOSE_THRESHOLD

    data = os.urandom(LOOSE_THRESHOLD + 5)
    with pytest.raises(RuntimeError), store.batch() as batch:
        digest = batch.add(data)
        raise RuntimeError("refused")
    assert not store.has(digest)
    assert list((store.root / "tmp").iterdir()) == []
    with store.batch() as batch:
        batch.add(data)
    assert store.has(digest)


def test_the_temp_files_of_a_batch_at_work_are_not_cleaned_however_old(store: LocalStore) -> None:
    """clean_tmp removed every temp file a day old: a batch still at work (a slow import from a pipe)
    then failed at its commit."""
    import io

    from graven.store.local import LOOSE_THRESHOLD

    data = os.urandom(LOOSE_THRESHOLD + 1)
    with store.batch() as batch:
        digest = batch.add_stream(io.BytesIO(data), len(data))
        for item in (store.root / "tmp").iterdir():
            os.utime(item, (0, 0))  # as if written two days ago
        assert store.clean_tmp() == 0
    assert store.has(digest)
    dead = store.root / "tmp" / "obj-999999999-1-1"  # a writer that is gone
    dead.write_bytes(b"x")
    os.utime(dead, (0, 0))
    assert store.clean_tmp() == 1
    from graven.store import local

    # this process's pid with another start time: a killed writer whose pid was given again (a
    # container's entrypoint is always 1)
    reused = store.root / "tmp" / f"obj-{os.getpid()}-1-{local._HOST}-1-1"
    reused.write_bytes(b"x")
    os.utime(reused, (0, 0))
    assert store.clean_tmp() == 1


def test_the_temp_files_of_a_writer_known_to_be_gone_are_cleaned_at_once(store: LocalStore) -> None:
    """A crash review: a kill-and-retry loop of a 100 MB import grew tmp/ by 80 MB a kill, since even
    a writer known to be dead (this host and pid namespace, its pid gone) waited a day."""
    from graven.store import local

    gone = store.root / "tmp" / f"obj-999999-77-{local._HOST}-1-1"  # no such pid here
    gone.write_bytes(b"x" * 1000)
    elsewhere = store.root / "tmp" / "obj-999999-77-0badf00d-1-1"  # another host or namespace: a day
    elsewhere.write_bytes(b"x")
    mine = store.root / "tmp" / f"obj-{local._writer_name()}-1-1"  # this process: alive
    mine.write_bytes(b"x")
    # a writer where /proc could not be read (a chroot, a minimal container) recorded no start time:
    # it cannot be told gone, whatever its pid (a review had such a running import's files removed)
    no_proc = store.root / "tmp" / f"obj-999999--{local._HOST}-1-1"
    no_proc.write_bytes(b"x")
    assert store.clean_tmp() == 1
    assert not gone.exists() and elsewhere.exists() and mine.exists() and no_proc.exists()


def test_scratch_directories_follow_the_temp_file_rule(store: LocalStore) -> None:
    """push and pull staged their archive in $TMPDIR/graven-push-* (graven-pull-*): a SIGKILL left
    it there for good, and a large pull could fill a small tmpfs /tmp. They stage in the store's tmp/
    now, in a directory named as temp files are, which clean_tmp removes as it removes those."""
    import stat

    tmp = store.root / "tmp"
    with store.scratch_dir("pull") as scratch:
        assert scratch.parent == tmp and stat.S_IMODE(scratch.stat().st_mode) == 0o700
        (scratch / "artifact.tar.zst").write_bytes(b"x" * 1000)
        for item in (scratch / "artifact.tar.zst", scratch):
            os.utime(item, (0, 0))  # as if started two days ago: still at work, so kept
        assert store.clean_tmp() == 0 and scratch.exists()
    assert not scratch.exists()  # removed when the block ends

    def left(name: str, *, old: bool, fresh_file: bool = False) -> Path:
        entry = tmp / name
        entry.mkdir(0o700)
        (entry / "artifact.tar.zst").write_bytes(b"x" * 1000)
        if old:
            for item in (entry / "artifact.tar.zst", entry):
                if not (fresh_file and item != entry):
                    os.utime(item, (0, 0))
        return entry

    gone = left(f"pull-999999-77-{local._HOST}-abc", old=False)  # no such pid here: at once
    reused = left(f"push-{os.getpid()}-1-{local._HOST}-abc", old=False)  # our pid, another start
    elsewhere = left("pull-999999-77-0badf00d-abc", old=False)  # another host: a day
    writing = left("pull-999999-77-0badf00d-def", old=True, fresh_file=True)  # its file still grows
    abandoned = left("push-999999-77-0badf00d-ghi", old=True)
    assert store.clean_tmp() == 3
    assert not gone.exists() and not reused.exists() and not abandoned.exists()
    assert elsewhere.exists() and writing.exists()


def test_a_store_that_cannot_be_made_is_one_line_without_python_s_error_text(tmp_path: Path) -> None:
    """A file system review saw "[Errno 28] No space left on device: '...'" in this message."""
    from graven.errors import BackendError

    (tmp_path / "home").write_text("a file where a directory goes")
    root = tmp_path / "home" / "objects"
    with pytest.raises(BackendError) as caught:
        LocalStore.at(root)
    message = caught.value.message
    assert "[Errno" not in message and "\n" not in message, message
    assert message.startswith(f"cannot create the object store at {root}: Not a directory"), message


def test_a_new_directory_of_the_store_is_durable_before_an_object_is_published_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object is linked into sha256/ab/ and that directory is fsynced, but a fan-out directory made
    for it (and the store's own directories) had no fsync of the directory that names it: after a
    power failure the new directory, and every object in it, could be gone while the database row
    that names them, committed after the put, stayed."""
    synced: list[Path] = []
    real = local._fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(local, "_fsync_dir", fsync_dir)
    root = tmp_path / "objects"
    store = LocalStore.at(root)
    assert synced == [root]
    digest = store.put(b"first object")
    assert synced[1:] == [root / "sha256", store.loose_path(digest).parent]
    synced.clear()
    # content whose digest falls in the same fan-out directory
    same = next(b"%d" % i for i in range(10_000) if sha256_digest(b"%d" % i).hex[:2] == digest.hex[:2])
    store.put(same)
    assert synced == [store.loose_path(digest).parent]  # an existing fan-out directory: no extra fsync


@pytest.mark.parametrize("how", ["put_stream", "batch"])
def test_a_large_object_put_again_is_made_durable_by_its_second_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The writer that finds a large object already there and intact (a build or an import that adds
    a stored file again) returned without an fsync of its directory: when the first writer was killed
    between its link and that fsync, nothing made the entry durable, yet the second writer's database
    row, committed next, named it (a power failure could keep the row and lose the object)."""
    import io

    store = LocalStore.at(tmp_path / "objects")
    data = os.urandom(LOOSE_THRESHOLD + 3)
    directory = store.loose_path(sha256_digest(data)).parent
    real = local._fsync_dir

    def killed(path: Path) -> None:
        if Path(path) == directory:
            raise KeyboardInterrupt  # the first writer: linked, killed before the directory's fsync
        real(path)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(local, "_fsync_dir", killed)
        store.put_stream(io.BytesIO(data))
    digest = sha256_digest(data)
    assert store.loose_path(digest).exists()  # there (in the page cache), not yet durable
    synced: list[Path] = []

    def fsync_dir(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(local, "_fsync_dir", fsync_dir)
    if how == "put_stream":
        assert store.put_stream(io.BytesIO(data)) == digest
    else:
        with store.batch() as batch:
            assert batch.add_stream(io.BytesIO(data), len(data)) == digest
    assert synced == [directory]
    assert store.read(digest) == data
    assert list((store.root / "tmp").iterdir()) == []
    store.close()


def _where(table: local._Table, digest: Digest) -> local._Location:
    location = table.where(digest.raw)
    assert location is not None, f"{digest} is not listed"
    return location
