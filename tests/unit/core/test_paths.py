"""Path and symlink rules."""

import pytest

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
