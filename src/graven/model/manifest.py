"""The tree manifest, format ``graven.tree/v1``: what an artifact is, byte for byte.

Canonical JSON (sorted keys, no whitespace, UTF-8, integers only)::

    {"entries":[{"mode":"0644","path":"app/main.py","sha256":"<hex>","size":120,"type":"file"},
                {"path":"app/current","target":"main.py","type":"symlink"},
                {"path":"var/empty","type":"dir"}],
     "format":"graven.tree/v1"}

Entries are sorted by the UTF-8 bytes of their path. Only the executable bit of a file survives (0644 or
0755); directories appear only when empty. No times, owners or extended attributes. The artifact digest
is ``sha256:`` + the sha256 of these bytes. See docs/formats/tree-v1.md.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache, cached_property
from typing import Any, NamedTuple

from graven.core.paths import check_path, check_unique_nfc, display_path, implied_dirs, link_checker
from graven.core.record import Frozen, FrozenInstanceError
from graven.errors import GravenError, InputError, UnsafeInputError
from graven.model.digest import Digest, sha256_digest

__all__ = [
    "FORMAT",
    "MAX_NAME",
    "MAX_PATH",
    "DirEntry",
    "FileEntry",
    "SymlinkEntry",
    "TreeEntry",
    "TreeManifest",
    "canonical_json",
    "check_fs_limits",
    "unvalidated_entries",
]

FORMAT = "graven.tree/v1"


_encode_string: Callable[[str], str] = json.encoder.encode_basestring


def canonical_json(value: Any) -> bytes:
    """Serialize to canonical JSON (RFC 8785-compatible for strings, integers, lists and objects)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

# The entries are NamedTuples: a manifest of 7,000 files makes 7,000 of them each time it is read, and
# ``tuple.__new__(FileEntry, fields)`` costs a quarter of a hand-written ``__init__`` (~1.5 against ~6
# ms). They behave as the frozen dataclasses they replaced (tests/unit/deploy/test_startup_records.py):
# equal only to an entry of the same kind with the same fields (never to a plain tuple), hashable,
# and assignment raises FrozenInstanceError (the methods below, set on each class after it: a
# NamedTuple takes no base class of its own). Reading a field is as fast as a slot.


def _same_kind(entry: tuple[Any, ...], other: object) -> bool:
    return other.__class__ is entry.__class__ and tuple.__eq__(entry, other)


def _not_same_kind(entry: tuple[Any, ...], other: object) -> bool:
    return not _same_kind(entry, other)


def _refuse_assignment(_entry: object, name: str, _value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_deletion(_entry: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


class FileEntry(NamedTuple):
    """A regular file."""

    path: str
    sha256: str
    size: int
    executable: bool = False

    @property
    def mode(self) -> int:
        """0o755 or 0o644."""
        return 0o755 if self.executable else 0o644

    @property
    def digest(self) -> Digest:
        """The digest of the file's content."""
        return Digest(self.sha256)

    def to_json(self) -> dict[str, Any]:
        """The manifest form of this entry."""
        return {
            "mode": "0755" if self.executable else "0644",
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "type": "file",
        }


class SymlinkEntry(NamedTuple):
    """A relative symbolic link that stays inside the artifact."""

    path: str
    target: str

    def to_json(self) -> dict[str, Any]:
        """The manifest form of this entry."""
        return {"path": self.path, "target": self.target, "type": "symlink"}


class DirEntry(NamedTuple):
    """An empty directory (non-empty ones are implied by their contents)."""

    path: str

    def to_json(self) -> dict[str, Any]:
        """The manifest form of this entry."""
        return {"path": self.path, "type": "dir"}


_FROZEN_ENTRY = {
    "__eq__": _same_kind,
    "__ne__": _not_same_kind,
    "__setattr__": _refuse_assignment,
    "__delattr__": _refuse_deletion,
}
for _kind in (FileEntry, SymlinkEntry, DirEntry):
    for _name, _method in _FROZEN_ENTRY.items():
        setattr(_kind, _name, _method)  # set after the class is made: __hash__ stays tuple's


TreeEntry = FileEntry | SymlinkEntry | DirEntry


def _sort_key(entry: TreeEntry) -> bytes:
    # surrogatepass: a lone surrogate (refused by _validate, naming the path) must not crash the sort
    return entry.path.encode("utf-8", "surrogatepass")


class TreeManifest(Frozen):
    """A validated, sorted set of entries. Build with :meth:`of` or :meth:`from_bytes`."""

    # no __slots__: the cached properties live in the instance's __dict__
    _fields = ("entries",)
    entries: tuple[TreeEntry, ...]

    def __init__(self, entries: tuple[TreeEntry, ...]) -> None:
        _set(self, "entries", entries)

    @classmethod
    def of(cls, entries: Iterable[TreeEntry]) -> TreeManifest:
        """Sort and validate entries; refuse anything unsafe or ambiguous, naming the path."""
        ordered = tuple(sorted(entries, key=_sort_key))
        _validate(ordered)
        return cls(ordered)

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeManifest:
        """Parse canonical manifest bytes; anything that would not re-serialize identically is refused."""
        manifest = _from_canonical(data)
        return manifest if manifest is not None else _from_json(data)

    @cached_property
    def _bytes(self) -> bytes:
        # Equal to canonical_json() of the same document (a test holds them together), built by hand
        # because it runs for every build, verify and export of trees with many thousands of files.
        quote = _encode_string
        parts: list[str] = []
        for e in self.entries:
            if isinstance(e, FileEntry):
                mode = "0755" if e.executable else "0644"
                parts.append(
                    f'{{"mode":"{mode}","path":{quote(e.path)},"sha256":"{e.sha256}",'
                    f'"size":{e.size},"type":"file"}}'
                )
            elif isinstance(e, SymlinkEntry):
                parts.append(f'{{"path":{quote(e.path)},"target":{quote(e.target)},"type":"symlink"}}')
            else:
                parts.append(f'{{"path":{quote(e.path)},"type":"dir"}}')
        return f'{{"entries":[{",".join(parts)}],"format":"{FORMAT}"}}'.encode()

    def to_bytes(self) -> bytes:
        """The canonical bytes whose sha256 is the artifact digest."""
        return self._bytes

    @cached_property
    def digest(self) -> Digest:
        """The artifact digest."""
        return sha256_digest(self._bytes)

    def files(self) -> Iterator[FileEntry]:
        """The regular files, in manifest order."""
        return (e for e in self.entries if isinstance(e, FileEntry))

    @property
    def total_size(self) -> int:
        """Sum of the file sizes."""
        return sum(e.size for e in self.files())

    def by_path(self) -> dict[str, TreeEntry]:
        """Entries keyed by path."""
        return {e.path: e for e in self.entries}


_HEAD = '{"entries":['
_TAIL = f'],"format":"{FORMAT}"}}'
_STRING = r'"([^"\\\x00-\x1f]+)"'  # a non-empty JSON string that needs no escapes
# One canonical entry and the comma after it (the fast path adds a comma after the last one).
_CANONICAL_ENTRY = re.compile(
    rf'{{"mode":"(0644|0755)","path":{_STRING},"sha256":"([0-9a-f]{{64}})","size":(0|[1-9][0-9]*),'
    rf'"type":"file"}},|{{"path":{_STRING},"target":{_STRING},"type":"symlink"}},'
    rf'|{{"path":{_STRING},"type":"dir"}},'
)
# The length of each kind of match without its strings (and the size's digits).
_FILE_FIXED = len('{"mode":"0644","path":"","sha256":"","size":,"type":"file"},') + 64
_LINK_FIXED = len('{"path":"","target":"","type":"symlink"},')
_DIR_FIXED = len('{"path":"","type":"dir"},')


def unvalidated_entries(data: bytes) -> list[TreeEntry]:
    """The entries of manifest bytes, in their order, *without* the checks of :meth:`TreeManifest.of`:
    only for bytes already known to be a valid manifest (read back from the store under the digest
    of an earlier build), whose entries go into a manifest that is validated as a whole again."""
    entries = _canonical_entries(data)
    return entries if entries is not None else list(TreeManifest.from_bytes(data).entries)


def _canonical_entries(data: bytes) -> list[TreeEntry] | None:
    """The entries of a canonical manifest whose strings need no escapes, if the matches tile the
    document exactly, else None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if not (text.startswith(_HEAD) and text.endswith(_TAIL)) or len(text) == len(_HEAD) + len(_TAIL):
        return None
    body = text[len(_HEAD) : len(text) - len(_TAIL)] + ","
    entries: list[TreeEntry] = []
    append = entries.append
    new = tuple.__new__  # FileEntry(...) without its Python-level __new__ (a NamedTuple's)
    covered = 0
    try:
        for mode, path, sha, size, link, target, directory in _CANONICAL_ENTRY.findall(body):
            if mode:
                append(new(FileEntry, (path, sha, int(size), mode == "0755")))
                covered += _FILE_FIXED + len(path) + len(size)
            elif link:
                append(SymlinkEntry(link, target))
                covered += _LINK_FIXED + len(link) + len(target)
            else:
                append(DirEntry(directory))
                covered += _DIR_FIXED + len(directory)
    except (ValueError, GravenError):
        return None
    if covered != len(body):  # the matches do not overlap: equal lengths mean they tile the body
        return None
    return entries


def _from_canonical(data: bytes) -> TreeManifest | None:
    """The fast path of :meth:`TreeManifest.from_bytes`, for a manifest in canonical form whose strings
    need no escapes (all but very unusual ones); None sends anything else to the general path, which
    also names what is wrong.

    The entries must cover the document exactly (nothing between, before or after them), be in
    order, and pass the same validation: so the bytes are the canonical form of these entries, and
    this accepts exactly what the general path accepts, without re-serializing entry by entry.
    """
    entries = _canonical_entries(data)
    if entries is None:
        return None
    try:
        manifest = TreeManifest.of(entries)
    except GravenError:
        return None  # the general path gives the error for the whole document
    if manifest.entries != tuple(entries):  # was not sorted (the same objects: cheap to compare)
        return None
    manifest.__dict__["_bytes"] = data  # == to_bytes(): canonical, as shown above
    return manifest


def _from_json(data: bytes) -> TreeManifest:
    """The general path of :meth:`TreeManifest.from_bytes`: any JSON, refused unless canonical."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or set(doc) != {"entries", "format"}:
        raise InputError(f"not a {FORMAT} manifest")
    raw_entries = doc["entries"]
    if not isinstance(raw_entries, list):
        raise InputError("manifest entries must be a list")
    manifest = TreeManifest.of(_entry_from_json(item) for item in raw_entries)
    if manifest.to_bytes() != data:
        raise InputError("manifest is not in canonical form")
    return manifest


def _entry_from_json(item: object) -> TreeEntry:
    if not isinstance(item, dict):
        raise InputError("manifest entry is not an object")
    kind = item.get("type")
    path = item.get("path")
    if not isinstance(path, str):
        raise InputError("manifest entry without a path")
    if kind == "file" and set(item) == {"mode", "path", "sha256", "size", "type"}:
        mode, sha, size = item["mode"], item["sha256"], item["size"]
        if mode not in ("0644", "0755") or not isinstance(size, int) or isinstance(size, bool):
            raise InputError(f"{path}: bad mode or size in manifest")
        if not isinstance(sha, str):
            raise InputError(f"{path}: bad sha256 in manifest")
        Digest(sha)  # validates
        if size < 0:
            raise InputError(f"{path}: negative size in manifest")
        return FileEntry(path=path, sha256=sha, size=size, executable=mode == "0755")
    if kind == "symlink" and set(item) == {"path", "target", "type"}:
        target = item["target"]
        if not isinstance(target, str):
            raise InputError(f"{path}: bad symlink target in manifest")
        return SymlinkEntry(path=path, target=target)
    if kind == "dir" and set(item) == {"path", "type"}:
        return DirEntry(path=path)
    raise InputError(f"{path}: unknown or malformed manifest entry")


# control characters (C0, DEL, C1) and surrogates: what check_path refuses character by character.
# Compiled on first use (those with surrogates cost ~0.3 ms each at start-up): ASCII text, nearly all
# of it, is checked with ``isprintable()``, which for ASCII refuses exactly the C0 controls and DEL.


MAX_NAME = 255  # bytes of one path component (NAME_MAX)
MAX_PATH = 4096  # bytes of a path or a symlink target (PATH_MAX)


@cache
def _unsafe_character() -> re.Pattern[str]:
    return re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@cache
def _target_control() -> re.Pattern[str]:
    return re.compile("[\x00-\x1f\x7f-\x9f]")


@cache
def _surrogate() -> re.Pattern[str]:
    return re.compile("[\ud800-\udfff]")


def _check_paths(paths: list[str]) -> None:
    """check_path for every path, with one scan of the whole list first, since nearly all pass.

    The scan finds every way a path can fail check_path: a control character or surrogate, or an
    empty, ``.`` or ``..`` segment (which is also how an empty or absolute path shows, between the
    slashes that join the paths). Only then is each path checked, for the precise error.
    """
    joined = "/" + "/".join(paths) + "/"
    ascii_only = joined.isascii()
    if not (
        (joined.isprintable() if ascii_only else not _unsafe_character().search(joined))
        and "//" not in joined
        and "/./" not in joined
        and "/../" not in joined
    ):
        for path in paths:
            check_path(path)


def check_fs_limits(manifest: TreeManifest) -> None:
    """Refuse what a file system does not take, and ``graven import`` refuses: a name (path component)
    of more than :data:`MAX_NAME` bytes, a path or a symlink target of more than :data:`MAX_PATH`.
    Checked when an artifact is made (a build), not when a stored manifest is read: an artifact built
    before this check stays readable."""
    for entry in manifest.entries:
        path = entry.path
        # UTF-8 takes at most 4 bytes a character: a shorter path has no name over MAX_NAME bytes
        if len(path) > MAX_NAME // 4:
            _check_path_limits(path)
        if isinstance(entry, SymlinkEntry) and len(entry.target.encode("utf-8", "surrogatepass")) > MAX_PATH:
            raise UnsafeInputError(
                f"{entry.path}: a symlink target of more than {MAX_PATH} bytes (what a file system takes)"
            )


def _check_path_limits(path: str) -> None:
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH:
        raise UnsafeInputError(
            f"{display_path(path[:80])}...: a path of {len(encoded)} bytes; at most {MAX_PATH} "
            "are allowed (what a file system takes)"
        )
    if len(encoded) > MAX_NAME:
        for name in encoded.split(b"/"):
            if len(name) > MAX_NAME:
                raise UnsafeInputError(
                    f"{display_path(path[:120])}...: a name of {len(name)} bytes; at most {MAX_NAME} "
                    "are allowed (what a file system takes)"
                )


def _validate(entries: tuple[TreeEntry, ...]) -> None:
    paths = [e.path for e in entries]
    _check_paths(paths)
    for before, after in itertools.pairwise(paths):
        if before == after:
            raise UnsafeInputError(f"{after}: duplicate path")
    # Every ancestor of an entry must be an implied directory, never a file, a link or an "empty" dir.
    ancestors = implied_dirs(paths)
    check_unique_nfc(paths, ancestors)  # entries and directories alike
    links = {e.path: e.target for e in entries if isinstance(e, SymlinkEntry)}
    stays_inside = link_checker(links) if links else None
    for entry in entries:
        if entry.path in ancestors:
            if isinstance(entry, DirEntry):
                raise UnsafeInputError(f"{entry.path}: listed as an empty directory but has entries")
            below = next(p for p in paths if p.startswith(entry.path + "/"))
            raise UnsafeInputError(f"{below}: lies below {entry.path}, which is not a directory")
        if isinstance(entry, SymlinkEntry):
            target = entry.target
            ascii_target = target.isascii()
            control = (
                not target.isprintable() if ascii_target else _target_control().search(target) is not None
            )
            if control:
                raise UnsafeInputError(
                    f"{entry.path}: control characters in symlink target {display_path(entry.target)}"
                )
            if not ascii_target and _surrogate().search(entry.target):
                raise UnsafeInputError(
                    f"{entry.path}: symlink target {display_path(entry.target)} is not valid UTF-8"
                )
            if entry.target.startswith("/"):
                raise UnsafeInputError(
                    f"{entry.path}: absolute symlink to {entry.target}; use a relative target"
                )
            if not entry.target:
                raise UnsafeInputError(f"{entry.path}: symlink with an empty target (it names nothing)")
            if stays_inside is not None and not stays_inside(entry.path, entry.target):
                raise UnsafeInputError(f"{entry.path}: symlink to {entry.target} escapes the artifact root")
