"""The ``graven`` command: a thin layer over :mod:`graven.service`.

Exit codes: 0 success, 1 a check failed (verification, policy, drift), 2 bad usage or input. Errors are
one line on stderr, ``graven: error: ...``; ``-v`` adds the traceback.
"""

from __future__ import annotations

import sys

from graven import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    import contextlib
    from collections.abc import Sequence

__all__ = ["GC_YOUNG_THRESHOLD", "STOPPED", "command_name", "entry", "gc_thresholds", "main", "stopped"]

# The parser (and the registry of command modules) lives in graven.cli.app; it is imported only when
# a command runs, so that `graven --version` loads nothing else.

# The garbage collector of a command's process. A deploy, a rollback, a drift check or a build makes
# tens of thousands of small objects (manifest entries, stat records, rows) that live until the process
# ends: with the interpreter's default thresholds the collector runs ~100 times over them and finds
# almost nothing (~8 ms of a CLI rollback). A command runs with a young-generation threshold of 100,000
# container objects instead of 700: short commands then never collect, and long or huge ones (a build
# of 13,000+ files, `graven log verify` over a million entries) still do, every 100,000 new objects, so
# their memory stays bounded: the collector is never disabled. `graven watch` runs for days and keeps
# the interpreter's rhythm (short pauses). What the start-up made is frozen once the command's line is
# parsed (graven.cli.app.run): no collection scans it again.
GC_YOUNG_THRESHOLD = 100_000
_GC_DEFAULT_RHYTHM = frozenset({"watch"})  # long-running commands: the interpreter's thresholds


def command_name(args: Sequence[str]) -> str | None:
    """The command word: the first argument that is not a global option."""
    for arg in args:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def gc_thresholds(command: str | None) -> tuple[int, int, int] | None:
    """The collector's thresholds (``gc.set_threshold``) for a process that runs ``command``; None keeps
    the interpreter's defaults. The collector stays enabled for every command."""
    if command in _GC_DEFAULT_RHYTHM:
        return None
    return (GC_YOUNG_THRESHOLD, 10, 10)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code.

    Without ``argv`` graven is the process (the console script, ``python -m graven.cli.main``): the
    garbage collector is set for the command (:func:`gc_thresholds`) before anything else is imported.
    A caller that passes ``argv`` runs commands in its own process (tests) and keeps its own settings.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # answered before any command module is loaded
        sys.stdout.write(f"graven {__version__}\n")
        return 0
    if argv is None:
        import gc

        thresholds = gc_thresholds(command_name(args))
        if thresholds is not None:
            gc.set_threshold(*thresholds)
    _import_argparse()
    from graven.cli.app import run

    return run(args, freeze_gc=argv is None)


def _import_argparse() -> None:
    """Import argparse (for graven.cli.app) with its messages untranslated. argparse imports
    :mod:`gettext` for them, and gettext compiles a large regular expression (plural forms) and
    imports :mod:`locale` as it is imported, then looks for a message catalog on disk for each message
    a parser is built with: ~5 ms of every command on a slow machine, for messages graven never
    translates (its own are English). A stand-in gettext that returns each message as it is serves
    argparse alone: it is out of ``sys.modules`` again before anything else can import it (whatever
    imports gettext later gets the real one)."""
    if "argparse" in sys.modules or "gettext" in sys.modules:
        return  # imported already (graven as a library, the tests): nothing to save
    import types

    untranslated = types.ModuleType("gettext")
    untranslated.gettext = lambda message: message  # type: ignore[attr-defined]
    untranslated.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]
    sys.modules["gettext"] = untranslated
    try:
        import argparse  # noqa: F401 - kept in sys.modules for graven.cli.app
    finally:
        del sys.modules["gettext"]


def entry() -> None:
    """The console script and ``python -m graven.cli.main``: :func:`main`, then the end of the process
    without the interpreter's teardown. By then the command has closed every file and database
    connection it opened (graven.cli.app.run closes what is left) and graven registers nothing to run
    at exit, so freeing the command's objects one by one (tens of thousands after a deploy or a full
    drift check of 7,000 files) is pure cost: 5-15 ms. When the output cannot be written (a closed
    pipe, a full disk), :func:`output_failed` decides the exit code."""
    import os

    if sys.getfilesystemencoding() != "utf-8" and sys.executable:
        _run_in_utf8_mode()
    _buffer_stdout()
    code = 0
    try:
        code = main()
        if sys.stdout is not None:  # None when the descriptor was closed at start-up
            sys.stdout.flush()
    except OSError as exc:  # the output could not be written: say so, and never exit 0
        code = output_failed(exc, code)
    except KeyboardInterrupt as exc:  # Ctrl-C before run() handles it (graven.cli.app is imported),
        code = stopped(terminated=type(exc).__name__ == "Terminated")  # or a second one as it ends
    except RuntimeError as exc:  # ... or while a class is made (3.11 wraps it in __set_name__'s error)
        if not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        code = interrupted()
    with _suppressed():  # the command is over: another Ctrl-C or SIGTERM could only cut its end short
        import _signal  # type: ignore[import-not-found]  # signal would import enum: --version loads nothing

        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _buffer_stdout() -> None:
    """Give stdout a buffer again when the interpreter runs unbuffered (``python -u``,
    ``PYTHONUNBUFFERED=1``, set in many container images). Its text then goes to the descriptor in one
    ``write(2)`` per write, and the part a short write leaves (a full disk, a file size limit, a reader
    that closed the pipe midway) is dropped without an error: ``graven log export > FILE`` exited 0
    with FILE cut short. A buffered writer writes on until all is written or the write fails, and the
    failure reaches :func:`output_failed`."""
    import io

    stream = sys.stdout
    if stream is None or not isinstance(getattr(stream, "buffer", None), io.RawIOBase):
        return
    try:  # line-buffered on a terminal, as the interpreter's own buffered stdout
        sys.stdout = open(stream.fileno(), "w", encoding=stream.encoding, errors=stream.errors, closefd=False)  # noqa: SIM115
    except (OSError, ValueError, AttributeError):  # no descriptor to be had: left as it is
        return


ARGS_ENCODING = "_GRAVEN_ARGS_ENCODING"  # the charset the arguments were typed in, for the re-run


def _run_in_utf8_mode() -> None:
    """Start again, the same command line in Python's UTF-8 mode (``-X utf8``). Under a locale that is
    not UTF-8 (say ``LC_ALL=en_US.ISO-8859-1``), file names would be decoded with its charset: a
    step's output ``café`` became ``cafÃ©`` in the manifest (another digest for the same commit), and
    some names a traceback. graven's names are UTF-8 bytes whatever the locale. The arguments go on
    as the bytes they were (a path names the same file); a text argument (a ``--reason``) typed in
    the locale's charset is decoded with it (graven.cli.app reads :data:`ARGS_ENCODING`). The
    interpreter's own options and the script are those it was started with: no ``-m``, which would
    put the current directory (an untrusted checkout's ``graven/``) first on the import path."""
    import contextlib
    import os

    argv = [os.fsencode(sys.executable), b"-X", b"utf8", *(os.fsencode(a) for a in sys.orig_argv[1:])]
    os.environ[ARGS_ENCODING] = sys.getfilesystemencoding()
    with contextlib.suppress(OSError):  # no interpreter to be had: go on as we are
        os.execv(sys.executable, argv)  # noqa: S606
    os.environ.pop(ARGS_ENCODING, None)


STOPPED: list[int] = []  # the exit code of the signal that stopped the command, once it was said


def stopped(*, terminated: bool) -> int:
    """Say that Ctrl-C (``graven: interrupted``, exit 130, as a shell's for SIGINT) or SIGTERM
    (``graven: terminated``, 143) stopped the command; its exit code. Said once: a second signal as
    the command ends (Ctrl-C pressed twice) adds no line and keeps the first one's code."""
    if not STOPPED:
        STOPPED.append(143 if terminated else 130)
        with _suppressed():
            sys.stderr.write("graven: terminated\n" if terminated else "graven: interrupted\n")
    return STOPPED[0]


def interrupted() -> int:
    """Say that Ctrl-C stopped the command (:func:`stopped`); its exit code."""
    return stopped(terminated=False)


def output_failed(exc: OSError, code: int) -> int:
    """The exit code of a command whose output could not be written (``exc``), that would have exited
    with ``code``: a failed check keeps its code; otherwise 141 for a closed pipe (a reader that had
    enough, as for a process killed by SIGPIPE) and 1 for anything else (a full disk), which is also
    said on stderr. The unwritten output is dropped, so that the interpreter does not try again."""
    import errno
    import os

    with _suppressed():
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    if code:
        return code
    if exc.errno == errno.EPIPE:
        return 141
    with _suppressed():
        sys.stderr.write(f"graven: error: cannot write the output: {os.strerror(exc.errno or 0)}\n")
    return 1


def _suppressed() -> contextlib.AbstractContextManager[None]:
    import contextlib

    return contextlib.suppress(OSError, ValueError, AttributeError)


if __name__ == "__main__":
    entry()
