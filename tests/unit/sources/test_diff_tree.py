"""parse_diff_tree: git's raw -z records, and None for anything unexpected (the build then reads the
whole tree, which names what is wrong)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from graven.sources.git import GitChange, parse_diff_tree

OLD = "1" * 40
NEW = "2" * 40
ZERO = "0" * 40


def _record(modes: str, old: str, new: str, status: str, path: str) -> bytes:
    return f":{modes} {old} {new} {status}\0{path}\0".encode()


def test_each_status_gives_the_new_mode_and_object() -> None:
    out = (
        _record("000000 100644", ZERO, NEW, "A", "app/new.py")
        + _record("100644 100755", OLD, NEW, "M", "bin/run")
        + _record("100644 120000", OLD, NEW, "T", "app/link")
        + _record("100644 000000", OLD, ZERO, "D", "gone é.txt")
    )
    assert parse_diff_tree(out) == [
        GitChange("A", "100644", NEW, "app/new.py"),
        GitChange("M", "100755", NEW, "bin/run"),
        GitChange("T", "120000", NEW, "app/link"),
        GitChange("D", "000000", ZERO, "gone é.txt"),
    ]


def test_no_change_is_an_empty_list() -> None:
    assert parse_diff_tree(b"") == []


def test_unexpected_output_is_none() -> None:
    good = _record("100644 100644", OLD, NEW, "M", "a")
    assert parse_diff_tree(good[:-1]) is None  # no final NUL
    assert parse_diff_tree(good + b"x\0") is None  # a record without its path
    assert parse_diff_tree(_record("100644 100644", OLD, NEW, "R100", "a")) is None  # a rename
    assert parse_diff_tree(good.replace(b":", b"")) is None
    assert parse_diff_tree(b":100644 100644 " + OLD.encode() + b" " + NEW.encode() + b" M\0\xff\0") is None


@given(st.binary(max_size=200))
def test_any_bytes_give_a_list_or_none(data: bytes) -> None:
    result = parse_diff_tree(data)
    assert result is None or all(change.status in "AMTD" for change in result)


@given(
    st.lists(
        st.tuples(st.sampled_from("AMTD"), st.text(min_size=1, max_size=20).filter(lambda t: "\0" not in t))
    )
)
def test_well_formed_records_round_trip(records: list[tuple[str, str]]) -> None:
    out = b"".join(_record("100644 100644", OLD, NEW, status, path) for status, path in records)
    assert parse_diff_tree(out) == [GitChange(status, "100644", NEW, path) for status, path in records]
