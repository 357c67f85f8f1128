"""Path and symlink rules."""

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.core.paths import check_path, check_unique_nfc, decode_path, link_stays_inside
from graven.errors import UnsafeInputError


@pytest.mark.parametrize("path", ["", "/etc/passwd", "a/../b", "./a", "a//b", "a/", "..", "a\nb", "a\x7f"])
def test_check_path_refuses(path: str) -> None:
    with pytest.raises(UnsafeInputError):
        check_path(path)


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", ".hidden", "a/..b", "a/b..", "é/ü.txt", "a b"])
def test_check_path_accepts(path: str) -> None:
    check_path(path)


def test_decode_path_refuses_invalid_utf8() -> None:
    with pytest.raises(UnsafeInputError, match="not valid UTF-8"):
        decode_path(b"\xff.txt")


def test_nfc_collision_is_refused() -> None:
    with pytest.raises(UnsafeInputError, match="NFC"):
        check_unique_nfc(["e\u0301.txt", "\u00e9.txt"])
    check_unique_nfc(["a", "b", "\u00e9.txt"])


@pytest.mark.parametrize(
    ("path", "target", "links", "inside"),
    [
        ("a/link", "../b", {}, True),
        ("a/link", "../../b", {}, False),
        ("link", "..", {}, False),
        ("link", "/etc", {}, False),
        ("link", "", {}, False),
        ("link", "a/b/../c", {}, True),
        # each harmless alone, escaping together: d -> . and e -> d/..
        ("e", "d/..", {"d": "."}, False),
        ("e", "d/x", {"d": "sub/deeper"}, True),
        ("e", "d/../..", {"d": "sub/deeper"}, True),
        ("e", "d/../../..", {"d": "sub/deeper"}, False),
        ("e", "d", {"d": "/etc"}, False),
        # a loop never resolves, so it cannot escape
        ("x", "y", {"x": "y", "y": "x"}, True),
    ],
)
def test_link_stays_inside(path: str, target: str, links: dict[str, str], inside: bool) -> None:
    assert link_stays_inside(path, target, {**links, path: target}) is inside


def _reference_check_path(path: str) -> None:
    """check_path as it was written before the one-regex fast path: the two must agree exactly."""
    import re

    if not path:
        raise UnsafeInputError("empty path")
    if path.startswith("/"):
        raise UnsafeInputError(f"{path}: absolute paths are not allowed")
    if re.search("[\ud800-\udfff]", path):
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise UnsafeInputError(f"{shown}: file name is not valid UTF-8; rename it")
    if re.search(r"[\x00-\x1f\x7f]", path):
        raise UnsafeInputError(f"{path!r}: control characters are not allowed in paths")
    bad = re.search(r"(?:^|/)(\.{0,2})(?:/|$)", path)
    if bad:
        raise UnsafeInputError(f"{path}: '{bad.group(1)}' segments are not allowed in paths")


def _outcome(check: Callable[[str], None], path: str) -> str | None:
    try:
        check(path)
    except UnsafeInputError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    "path",
    ["a\udcffb", "a/\x00", "\t", "a/.", "./", "/", ".", "a/b/..", "a/.../b", "a..", "a\n", "x/\x1f/y", "é"],
)
def test_check_path_matches_the_reference(path: str) -> None:
    assert _outcome(check_path, path) == _outcome(_reference_check_path, path)


@given(
    st.text(alphabet=st.sampled_from(["a", "é", ".", "/", "\n", "\x7f", "\x00", "\udcff", " "]), max_size=8)
)
def test_check_path_matches_the_reference_everywhere(path: str) -> None:
    assert _outcome(check_path, path) == _outcome(_reference_check_path, path)


def test_check_path_refuses_any_surrogate() -> None:
    with pytest.raises(UnsafeInputError, match=r"a\\ud800: file name is not valid UTF-8"):
        check_path("a\ud800")  # not one that surrogateescape makes: refused, not a UnicodeEncodeError
