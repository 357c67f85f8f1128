"""Before a store loads its whole index, a few reads find their objects by binary search in the pack
index files: the same location the loaded index gives, nothing for what no pack holds, and every read
still verified."""

from __future__ import annotations

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
    assert found == [loaded.get(raw) for raw in probes]
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
