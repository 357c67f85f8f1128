"""Properties of manifests: canonical bytes do not depend on input order, parsing round-trips."""

import json
import string
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from graven.core.globs import compile_glob
from graven.core.paths import check_path
from graven.errors import InputError, UnsafeInputError
from graven.model.manifest import (
    DirEntry,
    FileEntry,
    SymlinkEntry,
    TreeEntry,
    TreeManifest,
    _check_paths,
    _from_canonical,
    _from_json,
)

segment = st.text(alphabet=string.ascii_letters + string.digits + "._-é", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
sha = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def file_trees(draw: st.DrawFn) -> list[FileEntry]:
    chosen = draw(st.lists(paths, min_size=0, max_size=20, unique=True))
    # drop paths that are parents of others: a file cannot also be a directory
    leaves = [p for p in chosen if not any(o.startswith(p + "/") for o in chosen)]
    return [FileEntry(p, draw(sha), draw(st.integers(0, 2**40)), draw(st.booleans())) for p in leaves]


@settings(max_examples=200)
@given(file_trees(), st.randoms())
def test_order_does_not_change_the_digest(entries: list[FileEntry], rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert TreeManifest.of(entries).digest == TreeManifest.of(shuffled).digest


@settings(max_examples=200)
@given(file_trees())
def test_parse_round_trips(entries: list[FileEntry]) -> None:
    manifest = TreeManifest.of(entries)
    assert TreeManifest.from_bytes(manifest.to_bytes()) == manifest


@settings(max_examples=100)
@given(file_trees())
def test_any_change_changes_the_digest(entries: list[FileEntry]) -> None:
    if not entries:
        return
    manifest = TreeManifest.of(entries)
    first = entries[0]
    flipped = FileEntry(first.path, first.sha256, first.size, not first.executable)
    other = TreeManifest.of([flipped, *entries[1:]])
    assert other.digest != manifest.digest


@given(paths)
def test_double_star_matches_every_path(path: str) -> None:
    assert compile_glob("**").fullmatch(path)


@given(paths, paths)
def test_relative_links_inside_one_dir_are_accepted(a: str, b: str) -> None:
    target = b.rsplit("/", maxsplit=1)[-1]
    if a == target or a.startswith(target + "/"):
        return
    TreeManifest.of([SymlinkEntry(a, target)])


tricky = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=8
).filter(lambda s: s not in (".", "..") and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in s))


@settings(max_examples=300)
@given(st.lists(tricky, min_size=1, max_size=12, unique=True), sha, st.booleans())
def test_fast_serializer_equals_canonical_json(names: list[str], digest: str, executable: bool) -> None:
    from graven.model.manifest import DirEntry, canonical_json

    entries: list[TreeEntry] = [FileEntry(f"f/{n}", digest, len(n), executable) for n in names[:4]]
    entries += [SymlinkEntry(f"l/{n}", names[0]) for n in names[4:8]]
    entries += [DirEntry(f"d/{n}") for n in names[8:]]
    manifest = TreeManifest.of(entries)
    doc = {"entries": [e.to_json() for e in manifest.entries], "format": "graven.tree/v1"}
    assert manifest.to_bytes() == canonical_json(doc)


tricky_text = st.text(
    alphabet=st.sampled_from(["a", "é", "/", ".", '"', "\\", "\n", "\x00", "\x7f", " ", "\udc80"]), max_size=8
)


@settings(max_examples=300)
@given(st.lists(tricky_text, max_size=4))
def test_the_path_scan_refuses_exactly_what_check_path_refuses(paths: list[str]) -> None:
    def first_error(check: Callable[[str], None], items: list[str]) -> str | None:
        try:
            for item in items:
                check(item)
        except UnsafeInputError as exc:
            return str(exc)
        return None

    assert first_error(lambda _: _check_paths(paths), [""]) == first_error(check_path, paths)


# (no surrogates here: the general parser fails on them with UnicodeEncodeError, a separate matter)
json_text = tricky_text.filter(lambda s: "\udc80" not in s)


@settings(max_examples=200)
@given(st.lists(st.tuples(json_text, st.sampled_from(["file", "dir", "link"])), max_size=5))
def test_fast_and_general_parsers_agree(items: list[tuple[str, str]]) -> None:
    entries = [
        FileEntry(p, "ab" * 32, 3)
        if kind == "file"
        else DirEntry(p)
        if kind == "dir"
        else SymlinkEntry(p, "a")
        for p, kind in items
    ]
    entries.sort(key=lambda e: e.path.encode())
    doc = {"entries": [e.to_json() for e in entries], "format": "graven.tree/v1"}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        expected: TreeManifest | None = _from_json(data)
    except InputError:
        expected = None
    fast = _from_canonical(data)
    assert fast is None or fast == expected
    if expected is not None:
        assert TreeManifest.from_bytes(data) == expected
        escapes = any(c in '"\\' or ord(c) < 0x20 for e in entries for c in e.path)
        assert fast is not None or escapes or not entries  # the rest take the general path
