"""Path globs for ``include`` / ``exclude``: ``*`` and ``?`` stay inside one path segment, ``**`` spans
any number of segments (also none), ``[abc]`` is a character class. A pattern ending in ``/`` matches
the directory and everything below it. Patterns match the whole path, relative to the artifact root.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

__all__ = ["GlobSet", "Selection", "compile_glob"]


def _translate_segment(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = segment.find("]", i + 2 if segment[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = segment[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile one glob to a regular expression matching whole relative paths."""
    if pattern.endswith("/"):
        pattern += "**"
    segments = pattern.strip("/").split("/")
    parts: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            # '**' as the last segment matches everything below; elsewhere zero or more segments.
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_translate_segment(segment) + ("" if last else "/"))
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class GlobSet:
    """A set of globs; ``matches(path)`` is true when any of them matches."""

    patterns: tuple[str, ...]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> GlobSet:
        """Build a set from patterns."""
        return cls(tuple(patterns))

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        if not self.patterns:
            return None
        joined = "|".join(f"(?:{compile_glob(p).pattern})" for p in self.patterns)
        return re.compile(joined, re.DOTALL)

    def matches(self, path: str) -> bool:
        """True when ``path`` (relative, ``/``-separated) matches one of the patterns."""
        regex = self._regex
        return regex is not None and regex.fullmatch(path) is not None


@dataclass(frozen=True)
class Selection:
    """``include`` minus ``exclude``: which paths become part of an artifact."""

    include: GlobSet
    exclude: GlobSet

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
