"""Glob semantics of include/exclude."""

from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.core.globs import GlobSet, Selection, compile_glob


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("app/**", "app/main.py", True),
        ("app/**", "app/a/b/c.py", True),
        ("app/**", "application/x", False),
        ("app/", "app/x/y", True),
        ("**/*.md", "README.md", True),
        ("**/*.md", "docs/a/b.md", True),
        ("**/*.md", "docs/a/b.mdx", False),
        ("*.md", "docs/a.md", False),
        ("*.md", "a.md", True),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/z", "a/b/c/zz", False),
        ("file?.txt", "file1.txt", True),
        ("file?.txt", "file/.txt", False),
        ("[ab].py", "a.py", True),
        ("[!ab].py", "a.py", False),
        ("[!ab].py", "c.py", True),
        ("a.b", "axb", False),
        ("**", "anything/at/all", True),
        # a class is one character of a segment: never the "/" between two (a fuzzing review)
        ("a[!x]b", "a/b", False),
        ("a[!x]b", "a.b", True),
        ("a[+-0]b", "a/b", False),
        ("a[+-0]b", "a.b", True),
        ("config[!.]*", "config/prod.toml", False),
    ],
)
def test_compile_glob(pattern: str, path: str, expected: bool) -> None:
    assert (compile_glob(pattern).fullmatch(path) is not None) is expected


def test_empty_globset_matches_nothing() -> None:
    assert not GlobSet.of([]).matches("a")


def test_selection_subtracts_excludes() -> None:
    selection = Selection.of(["app/**", "config/**"], ["**/*.md"])
    assert selection.selects("app/main.py")
    assert not selection.selects("app/README.md")
    assert not selection.selects("tests/test_x.py")


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        (["**"], []),
        (["**"], ["**/*.md"]),
        (["app/**", "config/"], ["**/*.md", "app/secret/"]),
        ([], ["x"]),
        (["*.py"], ["*"]),
        (["[ab]/**"], ["a/?.txt"]),
    ],
)
def test_selection_is_include_minus_exclude(include: list[str], exclude: list[str]) -> None:
    selection = Selection.of(include, exclude)
    inc, exc = GlobSet.of(include), GlobSet.of(exclude)
    paths = ["a", "a.py", "a/x.txt", "a/b/c.md", "b/README.md", "app/main.py", "app/secret/k",
             "config/c.toml",
             "README.md", "app/x.md", "c/d", "a\nb", "a/b.txt"]  # fmt: skip
    for path in paths:
        assert selection.selects(path) is (inc.matches(path) and not exc.matches(path)), path
    assert selection.everything is (include == ["**"] and not exclude)


def test_a_pattern_ending_in_a_slash_names_the_directory_itself_never_a_file() -> None:
    """An empty directory is an entry: exclude = ["var/empty/"] left it in the artifact (a fuzzing
    review); a file of that name stays selected, as in a .gitignore."""
    excluded = Selection.of(["**"], ["var/empty/"])
    assert not excluded.selects_dir("var/empty")
    assert not excluded.selects("var/empty/x")
    assert excluded.selects("var/empty")  # a file named so
    assert excluded.selects_dir("var/emptyx")
    assert Selection.of(["**"], ["a/**"]).selects_dir("a")  # everything *below* a, not a
    included = Selection.of(["app/"], [])
    assert included.selects_dir("app") and included.selects("app/x") and not included.selects("app")


def _reference(pattern: str, path: str) -> bool:
    """What a glob means, by plain recursion over segments (slow, obviously right; within one segment
    fnmatch means the same)."""
    if pattern.endswith("/"):
        pattern += "**"
    globs, names = pattern.strip("/").split("/"), path.split("/")

    def walk(g: int, n: int) -> bool:
        if g == len(globs):
            return n == len(names)
        if globs[g] == "**":
            if g == len(globs) - 1:  # the last '**': everything below
                return n < len(names)
            return any(walk(g + 1, k) for k in range(n, len(names)))
        return n < len(names) and fnmatchcase(names[n], globs[g]) and walk(g + 1, n + 1)

    return walk(0, 0)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "b", "*", "?", "[ab]", "**", "*a", "a*b", "*a*", "*b*a*"]),
        min_size=1,
        max_size=5,
    ),
    st.lists(st.text(alphabet="ab", min_size=1, max_size=5), min_size=1, max_size=5),
)
def test_globs_match_what_they_mean(parts: list[str], names: list[str]) -> None:
    """The atomic groups that keep matching linear change no answer (a review: ReDoS)."""
    pattern = "/".join(part if part == "**" else part.replace("**", "*") for part in parts)
    path = "/".join(names)
    assert (compile_glob(pattern).fullmatch(path) is not None) is _reference(pattern, path), (pattern, path)
    assert GlobSet.of(["zz", pattern]).matches(path) is _reference(pattern, path)


# No wall-clock bound (a busy machine is slow at times): matched at once (ms), a backtracking pattern
# would not end in the lifetime of the machine, and the timeout (far from anything a match needs) ends
# the test instead of a hang.
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("*a" * 12 + "c", "a" * 250),
        ("**/" * 12 + "x", "/".join(["a"] * 200) + "/y"),
        ("**/*a*/" * 10 + "x", "/".join(["ab"] * 200) + "/y"),
        ("**/" + "*a" * 12 + "c/**/z", "/".join(["a" * 60] * 30)),
    ],
)
def test_a_hostile_glob_costs_no_more_than_a_plain_one(pattern: str, path: str) -> None:
    """A graven.toml in a commit names the globs that every path of the commit is matched against:
    ``*a*a*a*a*a*a*a*c`` took 35 s for one name of 60 bytes (a review: ReDoS hangs the build, and
    an ``[env] ignore`` glob hangs every drift check)."""
    assert not Selection.of([pattern], []).selects(path)
    assert GlobSet.of([pattern]).unmatched([path]) == [pattern]
