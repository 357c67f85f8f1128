"""The graven.tree/v1 manifest: canonical bytes, validation, parsing."""

import json

import pytest

from graven.errors import InputError, UnsafeInputError
from graven.model import manifest as manifest_module
from graven.model.digest import Digest, sha256_digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest

SHA = "ab" * 32


def test_golden_manifest_bytes_and_digest() -> None:
    manifest = TreeManifest.of(
        [
            FileEntry("b.sh", SHA, 10, executable=True),
            SymlinkEntry("a", "b.sh"),
            DirEntry("var/empty"),
        ]
    )
    expected = (
        b'{"entries":[{"path":"a","target":"b.sh","type":"symlink"},'
        b'{"mode":"0755","path":"b.sh","sha256":"' + SHA.encode() + b'","size":10,"type":"file"},'
        b'{"path":"var/empty","type":"dir"}],"format":"graven.tree/v1"}'
    )
    assert manifest.to_bytes() == expected
    assert manifest.digest == sha256_digest(expected)
    # as docs/formats/tree-v1.md gives them to an independent implementation
    assert len(expected) == 249
    assert str(manifest.digest) == "sha256:8f01db26e0a904fda7cda1a5b386e54bd4f29e24ceacb7377ceb337e2572783f"


def test_entries_sort_by_utf8_bytes_not_code_points() -> None:
    # U+FF21 (3 UTF-8 bytes starting 0xEF) sorts after U+00E9 (0xC3 ...) by bytes
    paths = [
        e.path for e in TreeManifest.of([FileEntry(p, SHA, 1) for p in ["\uff21", "\u00e9", "z"]]).entries
    ]
    assert paths == ["z", "\u00e9", "\uff21"]


def test_round_trip() -> None:
    manifest = TreeManifest.of([FileEntry("x/y", SHA, 3), SymlinkEntry("l", "x/y")])
    assert TreeManifest.from_bytes(manifest.to_bytes()) == manifest


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"entries":[],"format":"graven.tree/v2"}',
        b'{"entries":[], "format":"graven.tree/v1"}',  # not canonical (space)
        b'{"entries":[{"path":"a","type":"fifo"}],"format":"graven.tree/v1"}',
        b'{"entries":[{"mode":"0600","path":"a","sha256":"' + SHA.encode() + b'","size":1,"type":"file"}],'
        b'"format":"graven.tree/v1"}',
        b'{"entries":[{"mode":"0644","path":"a","sha256":"xyz","size":1,"type":"file"}],'
        b'"format":"graven.tree/v1"}',
        # uppercase hex: a second manifest (digest) of the same content
        b'{"entries":[{"mode":"0644","path":"a","sha256":"' + SHA.upper().encode() + b'","size":1,'
        b'"type":"file"}],"format":"graven.tree/v1"}',
        b'{"entries":[],"extra":1,"format":"graven.tree/v1"}',
    ],
)
def test_from_bytes_refuses_malformed(data: bytes) -> None:
    with pytest.raises(InputError):
        TreeManifest.from_bytes(data)


def test_refuses_unsorted_input_bytes() -> None:
    good = TreeManifest.of([FileEntry("a", SHA, 1), FileEntry("b", SHA, 1)])
    doc = json.loads(good.to_bytes())
    doc["entries"].reverse()
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(InputError, match="canonical"):
        TreeManifest.from_bytes(data)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([FileEntry("a", SHA, 1), FileEntry("a", SHA, 2)], "duplicate"),
        ([FileEntry("a", SHA, 1), FileEntry("a/b", SHA, 1)], "not a directory"),
        ([SymlinkEntry("l", "d"), FileEntry("l/x", SHA, 1)], "not a directory"),
        ([DirEntry("d"), FileEntry("d/x", SHA, 1)], "empty directory"),
        ([SymlinkEntry("l", "/etc/passwd")], "absolute symlink"),
        ([SymlinkEntry("a/l", "../../x")], "escapes"),
        ([SymlinkEntry("d", "."), SymlinkEntry("e", "d/..")], "escapes"),
        ([SymlinkEntry("l", "")], "symlink with an empty target"),
        ([FileEntry("e\u0301", SHA, 1), FileEntry("\u00e9", SHA, 1)], "NFC"),
        ([FileEntry("../x", SHA, 1)], "segments"),
    ],
)
def test_of_refuses_unsafe_trees(entries: list, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UnsafeInputError, match=message):
        TreeManifest.of(entries)


def test_digest_parse() -> None:
    d = Digest.parse("sha256:" + SHA)
    assert str(d) == "sha256:" + SHA
    assert Digest.parse(SHA) == d
    with pytest.raises(InputError):
        Digest.parse("sha256:abc")
    with pytest.raises(InputError):
        Digest.parse("md5:" + SHA)
    # lowercase only: an uppercase digest would name another store object and give one content two
    # manifests (a file's sha256 in a manifest is checked with Digest)
    for text in ("sha256:" + SHA.upper(), SHA.upper(), "SHA256:" + SHA):
        with pytest.raises(InputError, match="not a sha256 digest"):
            Digest.parse(text)
    with pytest.raises(InputError, match="not a sha256 digest"):
        Digest(SHA.upper())


def _canonical(entries: list) -> bytes:  # type: ignore[type-arg]
    doc = {"entries": [e.to_json() for e in entries], "format": "graven.tree/v1"}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "entries",
    [
        [FileEntry('say "hi"', SHA, 1), FileEntry("x\\y", SHA, 2)],  # escapes: the general path
        [FileEntry("caf\u00e9", SHA, 1), SymlinkEntry("l", "caf\u00e9"), DirEntry("z/empty")],
        [],
    ],
)
def test_both_parsers_read_canonical_manifests(entries: list) -> None:  # type: ignore[type-arg]
    data = _canonical(sorted(entries, key=lambda e: e.path.encode()))
    manifest = TreeManifest.from_bytes(data)
    assert manifest == manifest_module._from_json(data)
    assert manifest.to_bytes() == data
    assert TreeManifest(manifest.entries).to_bytes() == data


@pytest.mark.parametrize(
    "data",
    [
        _canonical([FileEntry("a", SHA, 1)]).replace(b"},", b"}, ").replace(b"[{", b"[ {"),
        _canonical([FileEntry("a", SHA, 1), FileEntry("b", SHA, 1)]).replace(b"},{", b"},,{"),
        _canonical([FileEntry("a", SHA, 1), FileEntry("b", SHA, 1)]).replace(b"},{", b"}{"),
        _canonical([FileEntry("a", SHA, 1)]).replace(b'"size":1', b'"size":01'),
        _canonical([FileEntry("a", SHA, 1)]).replace(b"[", b"[[", 1),
        _canonical([FileEntry("b", SHA, 1)])[:-1] + b',"x":1}',
        _canonical([FileEntry("a/b", SHA, 1), FileEntry("a", SHA, 1)]),  # unsorted and unsafe
        _canonical([FileEntry("a/../b", SHA, 1)]),
        _canonical([FileEntry("b", SHA, 1), FileEntry("a", SHA, 1)]),  # unsorted
    ],
)
def test_fast_parser_accepts_only_what_the_general_one_accepts(data: bytes) -> None:
    assert manifest_module._from_canonical(data) is None
    with pytest.raises(InputError):
        manifest_module._from_json(data)


@pytest.mark.parametrize(
    "entry",
    [
        '{"path":"a\\udc80","type":"dir"}',
        '{"path":"l","target":"x\\ud800","type":"symlink"}',
    ],
)
def test_lone_surrogates_in_a_manifest_are_refused_not_crashed_on(entry: str) -> None:
    data = ('{"entries":[' + entry + '],"format":"graven.tree/v1"}').encode()
    with pytest.raises(UnsafeInputError, match="not valid UTF-8"):
        TreeManifest.from_bytes(data)
