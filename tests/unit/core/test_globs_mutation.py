"""Mutation-testing gaps in graven.core.globs: character classes with a range next to other members
(belongs in tests/unit/core/test_globs.py). No test had a range followed by another member, so the
step past a range (``k += 3``) could skip or re-read a character, and a one-character range
(``[a-a]``) could be refused as reversed, unnoticed: an artifact would select other files."""

import pytest

from graven.core.globs import GlobError, check_glob, compile_glob


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("[a-cx]", "b", True),
        ("[a-cx]", "x", True),  # the member right after a range
        ("[a-cx]", "d", False),
        ("[a-c-e]", "-", True),  # after a range, "-e" is a "-" and an "e", not a range c-e
        ("[a-c-e]", "e", True),
        ("[a-c-e]", "d", False),
        ("[!a-cx]", "x", False),
        ("[!a-cx]", "y", True),
        ("[a-a]", "a", True),  # a one-character range is valid
        ("[a-a]", "b", False),
        ("f[0-9a-f][0-9a-f].txt", "f0e.txt", True),
    ],
)
def test_class_members_around_a_range(pattern: str, path: str, expected: bool) -> None:
    check_glob(pattern)
    assert (compile_glob(pattern).fullmatch(path) is not None) is expected


def test_only_a_reversed_range_is_refused() -> None:
    with pytest.raises(GlobError, match="bad character range 'b'-'a'"):
        check_glob("[b-a]")


@pytest.mark.parametrize(
    ("pattern", "never"),
    [("app/..", True), ("a/.", True), ("", True), ("app/..x", False), ("a/.b/", False)],
)
def test_never_matches_a_dot_segment_at_the_end(pattern: str, never: bool) -> None:
    # only a pattern ending in "/" gets "**" appended: "app/.." must not be read as "app/..**"
    from graven.core.globs import never_matches

    assert never_matches(pattern) is never
