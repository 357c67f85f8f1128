"""Rules for the paths and links an artifact may hold. Pure: strings in, errors out.

An artifact path is relative, ``/``-separated, valid UTF-8 without control characters (C0, DEL and the
C1 controls U+0080..U+009F, which terminals act on), and has no empty, ``.`` or ``..`` segments. A
symlink target is relative and, followed through the other links of the same tree, never leaves the
artifact root. What graven makes or takes in (a commit's tree, a build's outputs, an imported archive)
holds no path through a name git takes for ``.git`` (:func:`dotgit_reason`: ``.GIT``, ``git~1``,
``.git.``, ``.g\\u200cit``, ...) and no symlink git takes for ``.gitmodules`` (:func:`gitmodules_reason`),
as git itself refuses them; a manifest stored before those rules is still read.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import cache
from typing import cast

from graven.errors import UnsafeInputError

__all__ = [
    "HFS_IGNORED",
    "MAX_ENTRIES",
    "MAX_IMPLIED_BYTES",
    "MAX_LINK_HOPS",
    "MAX_PATH_BYTES",
    "add_implied_dirs",
    "check_path",
    "check_unique_nfc",
    "decode_path",
    "display_path",
    "dotgit_reason",
    "dotgit_refusal",
    "folded_collisions",
    "gitmodules_link",
    "gitmodules_reason",
    "gitmodules_refusal",
    "implied_dirs",
    "is_through_dotgit",
    "json_text",
    "link_checker",
    "link_stays_inside",
    "refused_by_git",
    "through_dotgit",
    "too_deep_paths",
    "too_many_path_bytes",
    "too_many_paths",
]

MAX_LINK_HOPS = 40

# Paths one artifact may hold. A few kilobytes of git objects that nest one tree in itself ten times
# over (a "git bomb"), or an archive of empty members, list millions of paths: graven holds each in
# memory (~800 bytes per path for a build), and 10^6 took 777 MB. The largest source trees (a browser,
# an operating system) hold under a million files.
MAX_ENTRIES = 2_000_000
# bytes of the names of the directories a tree's paths imply, held while they are checked: a path of
# 2,048 levels implies 2,047 directories of ~4 MiB of names, so a tree that names one deep subtree
# from many places (a few objects in git, a few KiB in an archive) would take gigabytes
MAX_IMPLIED_BYTES = 256 << 20
# bytes of an artifact's paths and symlink targets: MAX_ENTRIES paths of 4 KB each (one deep directory
# named over and over) compress to a few MB of archive, and graven held ~16 KB per path while it read
# them (~33 GB); the largest source trees name under 100 MB
MAX_PATH_BYTES = 256 << 20


def too_many_paths(what: str) -> UnsafeInputError:
    """The refusal of ``what`` (a commit's tree, an archive, a build's outputs) past MAX_ENTRIES paths."""
    return UnsafeInputError(
        f"more than {MAX_ENTRIES:,} paths in {what}: graven takes at most that many in one artifact (a "
        'tree that nests one tree in itself many times over, a "git bomb", lists millions from a few '
        "objects)"
    )


def too_many_path_bytes(what: str) -> UnsafeInputError:
    """The refusal of ``what`` (an archive, a build's outputs) past :data:`MAX_PATH_BYTES` of paths."""
    from graven.core.units import human_size

    return UnsafeInputError(
        f"{what}: more than {human_size(MAX_PATH_BYTES)} of paths and link targets: graven holds at most "
        "that much of them in one artifact (millions of paths, each kilobytes long?)"
    )


# Code points HFS+ (macOS) leaves out of a name when it compares names, as git's utf8.c
# (next_hfs_char) lists them: zero-width joiners and marks, bidirectional controls, deprecated
# format characters and the byte order mark. ".g\u200cit" is ".git" there.
HFS_IGNORED = frozenset(
    "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)

# A name NTFS (Windows) takes for ".git" or ".gitmodules" ends in any dots and spaces (which Windows
# drops), then the end of the name or ":" (an alternate data stream: ".git::$INDEX_ALLOCATION" is the
# directory itself). ASCII case only, as git compares (strncasecmp in the C locale).
# Compiled on first use, as the patterns below: most commands that import this module never ask.


@cache
def _ntfs_tail_pattern() -> re.Pattern[str]:
    return re.compile(r"[ .]*(:.*)?", re.DOTALL)


@cache
def _ntfs_dotgit() -> re.Pattern[str]:
    return re.compile(r"(\.git|git~1)([ .]*)(:.*)?", re.ASCII | re.IGNORECASE | re.DOTALL)


def is_through_dotgit(path: str) -> bool:
    """Whether a name in ``path`` is one git takes for ``.git`` (:func:`dotgit_reason`)."""
    return dotgit_reason(path) is not None


def dotgit_reason(path: str) -> str | None:
    """Why a name in ``path`` is ``.git`` by git's own rules, else None: ``""`` for a name that is
    ``.git`` itself, else what makes it one (``"'GIT~1' is its short (8.3) name on Windows"``).

    git refuses such a path in a tree: ``verify_path`` (read-cache.c) will neither add nor check it
    out, and ``git fsck`` reports the tree (hasDotgit). The names are those of git's path.c
    ``is_ntfs_dotgit`` and utf8.c ``is_hfs_dotgit`` (CVE-2014-9390, CVE-2019-1352), checked on every
    platform as fsck does: ``.git`` in any ASCII case (``.GIT``: a file system that ignores case);
    on NTFS, ``.git`` followed by dots and spaces (``.git.``, ``.git . .``: Windows drops them),
    ``git~1`` (``.git``'s short 8.3 name, as git makes ``.git`` a directory's first entry), either
    followed by ``:`` and anything (``.git::$INDEX_ALLOCATION``, an NTFS stream), and any of these
    after a backslash (``a\\.git``: a separator on Windows); on HFS+, ``.git`` with code points that
    macOS ignores (:data:`HFS_IGNORED`: ``.g\\u200cit``). Other names are not: ``.gitignore``,
    ``.github``, ``x.git``, ``git~2`` (git does not refuse it: ``.git`` is a fresh clone's first
    entry, so it gets ``git~1``), ``.Ňit`` (only ASCII letters fold).

    In a release, a ``.git`` makes every git command run there read its config, whose
    ``core.fsmonitor``, aliases and hooks run programs; an artifact extracted on Windows or macOS
    makes ``.git`` out of any of these names.
    """
    if "git" not in path.lower() and path.isascii():  # nearly every path: one test
        return None
    for name in path.split("/"):
        why = _dotgit_name(name)
        if why is not None:
            return why
    return None


def _dotgit_name(name: str) -> str | None:
    """:func:`dotgit_reason` for one name (a segment of a path)."""
    if not name.isascii() and not HFS_IGNORED.isdisjoint(name):  # is_hfs_dotgit
        kept = "".join(c for c in name if c not in HFS_IGNORED)
        if kept.isascii() and kept.lower() == ".git":
            ignored = ", ".join(sorted({f"U+{ord(c):04X}" for c in name if c in HFS_IGNORED}))
            return f"macOS ignores {ignored} in {name!a}"
    parts = name.split("\\")
    for part in parts:  # is_ntfs_dotgit: fsck reads each part after a backslash too
        match = _ntfs_dotgit().fullmatch(part)
        if match is None:
            continue
        head, dots, stream = match.groups()
        if stream is not None:
            why = f"{part!a} names it on Windows: an NTFS stream"
        elif head.lower() == "git~1":
            why = f"{part!a} is its short (8.3) name on Windows"
        elif dots:
            why = f"Windows drops the trailing dots and spaces of {part!a}"
        elif head != ".git":
            why = f"{part!a} is .git where names ignore case: macOS, Windows"
        else:
            why = ""
        if len(parts) > 1:
            why = f"Windows splits {name!a} at each backslash" + (f", and {why}" if why else "")
        return why
    return None


def dotgit_refusal(path: str) -> str | None:
    """``"a path through .git"`` and why (:func:`dotgit_reason`) when ``path`` goes through a name git
    takes for ``.git``, else None: what a refusal says after the path."""
    why = dotgit_reason(path)
    if why is None:
        return None
    return f"a path through .git ({why})" if why else "a path through .git"


@cache
def _joined_dotgit() -> re.Pattern[str]:
    # "git", then "~1" or not, dots and spaces, and the end of a name or a stream: a literal first,
    # which the regex engine searches for quickly (a search for "/.git" or "\\.git" first is 10x
    # slower); what precedes a hit is looked at after
    return re.compile(r"git(~1)?[ .]*[/\\:]")


def through_dotgit(paths: list[str]) -> str | None:
    """The first of ``paths`` that goes through a name git takes for ``.git`` (:func:`dotgit_reason`),
    else None: the one check of a commit's tree, a build's outputs and an imported archive. One
    search over all of ``paths`` at once (as long as a join of them: a tree's ``.gitignore`` files do
    not make it slower); only a hit looks at them one by one."""
    joined = f"/{'/'.join(paths).lower()}/"
    hit = not joined.isascii() and any(char in joined for char in HFS_IGNORED)
    if not hit:
        for match in _joined_dotgit().finditer(joined):
            at = match.start()
            if joined[at - 1] in "/\\" if match.group(1) else joined[at - 2 : at] in ("/.", "\\."):
                hit = True
                break
    if not hit:
        return None
    return next((path for path in paths if dotgit_reason(path) is not None), None)


def gitmodules_reason(link: str) -> str | None:
    """Why the symlink ``link`` is named ``.gitmodules`` by git's own rules, else None: ``""`` for the
    name ``.gitmodules`` itself, else what makes its name one (``"'GITMOD~1' is its short (8.3) name
    on Windows"``). git refuses ``.gitmodules`` as a symlink (``verify_path`` in read-cache.c; fsck's
    gitmodulesSymlink is an error): git would read a checkout's submodules through the link, from
    outside the tree. The names are those of git's utf8.c ``is_hfs_dotgitmodules`` and path.c
    ``is_ntfs_dotgitmodules`` (CVE-2018-11235): ``.gitmodules`` in any ASCII case, with code points
    macOS ignores, with trailing dots and spaces or a stream (``:``) on NTFS, and NTFS short names
    ``gitmod~1`` to ``gitmod~4`` and the hashed ones (``gi7eba~1``, ``gi7eb~10``, ``~1000000``). A
    regular file named ``.gitmodules`` is not refused, nor symlinks named ``.gitignore`` or
    ``.gitattributes`` (fsck only notes them; git opens those without following a link)."""
    name = link.rpartition("/")[2]
    if "~" not in name and "git" not in name.lower() and name.isascii():
        return None
    if not name.isascii() and not HFS_IGNORED.isdisjoint(name):  # is_hfs_dotgitmodules
        kept = "".join(c for c in name if c not in HFS_IGNORED)
        if kept.isascii() and kept.lower() == ".gitmodules":
            ignored = ", ".join(sorted({f"U+{ord(c):04X}" for c in name if c in HFS_IGNORED}))
            return f"macOS ignores {ignored} in {name!a}"
    # is_ntfs_dotgitmodules on the name and, as fsck does, on what follows each backslash in it
    # (unlike is_ntfs_dotgit, it reads to the end of the name: ".gitmodules\\x" is another name)
    why = _ntfs_dot_generic(name, "gitmodules", "gi7eba")
    start = name.find("\\")
    while why is None and start >= 0:
        why = _ntfs_dot_generic(name[start + 1 :], "gitmodules", "gi7eba")
        if why is not None:
            return f"Windows splits {name!a} at each backslash" + (f", and {why}" if why else "")
        start = name.find("\\", start + 1)
    return why


def _ntfs_dot_generic(name: str, dotted: str, short: str) -> str | None:
    """git's path.c ``is_ntfs_dot_generic``: whether NTFS takes ``name`` for ``.`` + ``dotted``
    (``short``: the first six characters of the hashed short name git computed for it), and why."""
    size = len(dotted)
    if name[:1] == "." and name[1 : size + 1].isascii() and name[1 : size + 1].lower() == dotted:
        kind = _ntfs_tail(name, size + 1)
        if kind is None:
            return None
        if kind:
            return f"{name!a} {kind}"
        if name[1 : size + 1] == dotted:
            return ""
        return f"{name!a} is .{dotted} where names ignore case: macOS, Windows"
    # a regular short name: the first six characters, then ~1 to ~4
    if name[:6].isascii() and name[:6].lower() == dotted[:6] and name[6:7] == "~" and "1" <= name[7:8] <= "4":
        return None if _ntfs_tail(name, 8) is None else f"{name!a} is its short (8.3) name on Windows"
    # a fall-back short name: up to six characters of ``short``, "~", then digits, eight in all
    i, tilde = 0, False
    while i < 8:
        if i >= len(name):
            return None
        char = name[i]
        if tilde:
            if not "0" <= char <= "9":
                return None
        elif char == "~":
            i += 1
            if not "1" <= name[i : i + 1] <= "9":
                return None
            tilde = True
        elif i >= 6 or not char.isascii() or char.lower() != short[i]:
            return None
        i += 1
    return None if _ntfs_tail(name, i) is None else f"{name!a} is its short (8.3) name on Windows"


def _ntfs_tail(name: str, start: int) -> str | None:
    """What follows a name NTFS may take for another from ``start``: None unless only dots and spaces,
    then the end or ``:``; else ``""`` (nothing), or what the dots, spaces or stream do there."""
    match = _ntfs_tail_pattern().fullmatch(name, start)
    if match is None:
        return None
    if match.group(1) is not None:
        return "names it on Windows: an NTFS stream"
    return "has trailing dots and spaces, which Windows drops" if match.end() > start else ""


def gitmodules_link(links: Iterable[str]) -> str | None:
    """The first of ``links`` (the paths of symlinks) that git takes for ``.gitmodules``
    (:func:`gitmodules_reason`), else None."""
    return next((link for link in links if gitmodules_reason(link) is not None), None)


def gitmodules_refusal(link: str) -> str | None:
    """``"a symlink named .gitmodules"`` and why (:func:`gitmodules_reason`) when git takes the
    symlink ``link`` for one, else None: what a refusal says after the path."""
    why = gitmodules_reason(link)
    if why is None:
        return None
    return f"a symlink named .gitmodules ({why})" if why else "a symlink named .gitmodules"


def refused_by_git(paths: list[str], links: Iterable[str]) -> tuple[str, str, str] | None:
    """The first of ``paths`` git refuses in a tree, what it is and what it would do, else None: a
    path through a name git takes for ``.git`` (:func:`through_dotgit`), else one of ``links`` (the
    paths of symlinks) git takes for ``.gitmodules`` (:func:`gitmodules_link`). What a commit's tree,
    a build's outputs and an exported artifact are checked with."""
    dotgit = through_dotgit(paths)
    if dotgit is not None:
        harm = (
            "git run there, or where it is unpacked on Windows or macOS, would execute what its config names"
        )
        return dotgit, cast(str, dotgit_refusal(dotgit)), harm
    link = gitmodules_link(links)
    if link is not None:
        harm = "git would read a checkout's submodules through it, from outside the tree"
        return link, cast(str, gitmodules_refusal(link)), harm
    return None


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
    characters as ``\\xNN`` and undecodable bytes (surrogateescape) as ``\\xNN`` too.

    A message's text, not a terminal's rendering: what it returns is kept as it is in ``--json``
    (``error.message``), in drift reasons and in the audit log, so a backslash is left as it is (a
    name holding the four characters ``\\x1b`` and one holding ESC read alike here). The terminal
    shows such a message with :func:`graven.cli.output.printable_message`, which adds no escape of
    its own; a value shown on its own (a listing's cell, a path in a line) is escaped with
    :func:`graven.cli.output.printable` instead, which doubles a backslash and reads back one way."""
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
    never resolves, so it cannot escape; it counts as inside. For many links of one tree, make one
    :func:`link_checker` instead.
    """
    return link_checker(links)(path, target)


_ESCAPES = -1  # what a resolution ends in, besides a directory: outside the root ...
_LOOPS = -2  # ... or never (more than MAX_LINK_HOPS links followed, or a link inside its own target)


def link_checker(links: Mapping[str, str]) -> Callable[[str, str], bool]:
    """:func:`link_stays_inside` for the links of one tree (``links``: path -> target), which are read
    once here: each check then takes time linear in the names of its own target.

    A place is a node of a tree of the links' paths and how many names below it (no link lies below a
    name that is no node). Where each link's target leads from its directory, and after how many links
    followed, is worked out once and kept: a name costs one lookup, and a link met again costs one,
    where following each link's target anew made 3,000 short links into one chain of 41 links of 4 KB
    targets follow 80,000 names each (a minute; the join of every name before it: minutes per link)."""
    children: dict[tuple[int, str], int] = {}
    parents: dict[int, int] = {}
    targets: dict[int, str] = {}
    for link, linked in links.items():
        node = 0  # the root
        for name in link.split("/"):
            child = children.setdefault((node, name), len(children) + 1)
            parents[child] = node
            node = child
        targets[node] = linked
    # a link -> (the node its target leads to or _ESCAPES/_LOOPS, names below it, links followed)
    resolved: dict[int, tuple[int, int, int]] = {}

    def resolve(node: int, below: int, target: str) -> tuple[int, int, int]:
        """Where ``target`` leads from the place (``node``, ``below``), as :data:`resolved` holds it.
        The links met on the way are resolved first, each once, on a stack of their own (a chain of a
        million links is no recursion); a link met inside its own resolution is a loop."""
        frames = [[-1, target, 0, node, below, 0]]  # link, its target, where in it, node, below, hops
        pending: set[int] = set()
        while True:
            frame = frames[-1]
            link, text, pos, node, below, hops = cast(tuple[int, str, int, int, int, int], tuple(frame))
            outcome: tuple[int, int, int] | None = None
            size = len(text)
            while pos <= size:
                start = pos
                stop = text.find("/", pos)
                if stop < 0:
                    stop = size
                name = text[pos:stop]
                pos = stop + 1
                if name in ("", "."):
                    continue
                if name == "..":
                    if below:
                        below -= 1
                    elif node:
                        node = parents[node]
                    else:
                        outcome = (_ESCAPES, 0, hops)
                        break
                    continue
                if below:
                    below += 1
                    continue
                child = children.get((node, name))
                if child is None:
                    below = 1
                    continue
                linked = targets.get(child)
                if linked is None:
                    node = child
                    continue
                if hops + 1 > MAX_LINK_HOPS:
                    outcome = (_LOOPS, 0, 0)
                    break
                if linked.startswith("/"):
                    outcome = (_ESCAPES, 0, hops + 1)
                    break
                known = resolved.get(child)
                if known is None:
                    if child in pending:
                        outcome = (_LOOPS, 0, 0)
                        break
                    frame[2:] = [start, node, below, hops]  # met again once resolved
                    pending.add(child)
                    frames.append([child, linked, 0, parents[child], 0, 0])
                    break
                to, deeper, followed = known
                hops += 1 + followed
                if to == _LOOPS or hops > MAX_LINK_HOPS:
                    outcome = (_LOOPS, 0, 0)
                    break
                if to == _ESCAPES:
                    outcome = (_ESCAPES, 0, hops)
                    break
                node, below = to, deeper
            else:
                outcome = (node, below, hops)
            if outcome is None:
                continue  # a link's own frame was pushed
            frames.pop()
            if link < 0:
                return outcome
            resolved[link] = outcome
            pending.discard(link)

    def stays_inside(path: str, target: str) -> bool:
        if target.startswith("/") or not target:
            return False
        node, below = 0, 0  # the directory of ``path`` (its names are not followed: it is no link)
        for name in path.split("/")[:-1]:
            child = None if below else children.get((node, name))
            if child is None:
                below += 1
            else:
                node = child
        return resolve(node, below, target)[0] != _ESCAPES

    return stays_inside


def implied_dirs(paths: Iterable[str]) -> dict[str, None]:
    """Every directory that ``paths`` lie below (``a/b/c`` implies ``a/b`` and ``a``), each found once.

    An ordered set (the keys of a dict): the order follows ``paths``, so what is reported from it does
    not depend on string hashing.
    """
    dirs: dict[str, None] = {}
    add_implied_dirs(paths, dirs)
    return dirs


def add_implied_dirs(paths: Iterable[str], dirs: dict[str, None], held: int = 0) -> int:
    """Add to ``dirs`` the directories ``paths`` lie below that it lacks (:func:`implied_dirs`, for a
    caller that meets the paths one at a time: an archive being read); ``held`` is the bytes of the
    names already in ``dirs``, the sum is returned. Past :data:`MAX_IMPLIED_BYTES` the paths are
    refused (:func:`too_deep_paths`)."""
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = None
            held += len(parent)
            parent = parent.rpartition("/")[0]
        if held > MAX_IMPLIED_BYTES:
            raise too_deep_paths(path)
    return held


def too_deep_paths(path: str) -> UnsafeInputError:
    """The refusal of a tree whose paths imply more than :data:`MAX_IMPLIED_BYTES` of directory names
    (found at ``path``)."""
    return UnsafeInputError(
        f"{display_path(path[:80])}...: the directories the paths lie in make more than "
        f"{MAX_IMPLIED_BYTES >> 20} MiB of names (one deep tree named from many places?); graven holds "
        "at most that much of them"
    )


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
