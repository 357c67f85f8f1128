"""Mutation-testing gaps in graven.model.manifest: the general (JSON) path of TreeManifest.from_bytes,
which only sees what the canonical fast path does not take (belongs in tests/unit/model/test_manifest.py).

Each document below is canonical JSON (sorted keys, no spaces), so the final "is it canonical" check
cannot be what refuses it: only the per-field checks of _entry_from_json / _from_json can."""

import json

import pytest

from graven.errors import InputError, UnsafeInputError
from graven.model.manifest import MAX_PATH, FileEntry, SymlinkEntry, TreeManifest, check_fs_limits

SHA = "ab" * 32


def _doc(*entries: object) -> bytes:
    return json.dumps(
        {"entries": list(entries), "format": "graven.tree/v1"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _file(**changes: object) -> dict[str, object]:
    return {"mode": "0644", "path": "a", "sha256": SHA, "size": 1, "type": "file", **changes}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # accepted without their check: the canonical re-serialization is byte-identical
        (_doc(_file(size=-1)), "negative size"),
        (_doc(_file(size=1.5)), "bad mode or size"),
        # crashes (TypeError, KeyError, AttributeError) instead of InputError without their check
        (b'{"entries":5,"format":"graven.tree/v1"}', "entries must be a list"),
        (_doc([1]), "not an object"),
        (_doc(_file(path=5)), "without a path"),
        (_doc(_file(sha256=5)), "bad sha256"),
        (_doc({"path": "a", "type": "file"}), "unknown or malformed"),
        (_doc({"path": "a", "type": "symlink"}), "unknown or malformed"),
        (_doc({"path": "a", "target": 5, "type": "symlink"}), "bad symlink target"),
        (_doc(_file(size=True)), "bad mode or size"),
    ],
)
def test_general_path_refuses_each_malformed_field(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TreeManifest.from_bytes(data)


@pytest.mark.parametrize("path", ['a"b', "a\\b", "a\u2028b"])
def test_general_path_accepts_an_empty_file(path: str) -> None:
    # a path that needs escaping in JSON is parsed by the general path: a 0-byte file is valid there too
    manifest = TreeManifest.of([FileEntry(path, SHA, 0), FileEntry("b", SHA, 7, executable=True)])
    assert TreeManifest.from_bytes(manifest.to_bytes()) == manifest


def test_a_path_and_a_symlink_target_of_exactly_max_path_bytes_are_accepted() -> None:
    # (test_names_and_paths_at_the_limits_are_accepted builds a path of 4,082 bytes, not 4,096)
    path = "/".join(["d" * 200] * 20) + "/" + "z" * 76
    target = "x/" * 2047 + "yy"
    assert len(path.encode()) == len(target.encode()) == MAX_PATH
    check_fs_limits(TreeManifest.of([FileEntry(path, SHA, 1), SymlinkEntry("l", target)]))
    with pytest.raises(UnsafeInputError, match="symlink target of more than 4096 bytes"):
        check_fs_limits(TreeManifest.of([SymlinkEntry("l", target + "y")]))
    with pytest.raises(UnsafeInputError, match="a path of 4097 bytes"):
        check_fs_limits(TreeManifest.of([FileEntry(path + "z", SHA, 1)]))
