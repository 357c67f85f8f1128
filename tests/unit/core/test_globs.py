"""Glob semantics of include/exclude."""

import pytest

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
