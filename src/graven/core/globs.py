"""Path globs for ``include`` / ``exclude``: ``*`` and ``?`` stay inside one path segment, ``**`` spans
any number of segments (also none), ``[abc]``, ``[a-z]`` and ``[!abc]`` are character classes (a
reversed range such as ``[z-a]`` is refused with GlobError). A pattern ending in ``/`` matches the
directory and everything below it (the directory itself: :meth:`Selection.selects_dir`, for an
empty directory; never a file of that name). Patterns match the whole path, relative to the artifact root.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cached_property

from graven.core.record import Frozen

__all__ = ["GlobError", "GlobSet", "Selection", "check_glob", "compile_glob", "never_matches"]


class GlobError(ValueError):
    """A pattern that is not a valid glob (a character class with a reversed range, ``[z-a]``)."""


def _translate_class(body: str, negate: bool) -> str:
    """The regex of a character class: every character escaped (no regex syntax, no warnings about
    nested sets), ``a-z`` ranges kept, a reversed range refused. A class matches one character of a
    segment, never the ``/`` between two (``[!x]``, or a range such as ``[+-0]`` that spans it)."""
    out: list[str] = ["[^/" if negate else "(?!/)["]
    k = 0
    while k < len(body):
        ch = body[k]
        if k + 2 < len(body) and body[k + 1] == "-":
            last = body[k + 2]
            if ch > last:
                raise GlobError(f"bad character range {ch!r}-{last!r}")
            out.append(f"{re.escape(ch)}-{re.escape(last)}")
            k += 3
        else:
            out.append(re.escape(ch))
            k += 1
    out.append("]")
    return "".join(out)


def _translate_segment(segment: str) -> str:
    """The regex of one segment. The fixed-width pieces between its ``*`` are matched each at its first
    place, never tried again (an atomic group): a segment such as ``*a*a*a*a*a*a*a*c`` costs time
    linear in a name, where a backtracking ``[^/]*a[^/]*a...`` took minutes for one of 60 bytes (a
    graven.toml in a commit names these globs). The first place is enough: a later one leaves the
    rest of the pattern less of the name, and a ``*`` before the rest takes up any difference."""
    pieces: list[list[str]] = [[]]
    i = 0
    n = len(segment)
    while i < n:
        ch = segment[i]
        if ch == "*":
            if pieces[-1] or len(pieces) == 1:
                pieces.append([])
        elif ch == "?":
            pieces[-1].append("[^/]")
        elif ch == "[":
            # ``[!...]`` and ``[^...]`` negate; a ``]`` first (after the negation) is a member
            start = i + 1
            negate = segment[start : start + 1] in ("!", "^")
            if negate:
                start += 1
            end = segment.find("]", start + 1 if segment[start : start + 1] == "]" else start)
            if end == -1:
                pieces[-1].append(re.escape(ch))
            else:
                pieces[-1].append(_translate_class(segment[start:end], negate))
                i = end
        else:
            pieces[-1].append(re.escape(ch))
        i += 1
    if len(pieces) == 1:
        return "".join(pieces[0])
    middle = "".join(f"(?>[^/]*?{''.join(piece)})" for piece in pieces[1:-1] if piece)
    return "".join(pieces[0]) + middle + "[^/]*" + "".join(pieces[-1])


def _glob_regex(pattern: str) -> str:
    """The regular expression (source) of one glob; GlobError when the glob is invalid.

    ``**`` in a row are one. The segments between two ``**`` are matched at their first place, never
    tried again (an atomic group), as the pieces of a segment are: ``**/*/**/*/**/*/**/x`` no longer
    tries every way of splitting a long path (see :func:`_translate_segment`)."""
    if pattern.endswith("/"):
        pattern += "**"
    segments: list[str] = []
    for segment in pattern.strip("/").split("/"):
        if segment != "**" or not segments or segments[-1] != "**":
            segments.append(segment)
    parts: list[str] = []
    index = 0
    while index < len(segments):
        if segments[index] != "**":
            parts.append(_translate_segment(segments[index]) + ("" if index == len(segments) - 1 else "/"))
            index += 1
            continue
        if index == len(segments) - 1:
            parts.append(".*")  # '**' as the last segment matches everything below
            break
        following = index + 1
        while following < len(segments) and segments[following] != "**":
            following += 1
        piece = "".join(
            _translate_segment(segments[k]) + ("" if k == len(segments) - 1 else "/")
            for k in range(index + 1, following)
        )
        if following < len(segments):  # another '**' follows: the piece at its first place
            parts.append(f"(?>(?:[^/]+/)*?{piece})")
        else:  # the last piece: it ends the path
            parts.append(f"(?:[^/]+/)*{piece}")
        index = following
    return "".join(parts)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile one glob to a regular expression matching whole relative paths (GlobError when the
    glob is invalid)."""
    try:
        return re.compile(_glob_regex(pattern), re.DOTALL)
    except re.error as exc:  # pragma: no cover - every character is escaped; kept as a safety net
        raise GlobError(f"not a valid glob ({exc.msg})") from None


def never_matches(pattern: str) -> bool:
    """True when ``pattern`` has a ``.``, ``..`` or empty segment (``./app/**``, ``a//b``): no artifact
    path has one, so it can match nothing."""
    if pattern.endswith("/"):
        pattern += "**"  # as compile_glob reads it: "/" is the root and everything below it
    return any(segment in ("", ".", "..") for segment in pattern.strip("/").split("/"))


def check_glob(pattern: str) -> None:
    """Raise GlobError (its message says why, without the pattern) unless ``pattern`` is a valid glob."""
    compile_glob(pattern)


_BELOW = "\x00" * 300  # a name no path holds (NUL) and no run of `?` or classes matches (300 long)


class GlobSet(Frozen):
    """A set of globs; ``matches(path)`` is true when any of them matches. A frozen value (written by
    hand: graven.core.record)."""

    # no __slots__: the cached properties live in the instance's __dict__
    _fields = ("patterns",)
    patterns: tuple[str, ...]

    def __init__(self, patterns: tuple[str, ...]) -> None:
        object.__setattr__(self, "patterns", patterns)

    @classmethod
    def of(cls, patterns: Iterable[str]) -> GlobSet:
        """Build a set from patterns."""
        return cls(tuple(patterns))

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        if not self.patterns:
            return None
        joined = "|".join(f"(?:{_glob_regex(p)})" for p in self.patterns)
        return re.compile(joined, re.DOTALL)

    @cached_property
    def _tagged(self) -> re.Pattern[str]:
        # one group per pattern (the globs make no groups of their own): lastindex names which matched
        return re.compile("|".join(f"({_glob_regex(p)})" for p in self.patterns), re.DOTALL)

    def matches(self, path: str) -> bool:
        """True when ``path`` (relative, ``/``-separated) matches one of the patterns."""
        regex = self._regex
        return regex is not None and regex.fullmatch(path) is not None

    @cached_property
    def _each(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(_glob_regex(p), re.DOTALL) for p in self.patterns)

    def covers_below(self, directory: str) -> bool:
        """True when one pattern matches every path below ``directory`` (``var/**``, ``**``,
        ``var/**/*``; not ``var/*``, whose ``*`` also matches the empty name of ``var/``, but not
        ``var/a/b``). Told by two paths no literal part of a pattern matches, of one and of two
        names below ``directory``: only a pattern made of wildcards there, ``**`` among them,
        matches both. Several patterns that cover it only together do not count (a directory is
        then checked: drift says too much rather than too little)."""
        one = f"{directory}/{_BELOW}"
        two = f"{one}/{_BELOW}"
        return any(r.fullmatch(one) is not None and r.fullmatch(two) is not None for r in self._each)

    @cached_property
    def _dir_regex(self) -> re.Pattern[str] | None:
        # the directories themselves that the patterns ending in "/" name ("var/empty/": var/empty)
        named = [p.rstrip("/") for p in self.patterns if p.endswith("/") and p.strip("/")]
        if not named:
            return None
        return re.compile("|".join(f"(?:{_glob_regex(p)})" for p in named), re.DOTALL)

    def matches_dir(self, path: str) -> bool:
        """For the directory ``path``: :meth:`matches`, or a pattern ending in ``/`` names it."""
        regex = self._dir_regex
        return self.matches(path) or (regex is not None and regex.fullmatch(path) is not None)

    def unmatched(self, paths: Sequence[str]) -> list[str]:
        """The patterns that match none of ``paths``, in their order.

        One pass over ``paths`` with one regex, which stops as soon as every pattern has matched; a
        pattern that never came first (an earlier one matched each path it matches) is then looked
        for on its own.
        """
        if not self.patterns:
            return []
        left = set(range(1, len(self.patterns) + 1))
        fullmatch = self._tagged.fullmatch
        for path in paths:
            found = fullmatch(path)
            if found is not None and found.lastindex in left:
                left.discard(found.lastindex)
                if not left:
                    return []
        unmatched: list[str] = []
        for index in sorted(left):
            pattern = self.patterns[index - 1]
            if not any(map(compile_glob(pattern).fullmatch, paths)):
                unmatched.append(pattern)
        return unmatched


class Selection(Frozen):
    """``include`` minus ``exclude``: which paths become part of an artifact. A frozen value (written by
    hand: graven.core.record)."""

    # no __slots__: the cached properties live in the instance's __dict__
    _fields = ("include", "exclude")
    include: GlobSet
    exclude: GlobSet

    def __init__(self, include: GlobSet, exclude: GlobSet) -> None:
        object.__setattr__(self, "include", include)
        object.__setattr__(self, "exclude", exclude)

    @classmethod
    def of(cls, include: Iterable[str], exclude: Iterable[str]) -> Selection:
        """Build from the two pattern lists of ``[artifact]``."""
        return cls(GlobSet.of(include), GlobSet.of(exclude))

    @cached_property
    def everything(self) -> bool:
        """True when every path is selected (``**`` included, nothing excluded): the default."""
        return "**" in self.include.patterns and not self.exclude.patterns

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        # One regex for both sets: the include globs, unless an exclude glob matches the whole path.
        include = self.include._regex
        exclude = self.exclude._regex
        if include is None or exclude is None:
            return include
        return re.compile(f"(?!(?:{exclude.pattern})\\Z)(?:{include.pattern})", re.DOTALL)

    def selects(self, path: str) -> bool:
        """True when ``path`` is included and not excluded."""
        regex = self._regex
        return regex is not None and regex.fullmatch(path) is not None

    def selects_dir(self, path: str) -> bool:
        """:meth:`selects` for the directory ``path`` (an empty one is an entry): a pattern ending in
        ``/`` names the directory itself as well as everything below it (``var/empty/``), as in a
        .gitignore; it never names a file of that name."""
        return self.include.matches_dir(path) and not self.exclude.matches_dir(path)
