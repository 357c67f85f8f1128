"""Rules for the paths and links an artifact may hold. Pure: strings in, errors out.

An artifact path is relative, ``/``-separated, valid UTF-8 without control characters, and has no empty,
``.`` or ``..`` segments. A symlink target is relative and, followed through the other links of the same
tree, never leaves the artifact root.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Mapping

from graven.errors import UnsafeInputError

__all__ = [
    "MAX_LINK_HOPS",
    "check_path",
    "check_unique_nfc",
    "decode_path",
    "link_stays_inside",
]

MAX_LINK_HOPS = 40


def decode_path(raw: bytes) -> str:
    """Decode a path from bytes, refusing names that are not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", "backslashreplace")
        raise UnsafeInputError(f"{shown}: file name is not valid UTF-8; rename it") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # what undecodable bytes become (surrogateescape)
_BAD_SEGMENT = re.compile(r"(?:^|/)(\.{0,2})(?:/|$)")
# Any of the above in one search (an empty or absolute path has an empty segment): the common case,
# a good path, costs one regex call; a hit is explained by the detailed checks.
_ANY_BAD = re.compile("[\x00-\x1f\x7f\ud800-\udfff]|(?:^|/)\\.{0,2}(?:/|$)")


def check_path(path: str) -> None:
    """Refuse a path that is absolute, empty, has ``.``/``..``/empty segments or control characters."""
    if _ANY_BAD.search(path) is not None:
        _refuse(path)


def _refuse(path: str) -> None:
    if not path:
        raise UnsafeInputError("empty path")
    if path.startswith("/"):
        raise UnsafeInputError(f"{path}: absolute paths are not allowed")
    if _SURROGATE.search(path):
        try:  # the bytes an undecodable name had
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no byte becomes
            shown = path.encode("utf-8", "backslashreplace").decode("utf-8")
        raise UnsafeInputError(f"{shown}: file name is not valid UTF-8; rename it")
    if _CONTROL.search(path):
        raise UnsafeInputError(f"{path!r}: control characters are not allowed in paths")
    bad = _BAD_SEGMENT.search(path)
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


def check_unique_nfc(paths: Iterable[str]) -> None:
    """Refuse two paths that are equal after Unicode NFC normalization (they collide on macOS)."""
    seen: dict[str, str] = {}
    for path in paths:
        if path.isascii():
            key = path
        else:
            key = unicodedata.normalize("NFC", path)
        other = seen.get(key)
        if other is not None and other != path:
            raise UnsafeInputError(
                f"{path}: equal to {other} after Unicode NFC normalization; rename one of them"
            )
        seen[key] = path
