"""Paths that a case-insensitive file system (a casefold directory, vfat, exFAT) takes for one name.

Such an artifact is valid (git and Linux keep both ``README`` and ``readme``), so building it is not
refused; but a deploy into a directory that folds case could write only one of the two. The pairs
are what the deploy names when the file system refused the second name."""

from __future__ import annotations

from graven.core.paths import folded_collisions


def test_two_files_that_differ_only_in_case_are_a_pair() -> None:
    assert folded_collisions(["app/README", "app/main.py", "app/readme"]) == [("app/README", "app/readme")]


def test_directories_that_differ_only_in_case_are_a_pair_too() -> None:
    pairs = folded_collisions(["App/x", "app/y"])
    assert pairs[0] == ("App", "app")


def test_a_file_and_a_directory_of_one_folded_name_are_a_pair() -> None:
    assert folded_collisions(["Docs", "docs/index.md"]) == [("docs", "Docs")]


def test_unicode_case_and_normalization_fold_as_ext4_casefold_does() -> None:
    assert folded_collisions(["STRASSE.txt", "straße.txt"]) == [("STRASSE.txt", "straße.txt")]
    assert folded_collisions(["Ä.txt", "a\u0308.txt"]) == [("Ä.txt", "a\u0308.txt")]


def test_distinct_names_are_no_pair() -> None:
    assert folded_collisions(["a/b", "a/c", "ab", "b/a", "README.md", "README"]) == []
