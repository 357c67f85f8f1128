"""Rules for the paths and links an artifact may hold. Pure: strings in, errors out.

An artifact path is relative, ``/``-separated, valid UTF-8 without control characters (C0, DEL and the
C1 controls U+0080..U+009F, which terminals act on), and has no empty, ``.`` or ``..`` segments. A
symlink target is relative and, followed through the other links of the same tree, never leaves the
artifact root. What graven makes or takes in (a commit's tree, a build's outputs, an imported archive)
holds no path through ``.git`` (:func:`through_dotgit`); a manifest stored before that rule is still
read.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from functools import cache

from graven.errors import UnsafeInputError

__all__ = [
    "MAX_ENTRIES",
    "MAX_LINK_HOPS",
    "check_path",
    "check_unique_nfc",
    "decode_path",
    "display_path",
    "folded_collisions",
    "implied_dirs",
    "is_through_dotgit",
    "json_text",
    "link_stays_inside",
    "through_dotgit",
    "too_many_paths",
]

MAX_LINK_HOPS = 40

# Paths one artifact may hold. A few kilobytes of git objects that nest one tree in itself ten times
# over (a "git bomb"), or an archive of empty members, list millions of paths: graven holds each in
# memory (~800 bytes per path for a build), and 10^6 took 777 MB. The largest source trees (a browser,
# an operating system) hold under a million files.
MAX_ENTRIES = 2_000_000


def too_many_paths(what: str) -> UnsafeInputError:
    """The refusal of ``what`` (a commit's tree, an archive, a build's outputs) past MAX_ENTRIES paths."""
    return UnsafeInputError(
        f"more than {MAX_ENTRIES:,} paths in {what}: graven takes at most that many in one artifact (a "
        'tree that nests one tree in itself many times over, a "git bomb", lists millions from a few '
        "objects)"
    )


def is_through_dotgit(path: str) -> bool:
    """Whether a segment of ``path`` is ``.git`` in any case (``.git/config``, ``app/.GIT/hooks/x``, a
    file or a link named ``.git``), as git's own rules for a tree take it (``git fsck`` flags such a
    tree, and git refuses to commit or check out the path). In a release, a ``.git`` makes every git
    command run there read its config, whose ``core.fsmonitor``, aliases and hooks run programs.
    ``.gitignore``, ``.github`` or ``x.git`` are other names."""
    lowered = path.lower()
    return ".git" in lowered and ".git" in lowered.split("/")


def through_dotgit(paths: list[str]) -> str | None:
    """The first of ``paths`` that goes through ``.git`` (:func:`is_through_dotgit`), else None: the
    one check of a commit's tree, a build's outputs and an imported archive. One search over all of
    ``paths`` at once; only a hit looks at them one by one."""
    if "/.git/" not in f"/{'/'.join(paths).lower()}/":
        return None
    return next((path for path in paths if is_through_dotgit(path)), None)


def decode_path(raw: bytes) -> str:
    """Decode a path from bytes, refusing names that are not valid UTF-8 (naming ``raw``, escaped)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = _escape_controls(raw.decode("utf-8", "backslashreplace"))
        raise UnsafeInputError(f"{shown}: file name is not valid UTF-8; rename it") from None


# C0 controls, DEL and the C1 controls (U+0080..U+009F: U+009B is a terminal's CSI, like ESC [)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# The patterns below are compiled on first use: those with surrogates cost ~0.3 ms each to compile, at
# the start of every command that imports this module, and an ASCII path (nearly every path) is
# checked without them. For ASCII text they match exactly what ``not text.isprintable()`` finds (C0
# controls and DEL) and, in ``"/" + path + "/"``, what ``//``, ``/./`` and ``/../`` find.


@cache
def _surrogate() -> re.Pattern[str]:
    return re.compile("[\ud800-\udfff]")  # what undecodable bytes become (surrogateescape)


@cache
def _unprintable() -> re.Pattern[str]:
    return re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@cache
def _bad_segment() -> re.Pattern[str]:
    return re.compile(r"(?:^|/)(\.{0,2})(?:/|$)")


@cache
def _any_bad() -> re.Pattern[str]:
    # Any of the above in one search (an empty or absolute path has an empty segment): a good path
    # costs one regex call; a hit is explained by the detailed checks.
    return re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]|(?:^|/)\\.{0,2}(?:/|$)")


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def display_path(path: str) -> str:
    """``path`` as an error message may show it: unchanged when it is clean, else with control
    characters as ``\\xNN`` and undecodable bytes (surrogateescape) as ``\\xNN`` too."""
    clean = path.isprintable() if path.isascii() else _unprintable().search(path) is None
    if clean:
        return path
    return _escape_controls(json_text(path))  # the bytes an undecodable name had, then controls


def json_text(text: str) -> str:
    """``text`` as JSON (and UTF-8 text) can carry it: a name read from disk that is not UTF-8 holds
    surrogate escapes (``os.fsdecode``), which no UTF-8 encoder takes; each such byte is written as
    the four characters ``\\xNN`` (as :func:`display_path` shows it). Control characters are left to
    the JSON encoder, which escapes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no byte becomes
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def check_path(path: str) -> None:
    """Refuse a path that is absolute, empty, has ``.``/``..``/empty segments or control characters."""
    if path.isascii():
        wrapped = f"/{path}/"
        if not path.isprintable() or "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
            _refuse(path)
    elif _any_bad().search(path) is not None:
        _refuse(path)


def _refuse(path: str) -> None:
    if not path:
        raise UnsafeInputError("empty path")
    if path.startswith("/"):
        raise UnsafeInputError(f"{path}: absolute paths are not allowed")
    if _surrogate().search(path):
        try:  # the bytes an undecodable name had
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no byte becomes
            shown = path.encode("utf-8", "backslashreplace").decode("utf-8")
        raise UnsafeInputError(f"{shown}: file name is not valid UTF-8; rename it")
    if _CONTROL.search(path):
        raise UnsafeInputError(f"{path!r}: control characters are not allowed in paths")
    bad = _bad_segment().search(path)
    if bad:
        raise UnsafeInputError(f"{path}: '{bad.group(1)}' segments are not allowed in paths")
    raise UnsafeInputError(f"{path!r}: not allowed as a path")  # pragma: no cover - unreachable


def link_stays_inside(path: str, target: str, links: Mapping[str, str]) -> bool:
    """True when the symlink at ``path`` to ``target`` resolves inside the root.

    Resolution follows the other symlinks of the tree (``links``: path -> target) exactly as the kernel
    would, so ``a -> .`` plus ``b -> a/..`` is caught although each looks harmless on its own. A loop
    never resolves, so it cannot escape; it counts as inside.
    """
    if target.startswith("/") or not target:
        return False
    stack = path.split("/")[:-1]
    queue = deque(target.split("/"))
    hops = 0
    while queue:
        segment = queue.popleft()
        if segment in ("", "."):
            continue
        if segment == "..":
            if not stack:
                return False
            stack.pop()
            continue
        stack.append(segment)
        linked = links.get("/".join(stack))
        if linked is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return True
            if linked.startswith("/"):
                return False
            stack.pop()
            queue.extendleft(reversed(linked.split("/")))
    return True


def implied_dirs(paths: Iterable[str]) -> dict[str, None]:
    """Every directory that ``paths`` lie below (``a/b/c`` implies ``a/b`` and ``a``), each found once.

    An ordered set (the keys of a dict): the order follows ``paths``, so what is reported from it does
    not depend on string hashing.
    """
    dirs: dict[str, None] = {}
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = None
            parent = parent.rpartition("/")[0]
    return dirs


def check_unique_nfc(paths: Iterable[str], dirs: Collection[str] | None = None) -> None:
    """Refuse two paths that are equal after Unicode NFC normalization (they collide on macOS).

    Directories count as paths too: a file ``café`` (NFC) and a directory ``cafe\\u0301`` (NFD) that
    holds ``cafe\\u0301/x`` collide, and so do two spellings of one directory. ``dirs`` are the
    directories that ``paths`` imply (:func:`implied_dirs`), when the caller has them already.

    Two names collide only when one of them changes under NFC, and such a name is not ASCII: so the
    work is one scan for non-ASCII paths, and a little more for each of those.
    """
    paths = paths if isinstance(paths, list) else list(paths)
    odd = list(itertools.filterfalse(str.isascii, paths))
    if not odd:
        return
    # the non-ASCII names: these paths and those of their directories (the others are ASCII)
    names: dict[str, None] = {}
    for path in odd:
        names[path] = None
        parent = path.rpartition("/")[0]
        while parent and not parent.isascii() and parent not in names:
            names[parent] = None
            parent = parent.rpartition("/")[0]
    changed = [(name, nfc) for name in names if (nfc := unicodedata.normalize("NFC", name)) != name]
    if not changed:
        return
    files = set(paths)
    folders = implied_dirs(paths) if dirs is None else dirs

    def shown(name: str) -> str:
        return name if name in files else _described(name, paths)

    first: dict[str, str] = {}  # NFC form -> the first changed name with it
    for name, nfc in changed:
        if nfc in files or nfc in folders:
            raise UnsafeInputError(_collision(shown(name), shown(nfc), name, nfc))
        other = first.setdefault(nfc, name)
        if other != name:
            raise UnsafeInputError(_collision(shown(name), shown(other), name, other))


def _folded(name: str) -> str:
    """A name as a case-insensitive file system compares it: Unicode NFD, then case folded (what ext4
    and f2fs do in a ``casefold`` directory; vfat, exFAT, NTFS and APFS fold at least ASCII case)."""
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def folded_collisions(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of distinct paths (or directories they imply) that a case-insensitive file system takes for
    one name: ``README`` and ``readme``, ``App/x`` and ``app/y`` (the directories ``App`` and ``app``).
    Each pair once, the first of each folded name with a later one, in the order met. Such an artifact
    is valid (git and Linux keep both), but cannot be written into a directory that folds case."""
    paths = paths if isinstance(paths, list) else list(paths)
    every = list(implied_dirs(paths))
    every.extend(paths)
    first: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for name in every:
        other = first.setdefault(_folded(name), name)
        if other != name:
            pairs.append((other, name))
    return pairs


def _collision(path: str, other: str, raw: str | None = None, raw_other: str | None = None) -> str:
    """The error for two names equal after NFC; they look alike, so their code points are shown too."""
    a = ascii(path if raw is None else raw)
    b = ascii(other if raw_other is None else raw_other)
    return f"{path}: equal to {other} after Unicode NFC normalization ({a} vs {b}); rename one of them"


def _described(directory: str, paths: list[str]) -> str:
    """A directory as an error names it: with one path below it."""
    prefix = directory + "/"
    below = next((p for p in paths if p.startswith(prefix)), None)
    return f"directory {directory}/ (holding {below})" if below is not None else f"directory {directory}/"
