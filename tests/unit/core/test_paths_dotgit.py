"""Paths through ``.git``: the one rule (graven.core.paths.through_dotgit) that a commit's tree, a build's
outputs and an imported archive are refused by. A stored manifest that holds one is still read: a
graven before the rule could build (from steps) or import it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.core.paths import is_through_dotgit, through_dotgit
from graven.model.manifest import FileEntry, SymlinkEntry, TreeManifest

THROUGH = [".git", ".git/config", ".GIT/config", "app/.Git", "a/b/.gIT/hooks/pre-commit", "x/.git"]
OTHER = [".gitignore", ".github/workflows/ci.yml", "x.git", "a.git/b", "git/config", ".gi", "g.it", ".gitx/y"]


@pytest.mark.parametrize("path", THROUGH)
def test_a_segment_git_in_any_case_goes_through_it(path: str) -> None:
    assert is_through_dotgit(path)
    assert through_dotgit(["a.txt", path, "z.txt"]) == path


@pytest.mark.parametrize("path", OTHER)
def test_other_names_do_not(path: str) -> None:
    assert not is_through_dotgit(path)
    assert through_dotgit(["a.txt", path, "z.txt"]) is None


def test_the_first_one_is_named_and_none_without_paths() -> None:
    assert through_dotgit(["a/.github", "b/.git/HEAD", ".git/config"]) == "b/.git/HEAD"
    assert through_dotgit([]) is None
    # no segment spans two paths: the joined search cannot take "a/." + "git" for one
    assert through_dotgit(["a/.", "git/x"]) is None
    assert through_dotgit(["x/", ".git"]) == ".git"


segment = st.sampled_from([".git", ".GIT", ".Git", ".gitignore", "git", "a", ".", "x.git", "\u0130", "g"])


@given(st.lists(st.lists(segment, min_size=1, max_size=4).map("/".join), max_size=6))
def test_the_joined_search_agrees_with_the_one_by_one_check(paths: list[str]) -> None:
    expected = next((p for p in paths if ".git" in [s.lower() for s in p.split("/")]), None)
    assert through_dotgit(paths) == expected


def test_a_stored_manifest_that_holds_one_is_still_read() -> None:
    """graven verify, deploy and export read what an earlier graven stored (a step build's outputs or
    an import of it could hold .git/config): the manifest format itself does not refuse it."""
    manifest = TreeManifest.of(
        [FileEntry(".git/config", "ab" * 32, 1, False), SymlinkEntry("app/.GIT", "../.git")]
    )
    again = TreeManifest.from_bytes(manifest.to_bytes())
    assert [e.path for e in again.entries] == [".git/config", "app/.GIT"]
    assert again.digest == manifest.digest
