"""`graven log` on a long log writes one entry at a time (a review measured 456 MB for `log --json`
of 160,000 entries): the streaming writers print what the whole-list ones printed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graven.cli.output import emit_json, emit_json_list, print_rows, print_table

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(st.lists(json_values, max_size=6))
def test_a_streamed_json_list_is_the_list_printed_whole(items: list[object]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        whole = _captured(patch, lambda: emit_json(items))
        streamed = _captured(patch, lambda: emit_json_list(iter(items)))
    assert streamed == whole
    assert json.loads(streamed) == items


cells = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)


@given(st.lists(st.tuples(cells, cells, cells), max_size=12))
def test_rows_within_the_sample_are_the_table(rows: list[tuple[str, str, str]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        table = _captured(patch, lambda: print_table(["a", "bb", "c"], rows))
        streamed = _captured(patch, lambda: print_rows(["a", "bb", "c"], iter(rows)))
    assert streamed == table


def test_rows_past_the_sample_keep_its_widths_and_lose_nothing() -> None:
    rows = [(str(i), "x" * (1 if i < 3 else 9), "\x1b[2J") for i in range(6)]
    with pytest.MonkeyPatch.context() as patch:
        out = _captured(patch, lambda: print_rows(["n", "v", "r"], iter(rows), sample=3))
    lines = out.splitlines()
    assert lines[0] == "N  V  R"
    assert lines[1] == "0  x  \\x1b[2J"  # escaped, as in every table
    assert lines[4] == "3  xxxxxxxxx  \\x1b[2J"  # wider than the sample: only its row moves
    assert len(lines) == 7


def _captured(patch: pytest.MonkeyPatch, write: object) -> str:
    import io
    import sys

    buffer = io.StringIO()
    patch.setattr(sys, "stdout", buffer)
    write()  # type: ignore[operator]
    patch.undo()
    return buffer.getvalue()


def test_json_of_a_name_that_is_not_utf8_is_utf8() -> None:
    """A path decoded with surrogate escapes (os.fsdecode of b"caf\\xe9") is printed as ``\\xe9``,
    in keys and values, whole or streamed: the document stays UTF-8 JSON."""
    value = {"output": "/srv/caf\udce9.tar", "caf\udce9": ["\udce9", 1], "ok": "caf\u00e9"}
    expected = {"output": "/srv/caf\\xe9.tar", "caf\\xe9": ["\\xe9", 1], "ok": "caf\u00e9"}
    with pytest.MonkeyPatch.context() as patch:
        whole = _captured(patch, lambda: emit_json(value))
        streamed = _captured(patch, lambda: emit_json_list(iter([value])))
    for text in (whole, streamed):
        text.encode("utf-8")
    assert json.loads(whole) == expected
    assert json.loads(streamed) == [expected]
