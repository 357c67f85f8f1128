"""Every event type of the audit log is named where the docs list them: docs/formats/log-v1.md (the
format) and ARCHITECTURE.md ("Every state change appends to the audit log ..."), which left out push."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graven.model.logentry import EVENT_TYPES

PROJECT = Path(__file__).resolve().parents[3]


def _named(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+(?:-[a-z]+)*", text))


@pytest.mark.parametrize(
    ("doc", "start", "end"),
    [
        ("docs/formats/log-v1.md", "Every event (", ") is one entry"),
        ("ARCHITECTURE.md", "Every state change appends to the audit log", "An append writes the entry"),
    ],
)
def test_every_event_type_is_listed(doc: str, start: str, end: str) -> None:
    text = (PROJECT / doc).read_text(encoding="utf-8")
    listed = text[text.index(start) : text.index(end, text.index(start))]
    assert EVENT_TYPES - _named(listed) == set(), doc
