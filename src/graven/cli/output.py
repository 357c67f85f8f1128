"""Rendering for the CLI: JSON for scripts, short tables for people, progress on a terminal."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable, Sequence

from graven.core.units import human_size

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from graven.build.compare import Difference

__all__ = [
    "TerminalReporter",
    "emit_json",
    "emit_json_list",
    "error_line",
    "human_size",
    "print_rows",
    "print_table",
    "printable",
    "printable_message",
    "progress_text",
    "shortened",
    "shortened_message",
    "write_differences",
]


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(_dumps(value) + "\n")


def emit_json_list(items: Iterable[Any]) -> None:
    """Print one JSON array on stdout as :func:`emit_json` would print the list, one item at a time:
    a long list (the audit log) is never held whole, as objects or as text."""
    first = True
    for item in items:
        text = _dumps(item).replace("\n", "\n  ")
        sys.stdout.write(("[\n  " if first else ",\n  ") + text)
        first = False
    sys.stdout.write("[]\n" if first else "\n]\n")


def emit_json_with_list(doc: dict[str, Any], key: str, items: Iterable[Any]) -> None:
    """Print ``doc`` with ``items`` as its list ``key``, as :func:`emit_json` would print it, writing
    the list one item at a time (``show --files``: an artifact of a million files is not held again
    as objects or as one text). The list's place is found by a marker no string value can spell: a
    raw newline and the key at the top level's indent."""
    marker = "\x00graven-list\x00"
    head, found, tail = _dumps({**doc, key: marker}).partition(f'\n  "{key}": "\\u0000graven-list\\u0000"')
    assert found, key
    sys.stdout.write(f'{head}\n  "{key}": ')
    it, first = iter(items), True
    while chunk := list(itertools.islice(it, 256)):  # 256 at a time: a dumps() each is slow
        body = _dumps(chunk)[2:-2]  # "[\n  A,\n  B\n]": the items, one level in; two here
        sys.stdout.write(("[\n  " if first else ",\n  ") + body.replace("\n", "\n  "))
        first = False
    sys.stdout.write(("[]" if first else "\n  ]") + tail + "\n")


def _dumps(value: Any) -> str:
    """``value`` as JSON text that is UTF-8 (RFC 8259): a name that is not UTF-8 (an output path, a
    home, a repository given as bytes) holds surrogate escapes, which the UTF-8 stdout would write
    as the raw bytes, and no JSON parser would read the document. Each such byte is then written as
    ``\\xNN`` (:func:`graven.core.paths.json_text`, as drift's paths)."""
    import json  # here: most commands print no JSON, and start-up is budgeted

    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(_utf8(value), indent=2, sort_keys=True, ensure_ascii=False)
    return text


def _utf8(value: Any) -> Any:
    """``value`` with every string (keys too) as UTF-8 text can carry it."""
    from graven.core.paths import json_text

    if isinstance(value, str):
        return json_text(value)
    if isinstance(value, dict):
        return {json_text(k) if isinstance(k, str) else k: _utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8(item) for item in value]
    return value


def printable(text: str, *, tabs: bool = False) -> str:
    """``text`` (a value: a file name, a path, a reason, a command, a line of a file) with control and
    other invisible characters escaped (``\\x0a``, ``\\x1b``, ``\\u202e``), so that it can neither draw
    fake lines nor drive the terminal (escape sequences), and a backslash doubled (``\\\\``), so that
    what is shown reads back one way only: a name holding ESC is shown ``a\\x1b``, a name holding the
    four characters ``\\x1b`` is shown ``a\\\\x1b``. With ``tabs``, a tab stays a tab (the lines of a
    file shown as they are: a config diff). A value is escaped once, where it is put in what is shown
    (escaped twice, its backslashes would double again); a line graven composed around escaped
    values is shown with :func:`printable_message`."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        "\\\\" if ch == "\\" else ch if ch.isprintable() or (tabs and ch == "\t") else _escape(ch)
        for ch in text
    )


def printable_message(text: str) -> str:
    """A line graven composed (an error, a warning, a verdict) with control and other invisible
    characters escaped as :func:`printable` escapes them, and a backslash left as it is: a message
    shows its values already quoted (``repr``, :func:`graven.core.paths.display_path`,
    :func:`printable`), and doubling their backslashes would show ``'caf\\\\xe9'`` for what they wrote
    ``'caf\\xe9'``. Idempotent: a line escaped twice (a warning of an escaped message) is unchanged."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


# A value longer than this (a digest prefix, a name, a path, a revision of 100,000 characters) is shown
# by its start and its end in an error line; a line longer than _MAX_LINE, by its start and its end.
MAX_SHOWN = 200
_MAX_LINE = 1000
_KEEP = 80  # characters kept at each end of a long value
_OPEN = "'\"([<"
_CLOSE = "'\")]>"
_TRAIL = ":;,.!?"


def shortened(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` as an error line shows one value: unchanged up to ``limit`` characters, else its first
    and last characters around an ellipsis and its length, ``abc…xyz (100,000 characters)``."""
    return text if len(text) <= limit else f"{_cut(text)} ({len(text):,} characters)"


def _cut(text: str) -> str:
    return f"{text[:_KEEP]}…{text[-_KEEP:]}"


def shortened_message(message: str) -> str:
    """``message`` (an error graven composed around what the user gave) with every value longer than
    :data:`MAX_SHOWN` characters shortened in the middle (:func:`shortened`): a word of the line, its
    quotes and the punctuation after it left outside (``'abc…xyz' (100,000 characters);``); a line
    still longer than ``_MAX_LINE`` (a long value holding spaces) keeps its start and its end, where
    the hint is. A message that is short already is returned as it is."""
    if len(message) <= MAX_SHOWN:
        return message
    import re

    def word(match: re.Match[str]) -> str:
        token = match.group()
        core = token.lstrip(_OPEN)
        lead = token[: len(token) - len(core)]
        body = core.rstrip(_TRAIL)
        trail = core[len(body) :]
        value = body.rstrip(_CLOSE)
        close = body[len(value) :]
        if len(value) <= MAX_SHOWN:
            return token
        return f"{lead}{_cut(value)}{close} ({len(value):,} characters){trail}"

    text = re.sub(rf"\S{{{MAX_SHOWN + 1},}}", word, message)
    if len(text) <= _MAX_LINE:
        return text
    left = len(text) - 600 - 300
    return f"{text[:600]} … ({left:,} characters left out) … {text[-300:]}"


def error_line(message: str) -> str:
    """The one line an error is shown as on stderr: ``graven: error: `` and ``message``, its long
    values shortened (:func:`shortened_message`) and its control characters escaped
    (:func:`printable_message`). A newline in it is a value's (a path typed with one: graven's own
    messages are one line) and is escaped as any control character: cut there, the line lost its
    reason and its hint. The message is shown as the JSON error document carries it, a value's
    leading or trailing space included."""
    text = message if message.strip() else "unknown error"
    return f"graven: error: {printable_message(shortened_message(text))}\n"


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogateescape): that byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


SHOWN_DIFFERENCES = 100  # differs: lines on a terminal; --json lists every difference


def write_differences(differences: Sequence[Difference]) -> None:
    """Each path two builds differ in, ``differs: PATH: DETAIL`` on stderr, with diffoscope's summary
    indented under it: the path is a value of the artifact (:func:`printable`), the detail a line graven
    composed around quoted values (:func:`printable_message`), and diffoscope's lines quote the files
    themselves (shown as a file's lines are: tabs kept, anything else escaped). The first
    :data:`SHOWN_DIFFERENCES` paths, then one line counting the others (a build that differs
    everywhere would bury the error line under thousands)."""
    for item in differences[:SHOWN_DIFFERENCES]:
        sys.stderr.write(f"differs: {printable(item.path)}: {printable_message(item.detail)}\n")
        if item.diffoscope:
            for line in item.diffoscope.split("\n"):
                sys.stderr.write(f"    {printable(line, tabs=True)}\n")
    hidden = len(differences) - SHOWN_DIFFERENCES
    if hidden > 0:
        noun = "path" if hidden == 1 else "paths"
        sys.stderr.write(f"... and {hidden} more differing {noun} (--json lists every one)\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain, aligned table on stdout (no colours: it is read by people and by grep); every cell
    is shown :func:`printable`."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    sys.stdout.write(line.rstrip() + "\n")
    for row in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def print_rows(headers: Sequence[str], rows: Iterable[Sequence[str]], *, sample: int = 2000) -> None:
    """:func:`print_table` for a long stream of rows (the audit log): the columns are as wide as the
    widest cell of the first ``sample`` rows (all of them, for a table that short: then the output
    is print_table's), and later rows are written as they come, a wider cell moving only its row."""
    it = iter(rows)
    head = [[printable(cell) for cell in row] for row in itertools.islice(it, sample)]
    widths = [len(h) for h in headers]
    for row in head:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    sys.stdout.write(line.rstrip() + "\n")
    for row in itertools.chain(head, ([printable(cell) for cell in row] for row in it)):
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def progress_text(stage: str, done: int, total: int | None) -> str:
    """The progress line: ``stage: done/total``; sizes for a stage counted in bytes
    (``writing archive: 12.0 MiB/40.2 MiB``)."""
    from graven.service.context import BYTES  # here: loaded by every command that reports progress

    shown: Callable[[int], str] = str
    if stage.endswith(BYTES):
        stage, shown = stage[: -len(BYTES)], human_size
    return f"{stage}: {shown(done)}/{shown(total)}" if total else f"{stage}: {shown(done)}"


def _write_stderr(text: str) -> bool:
    """Write ``text`` to stderr at once; False when stderr is gone (a closed terminal or ssh session:
    SIGHUP, EIO): a reporter drops what it cannot show, never raising into the work that reports."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: stderr closed
        return False
    return True


class TerminalReporter:
    """Warnings on stderr; progress redrawn in place when stderr is a terminal."""

    def __init__(self, *, quiet: bool = False) -> None:
        import os

        # not on a terminal that cannot redraw a line (TERM=dumb: an editor's shell, some CI logs)
        self._tty = sys.stderr.isatty() and not quiet and os.environ.get("TERM") != "dumb"
        self._last = 0.0
        self._drawn = False
        self._shown = ""  # the line drawn last: the same line is not drawn again

    def warn(self, message: str) -> None:
        """One warning line (control characters escaped: a message may quote a name or a value)."""
        self._clear()
        _write_stderr(f"graven: warning: {printable_message(message)}\n")

    def progress(self, stage: str, done: int, total: int | None) -> None:
        """Redraw the progress line at most ten times a second."""
        if not self._tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (total is None or done < total):
            return
        text = progress_text(stage, done, total)
        if self._drawn and text == self._shown:  # 100% reported again and again (a stream's last reads)
            return
        self._last = now
        self._drawn = _write_stderr(f"\r\x1b[K{text}")
        self._shown = text

    def _clear(self) -> None:
        if self._drawn:
            _write_stderr("\r\x1b[K")
            self._drawn = False

    def close(self) -> None:
        """Remove the progress line."""
        self._clear()
