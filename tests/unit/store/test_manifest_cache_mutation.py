"""Mutation-testing gaps in graven.store.manifest_cache.decode (belongs next to
test_well_tagged_but_malformed_is_refused in tests/unit/store/test_manifest_cache.py).

That test's "unknown kind" turns a *file* into "q", so the shas and strings no longer line up and a
later check refuses it: the kind check itself, the empty-string check and the negative-size check could
each be deleted unnoticed (decode would then return a DirEntry for "q", a DirEntry(""), a size of -1)."""

from __future__ import annotations

import pytest

from graven.deploy.recordkey import tag
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest
from graven.store.manifest_cache import FORMAT, RULES, decode, encode

KEY = bytes(range(32))
DIGEST = "ab" * 32


def _sample() -> TreeManifest:
    return TreeManifest.of(
        [
            FileEntry("app/main.py", "01" * 32, 120),
            FileEntry("bin/run", "02" * 32, 0, True),
            SymlinkEntry("app/current", "main.py"),
            DirEntry("var/empty"),
            FileEntry("z\u00e9/na\u00efve \u2713.txt", "03" * 32, 2**40),
        ]
    )


def _body() -> tuple[bytes, int]:
    good = encode(KEY, DIGEST, _sample().entries)[:-32]
    head = len(FORMAT) + len(RULES) + 66 + 8  # where the kinds start
    assert good[head : head + 5] == b"lfxdf"  # app/current, app/main.py, bin/run, var/empty, zé/...
    return good, head


def _changed(
    kind: bytes | None = None, size: int | None = None, strings: tuple[bytes, bytes] | None = None
) -> bytes:
    body, head = _body()
    if kind is not None:  # the directory's kind: no sha and one string, so everything still lines up
        body = body[: head + 3] + kind + body[head + 4 :]
    if size is not None:  # app/main.py's size (the second entry; sizes are little-endian int64)
        at = head + 5 + 8
        body = body[:at] + size.to_bytes(8, "little", signed=True) + body[at + 8 :]
    if strings is not None:
        assert body.count(strings[0]) == 1
        body = body.replace(*strings)
    return body + tag(KEY, body)


def test_the_unchanged_body_decodes() -> None:
    body, _ = _body()
    assert decode(KEY, DIGEST, body + tag(KEY, body)) == _sample().entries
    assert decode(KEY, DIGEST, _changed(kind=b"d")) == _sample().entries


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: _changed(kind=b"q"), id="unknown kind where the counts still agree"),
        pytest.param(lambda: _changed(size=-1), id="negative file size"),
        pytest.param(lambda: _changed(strings=(b"\0var/empty\0", b"\0\0")), id="empty path"),
    ],
)
def test_well_tagged_but_malformed_entries_are_refused(data) -> None:  # type: ignore[no-untyped-def]
    assert decode(KEY, DIGEST, data()) is None
