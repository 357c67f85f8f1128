"""Reading TOML text: :mod:`tomllib`, with every way it refuses a document said as one reason.

tomllib raises TOMLDecodeError for a malformed document, but lets two other failures through: int()'s
ValueError for an integer of more than ``sys.get_int_max_str_digits()`` digits, and a RecursionError
for arrays or tables nested thousands deep. The files graven reads (a commit's graven.toml, the trust
policy) must be refused in one line whatever they hold.
"""

from __future__ import annotations

import re
import sys
import tomllib
from typing import Any

__all__ = ["TomlError", "key_line", "loads"]


class TomlError(ValueError):
    """Why a TOML document cannot be read: one line, without the source (the caller names it)."""


def loads(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``; :class:`TomlError` for whatever makes it refuse the document."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(str(exc)) from None
    except ValueError:  # int() refuses more than 4,300 digits; tomllib lets that ValueError through
        raise TomlError(f"an integer of more than {sys.get_int_max_str_digits():,} digits") from None
    except RecursionError:
        raise TomlError("arrays or tables nested too deeply") from None


# A key as a line writes it: bare, "basic" or 'literal' parts joined by dots (escapes other than \" are
# left as written: a key that uses them is not found, and no line is named).
_PART = r"""\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')\s*"""
_DOTTED = rf"{_PART}(?:\.{_PART})*"
_HEADER = re.compile(rf"\s*\[\[?({_DOTTED})\]\]?\s*(?:#.*)?")
_ASSIGN = re.compile(rf"({_DOTTED})=")
_PARTS = re.compile(_PART)


def _keys(dotted: str) -> tuple[str, ...]:
    parts = [m.strip() for m in _PARTS.findall(dotted)]
    return tuple(p[1:-1].replace('\\"', '"') if p[:1] in "\"'" else p for p in parts)


def key_line(text: str, path: tuple[str, ...]) -> int | None:
    """The line (1-based) of ``text`` that defines the key or table ``path`` (list indices left out), or
    None. Best effort, for an error message: the table's header or the ``key =`` line; else the first
    line of a table below it (``[enviroment.prod]`` for ``enviroment``); else the line of an inline
    table or dotted key that holds it. Lines inside multi-line strings are no keys."""
    target = tuple(p for p in path if not p.isdigit())
    if not target:
        return None
    table: tuple[str, ...] = ()
    below: int | None = None
    holder: tuple[int, int] | None = None  # (depth, line) of the deepest key line holding target
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        header = _HEADER.fullmatch(line)
        if header is not None:
            table = _keys(header[1])
            defined = table
        elif (assign := _ASSIGN.match(line)) is not None:
            defined = table + _keys(assign[1])
            rest = line[assign.end() :]
            for quotes in ('"""', "'''"):
                if rest.count(quotes) % 2:
                    in_string = quotes
        else:
            continue
        if defined == target:
            return number
        if below is None and defined[: len(target)] == target:
            below = number
        if (
            header is None
            and target[: len(defined)] == defined
            and (holder is None or len(defined) > holder[0])
        ):
            holder = (len(defined), number)
    if below is not None:
        return below
    return holder[1] if holder is not None else None
