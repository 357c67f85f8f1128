"""A path graven import refuses is refused when an artifact is built: build, export and import agree
(a review built and exported a 300-byte name that no file system takes and import refuses). A stored
manifest is still read whatever its names (an artifact built before the check stays readable)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.errors import UnsafeInputError
from graven.model.manifest import MAX_NAME, MAX_PATH, FileEntry, SymlinkEntry, TreeManifest, check_fs_limits

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
    manifest = TreeManifest.of(entries)  # a valid tree ...
    assert TreeManifest.from_bytes(manifest.to_bytes()) == manifest  # ... read back when stored
    with pytest.raises(UnsafeInputError, match=message):
        check_fs_limits(manifest)  # ... that is not built


def test_names_and_paths_at_the_limits_are_accepted() -> None:
    at_limit = [
        FileEntry("a/" + "x" * MAX_NAME, SHA, 1),
        FileEntry("b/" + "é" * (MAX_NAME // 2), SHA, 1),
        FileEntry("/".join(["d" * 203] * 20)[: MAX_PATH - 3].rstrip("/") + "/zz", SHA, 1),
    ]
    check_fs_limits(TreeManifest.of(at_limit))


def test_a_name_of_4_byte_characters_is_measured_in_bytes() -> None:
    # 64 characters of 4 UTF-8 bytes: 256 bytes (the shortest name in characters that is too long)
    with pytest.raises(UnsafeInputError, match="a name of 256 bytes"):
        check_fs_limits(TreeManifest.of([FileEntry("\U0001f600" * 64, SHA, 1)]))
    check_fs_limits(TreeManifest.of([FileEntry("\U0001f600" * 63 + "abc", SHA, 1)]))  # 255 bytes


_NAME_CHARS = st.sampled_from(["x", "é", "€", "\U0001f600"])


@given(
    st.lists(
        st.lists(st.text(_NAME_CHARS, min_size=1, max_size=90), min_size=1, max_size=3).map("/".join),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_refused_exactly_when_a_name_is_over_255_bytes(paths: list[str]) -> None:
    # the same rule as a reference that measures every name (the check skips short paths)
    try:
        manifest = TreeManifest.of([FileEntry(p, SHA, 1) for p in paths])
    except UnsafeInputError:
        return  # not a tree (a path below a file): nothing to measure
    too_long = any(len(name.encode()) > MAX_NAME for path in paths for name in path.split("/"))
    if too_long:
        with pytest.raises(UnsafeInputError, match="a name of"):
            check_fs_limits(manifest)
    else:
        check_fs_limits(manifest)
