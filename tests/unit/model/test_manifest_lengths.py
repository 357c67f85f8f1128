"""A path graven import refuses is refused when the manifest is made: build, export and import agree
(a review built and exported a 300-byte name that no file system takes and import refuses)."""

from __future__ import annotations

import pytest

from graven.errors import UnsafeInputError
from graven.model.manifest import MAX_NAME, MAX_PATH, FileEntry, SymlinkEntry, TreeManifest

SHA = "0" * 64


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([FileEntry("a/" + "x" * (MAX_NAME + 1), SHA, 1)], "a name of 256 bytes; at most 255"),
        ([FileEntry("a/" + "é" * 128, SHA, 1)], "a name of 256 bytes"),  # bytes, not characters
        ([FileEntry("/".join(["d" * 200] * 21), SHA, 1)], "a path of 4220 bytes; at most 4096"),
        (
            [FileEntry("a", SHA, 1), SymlinkEntry("l", "a/" + "../a/" * 900)],
            "l: a symlink target of more than 4096 bytes",
        ),
    ],
)
def test_names_paths_and_targets_past_the_file_system_limits_are_refused(
    entries: list[FileEntry | SymlinkEntry], message: str
) -> None:
    with pytest.raises(UnsafeInputError, match=message):
        TreeManifest.of(entries)


def test_names_and_paths_at_the_limits_are_accepted() -> None:
    at_limit = [
        FileEntry("a/" + "x" * MAX_NAME, SHA, 1),
        FileEntry("b/" + "é" * (MAX_NAME // 2), SHA, 1),
        FileEntry("/".join(["d" * 203] * 20)[: MAX_PATH - 3].rstrip("/") + "/zz", SHA, 1),
    ]
    manifest = TreeManifest.of(at_limit)
    assert TreeManifest.from_bytes(manifest.to_bytes()) == manifest
