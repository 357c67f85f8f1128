"""Paths git refuses in a tree: through ``.git`` or a name git takes for it (``.GIT``, ``git~1``,
``.git.``, ``.g\\u200cit``: graven.core.paths.dotgit_reason), and symlinks git takes for ``.gitmodules``
(gitmodules_reason). The one rule (through_dotgit, refused_by_git) that a commit's tree, a build's
outputs and an imported archive are refused by. A stored manifest that holds one is still read: a
graven before the rule could build (from steps) or import it.

The tables are git's own: t/t1450-fsck.sh ("fsck notices ..." and "fsck allows .Ňit"), the comments of
path.c is_ntfs_dotgit, and t/t0060-path-utils.sh ("match .gitmodules")."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.core.paths import (
    HFS_IGNORED,
    dotgit_reason,
    dotgit_refusal,
    gitmodules_link,
    gitmodules_reason,
    gitmodules_refusal,
    is_through_dotgit,
    refused_by_git,
    through_dotgit,
)
from graven.model.manifest import FileEntry, SymlinkEntry, TreeManifest

Z = "\u200c"  # ZERO WIDTH NON-JOINER: HFS+ ignores it, as git's tests use it

# t1450-fsck.sh: the tree entries fsck warns about (hasDotgit; "." and ".." are refused by check_path)
FSCK_NOTICES = [".git", ".GIT", f".gI{Z}T", ".Git", "git~1", ".git.", ".\\.GIT\\foobar", ".git\\foobar"]
# path.c is_ntfs_dotgit's comment and its code: trailing dots and spaces, the short name, streams
NTFS = [".git ", ".git . .", ".GIT..", "GIT~1", "Git~1 .", ".git::$INDEX_ALLOCATION", ".git:x", "git~1:$DATA"]
# utf8.c next_hfs_char: each code point HFS+ ignores, anywhere in the name (before the dot too)
HFS = [f".g{c}it" for c in sorted(HFS_IGNORED)] + ["\ufeff.git", f".git{Z}", f"{Z}.{Z}G{Z}I{Z}T{Z}"]
# deeper in a path, and after a backslash (a separator on Windows)
DEEP = ["a/.git", "a/GIT~1/config", "app/.git./hooks/x", f"x/.g{Z}it/config", "a\\GIT~1", "a\\b\\.git:x/y"]
REFUSED = FSCK_NOTICES + NTFS + HFS + DEEP

# names git takes for another name: t1450's ".Ňit", the short names git~2 and up (.git is the first entry
# of a fresh clone: it gets git~1), a stream or a space not at the end, HFS+'s ignorables with NTFS's
# trailing dot (neither file system takes it for .git), and other code points
ACCEPTED = [
    ".gitignore", ".github/workflows/ci.yml", "x.git", "a.git/b", "git/config", ".gi", "g.it", ".gitx/y",
    ".\u0147it", "git~2", "GIT~11", "git~0", "gitx~1", ".git~1", "git~1x", " .git", ".git x", "..git",
    f".g{Z}it.", ".git\u00a0", ".g\u0130t", "x\\.gitx", ".gitmodules", "git",
]  # fmt: skip


@pytest.mark.parametrize("path", REFUSED)
def test_names_git_takes_for_dotgit_are_refused(path: str) -> None:
    assert is_through_dotgit(path)
    assert through_dotgit(["a.txt", path, "z.txt"]) == path
    refusal = dotgit_refusal(path)
    assert refusal is not None and refusal.startswith("a path through .git")


@pytest.mark.parametrize("path", ACCEPTED)
def test_near_misses_are_other_names(path: str) -> None:
    assert dotgit_reason(path) is None
    assert through_dotgit(["a.txt", path, "z.txt"]) is None
    assert refused_by_git(["a.txt", path], []) is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (".git/config", ""),
        ("app/.GiT", "'.GiT' is .git where names ignore case: macOS, Windows"),
        ("a/GIT~1/x", "'GIT~1' is its short (8.3) name on Windows"),
        (".git. /x", "Windows drops the trailing dots and spaces of '.git. '"),
        (".git::$INDEX_ALLOCATION/config", "'.git::$INDEX_ALLOCATION' names it on Windows: an NTFS stream"),
        (f".g{Z}it/config", "macOS ignores U+200C in '.g\\u200cit'"),
        ("a\\.git", "Windows splits 'a\\\\.git' at each backslash"),
    ],
)
def test_the_refusal_says_what_makes_the_name_dotgit(path: str, why: str) -> None:
    assert dotgit_reason(path) == why
    assert dotgit_refusal(path) == (f"a path through .git ({why})" if why else "a path through .git")


def test_the_first_one_is_named_and_none_without_paths() -> None:
    assert through_dotgit(["a/.github", "b/.git/HEAD", ".git/config"]) == "b/.git/HEAD"
    assert through_dotgit(["a/.github", "b/GIT~1/HEAD", ".git/config"]) == "b/GIT~1/HEAD"
    assert through_dotgit([]) is None
    # no segment spans two paths: the joined search cannot take "a/." + "git" for one
    assert through_dotgit(["a/.", "git/x"]) is None
    assert through_dotgit(["a/git", "~1"]) is None
    assert through_dotgit(["x/", ".git"]) == ".git"
    assert through_dotgit(["x.git", "y/git~1"]) == "y/git~1"


# t0060-path-utils.sh, "match .gitmodules": what is_hfs_dotgitmodules or is_ntfs_dotgitmodules take ...
GITMODULES = [
    ".gitmodules", f".git{Z}modules", ".Gitmodules", ".gitmoduleS",
    ".gitmodules ", ".gitmodules.", ".gitmodules  ", ".gitmodules. ", ".gitmodules .", ".gitmodules..",
    ".gitmodules   ", ".gitmodules.  ", ".gitmodules . ", ".gitmodules  .",
    ".Gitmodules ", ".Gitmodules.", ".Gitmodules  ", ".Gitmodules. ", ".Gitmodules .", ".Gitmodules..",
    ".Gitmodules   ", ".Gitmodules.  ", ".Gitmodules . ", ".Gitmodules  .",
    "GITMOD~1", "gitmod~1", "GITMOD~2", "gitmod~3", "GITMOD~4",
    "GITMOD~1 ", "gitmod~2.", "GITMOD~3  ", "gitmod~4. ", "GITMOD~1 .", "gitmod~2   ", "GITMOD~3.  ",
    "gitmod~4 . ",
    "GI7EBA~1", "gi7eba~9", "GI7EB~10", "GI7EB~11", "GI7EB~99", "GI7E~100", "GI7E~101", "GI7E~999",
    "~1000000", "~9999999",
    ".gitmodules:$DATA", "gitmod~4 . :$DATA",
]  # fmt: skip
# ... and what they do not ("--not")
NOT_GITMODULES = [
    ".gitmodules x", ".gitmodules .x", " .gitmodules", "..gitmodules", "gitmodules", ".gitmodule",
    ".gitmodules x ", "GI7EBA~", "GI7EBA~0", "GI7EBA~~1", "GI7EBA~X", "Gx7EBA~1", "GI7EBX~1", "GI7EB~1",
    "GI7EB~01", "GI7EB~1X", ".gitmodules,:$DATA", "GITMOD~5", ".gitmodules\\x",
]  # fmt: skip


@pytest.mark.parametrize("name", GITMODULES)
def test_symlinks_git_takes_for_gitmodules_are_refused(name: str) -> None:
    link = f"sub/{name}"
    assert gitmodules_reason(link) is not None
    assert gitmodules_link(["a", link]) == link
    refusal = gitmodules_refusal(link)
    assert refusal is not None and refusal.startswith("a symlink named .gitmodules")
    # only as a symlink: a file named so is a .gitmodules git reads (and checks) as any other
    assert refused_by_git(["a", link], []) is None
    refused = refused_by_git(["a", link], [link])
    assert refused is not None and refused[:2] == (link, refusal) and "submodules" in refused[2]


@pytest.mark.parametrize("name", NOT_GITMODULES)
def test_other_symlinks_are_not_gitmodules(name: str) -> None:
    assert gitmodules_reason(f"sub/{name}") is None
    assert gitmodules_link([name]) is None


def test_only_the_link_s_own_name_counts_and_a_stream_after_a_backslash() -> None:
    assert gitmodules_reason(".gitmodules/x") is None  # a symlink below a directory so named
    assert gitmodules_reason("a\\.gitmodules") == "Windows splits 'a\\\\.gitmodules' at each backslash"
    assert gitmodules_reason("a\\.gitmodules:\\b") is not None  # the stream reads to the end
    assert gitmodules_reason(".gitattributes") is None and gitmodules_reason(".gitignore") is None


def _swap_ascii_case(text: str, seed: int) -> str:
    flips = random.Random(seed)
    return "".join(c.swapcase() if c.isascii() and flips.random() < 0.5 else c for c in text)


@given(st.sampled_from(REFUSED), st.integers())
def test_a_refused_name_stays_refused_in_any_ascii_case(path: str, seed: int) -> None:
    assert is_through_dotgit(_swap_ascii_case(path, seed))


@given(st.sampled_from(GITMODULES), st.integers())
def test_a_gitmodules_name_stays_one_in_any_ascii_case(name: str, seed: int) -> None:
    assert gitmodules_reason(_swap_ascii_case(name, seed)) is not None


@given(st.sampled_from([p for p in REFUSED if p.isascii()]), st.text(" .", max_size=4))
def test_windows_drops_trailing_dots_and_spaces_so_they_change_nothing(path: str, tail: str) -> None:
    assert is_through_dotgit(path + tail)


_ignorable = st.sampled_from(sorted(HFS_IGNORED))


@given(
    st.sampled_from([".git", "git~1"]),
    st.integers(),
    st.text(" .", max_size=3),
    st.one_of(st.none(), st.text(max_size=5)),
)
def test_ntfs_names_of_dotgit_are_refused_as_generated(
    head: str, seed: int, tail: str, stream: str | None
) -> None:
    """git's grammar for NTFS (is_ntfs_dotgit): .git or git~1 in any case, dots and spaces, a stream."""
    name = _swap_ascii_case(head, seed) + tail + ("" if stream is None else ":" + stream)
    assert dotgit_reason(f"a/{name}") is not None


@given(st.lists(st.tuples(st.integers(0, 4), _ignorable), max_size=4), st.integers())
def test_hfs_names_of_dotgit_are_refused_as_generated(inserts: list[tuple[int, str]], seed: int) -> None:
    """git's grammar for HFS+ (is_hfs_dotgit): .git in any case with ignored code points anywhere."""
    name = list(_swap_ascii_case(".git", seed))
    for at, char in inserts:
        name.insert(min(at, len(name)), char)
    assert dotgit_reason(f"a/{''.join(name)}/b") is not None


segment = st.sampled_from(
    [".git", ".GIT", ".Git", ".gitignore", "git", "a", ".", "x.git", "\u0130", "g", "GIT~1", "git~2",
     ".git.", ".git ", ".git:x", f".g{Z}it", f".g{Z}it.", "a\\.git", "\\", ":", "~1", ".gİt"]
)  # fmt: skip


@given(st.lists(st.lists(segment, min_size=1, max_size=4).map("/".join), max_size=6))
def test_the_joined_search_agrees_with_the_one_by_one_check(paths: list[str]) -> None:
    expected = next((p for p in paths if dotgit_reason(p) is not None), None)
    assert through_dotgit(paths) == expected


@given(st.lists(st.text(alphabet=st.sampled_from("./\\:~ 1gitGIT\u200cx"), max_size=12), max_size=5))
def test_the_joined_search_agrees_on_any_text(paths: list[str]) -> None:
    expected = next((p for p in paths if dotgit_reason(p) is not None), None)
    assert through_dotgit(paths) == expected


def test_a_stored_manifest_that_holds_one_is_still_read() -> None:
    """graven verify, deploy and export read what an earlier graven stored (a step build's outputs or
    an import of it could hold .git/config): the manifest format itself does not refuse it."""
    manifest = TreeManifest.of(
        [
            FileEntry(".git/config", "ab" * 32, 1, False),
            FileEntry("GIT~1/config", "ab" * 32, 1, False),
            SymlinkEntry("app/.GIT", "../.git"),
            SymlinkEntry("sub/.gitmodules", "../x"),
        ]
    )
    again = TreeManifest.from_bytes(manifest.to_bytes())
    assert [e.path for e in again.entries] == [".git/config", "GIT~1/config", "app/.GIT", "sub/.gitmodules"]
    assert again.digest == manifest.digest
