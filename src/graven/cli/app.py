"""The ``graven`` command line on the standard library's argparse.

A command's module is imported only when that command runs (or when help lists them all), so every
command pays for its own imports and no one else's. The CLI framework itself must be cheap too:
start-up is part of every command's latency (click alone took ~20 ms, twice the interpreter's own
start-up), so graven uses argparse with a few helpers here.

Each ``graven.cli.*_cmds`` module has ``register(commands)``: it adds its commands with
:func:`add_command`, whose handler takes the parsed ``argparse.Namespace`` and returns the exit code.

SIGTERM (``timeout``, ``kill``, a CI runner cancelling a job) is handled like Ctrl-C: it raises
:class:`Terminated`, a KeyboardInterrupt, in the main thread, so that the same cleanup runs (a build's
steps are killed and its workspace removed), and graven exits with 143 and ``graven: terminated``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from graven import __version__
from graven.cli.main import command_name as _command_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:  # typing and collections.abc are not needed at run time: start-up stays smaller
    import signal as _signal
    from collections.abc import Callable
    from pathlib import Path
    from types import FrameType
    from typing import Any, NoReturn

    Handler = Callable[[argparse.Namespace], int]
else:
    # The C module that Python itself imports at start-up: the ``signal`` module on top of it would
    # import enum for nothing more than its names.
    import _signal

__all__ = [
    "COMMAND_MODULES",
    "ArgParser",
    "Terminated",
    "UsageError",
    "add_command",
    "add_group",
    "add_limit",
    "build_parser",
    "file_path",
    "limit_count",
    "port_number",
    "run",
]

# command name -> the graven.cli module that registers it; the order here is the order of
# `graven --help`. Add new commands here.
COMMAND_MODULES: dict[str, str] = {
    "init": "build_cmds",
    "build": "build_cmds",
    "artifacts": "artifact_cmds",
    "show": "artifact_cmds",
    "verify": "artifact_cmds",
    "export": "artifact_cmds",
    "import": "artifact_cmds",
    "push": "registry_cmds",
    "pull": "registry_cmds",
    "keys": "keys_cmds",
    "attest": "keys_cmds",
    "log": "log_cmds",
    "db": "db_cmds",
    "deploy": "deploy_cmds",
    "promote": "deploy_cmds",
    "rollback": "deploy_cmds",
    "hold": "deploy_cmds",
    "unhold": "deploy_cmds",
    "retire": "deploy_cmds",
    "reject": "deploy_cmds",
    "status": "deploy_cmds",
    "history": "deploy_cmds",
    "drift": "drift_cmds",
    "heal": "drift_cmds",
    "watch": "drift_cmds",
}


class UsageError(Exception):
    """Bad usage of the command line (exit 2); ``prog`` names the command for the ``--help`` hint."""

    def __init__(self, message: str, prog: str = "graven") -> None:
        # argparse repeats what it could not place ("unrecognized arguments: --webhok URL"): a URL's
        # password or token, a chat webhook's path, a known credential is never echoed
        message = _redacted(message)
        super().__init__(message)
        self.message = message
        self.prog = prog


def _redacted(message: str) -> str:
    """An error's ``message`` as it may be shown: what it quotes as typed (a URL given to --since or
    --env, a stray argument) may hold a password, a token or a webhook's secret path."""
    from graven.deploy.hook_result import redact_secrets  # here: only an error needs it

    environ = dict(os.environ)
    hidden: tuple[str, ...] = ()
    if environ.get(_DB_URL):  # graven names it without its password (db.redacted_url): the rest of it is
        hidden = _url_passwords(environ.pop(_DB_URL))  # what the error is about (the URL to write)
    text = redact_secrets(message, environ)
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


_DB_URL = "GRAVEN_DB_URL"  # db.HOME_URL, without importing the database layer on every error
# a password given as a keyword: libpq's form (host=H password=P), written by mistake where a URL goes,
# or a URL's query; quoted as libpq quotes it, or up to a space or a separator; %3D: '=' as a URL shows it
_PASSWORD_WORD = (
    r"""(?i)(?:pass(?:word|wd)?|pwd)\s*(?:=|%3D)\s*(?:'((?:[^'\\]|\\.)*)'|"([^"]*)"|([^\s&;#'"]+))"""  # noqa: S105 - a pattern
)


def _url_passwords(url: str) -> tuple[str, ...]:
    """Of GRAVEN_DB_URL's value, what is secret: the password of ``url`` and each value given as a
    ``password=`` keyword (libpq's keyword form, or a query); all of it when it does not parse (where
    its password ends is a guess). A password of fewer than 4 characters is left to the patterns of
    redact_secrets (``user:PW@``, ``?password=``): replaced everywhere, it would cut words of the line."""
    import re
    from urllib.parse import urlsplit

    found: list[str] = []
    if "://" in url:
        try:
            found.append(urlsplit(url).password or "")
        except ValueError:
            return (url,)
    for match in re.finditer(_PASSWORD_WORD, url):
        found.append(next(group for group in match.groups() if group is not None))
    return tuple(secret for secret in found if len(secret) >= 4)


class Terminated(KeyboardInterrupt):
    """SIGTERM was received: raised in the main thread where Ctrl-C raises KeyboardInterrupt, and
    handled in the same places (it is one), so that the same cleanup runs. Exit code 143."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _handle_sigterm() -> object:
    """Raise :class:`Terminated` on SIGTERM; return the previous handler (None when none was set)."""
    try:
        return _signal.signal(_signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (graven run as a library): leave signals alone
        return None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, measuring the terminal as shutil.get_terminal_size does but without
    importing shutil (with bz2 and lzma: ~3 ms of start-up; a formatter is made per argument)."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns())


def _columns() -> int:
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class ArgParser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`UsageError` instead of printing and exiting, and never
    accepts an abbreviated option (``--jso`` is not ``--json``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        """As argparse's; a positional is shown in upper case (``DIGEST``), as the help texts name it."""
        if names and isinstance(names[0], str) and not names[0].startswith("-"):
            kwargs.setdefault("metavar", names[0].upper())
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):
            message += " (a value that starts with '-' goes after '=': --reason=-x)"
        raise UsageError(_suggested(_readable(message)), self.prog)


def quoted(value: str) -> str:
    """``value`` (an argument as typed) in quotes, as an error line shows it: a byte that is not UTF-8
    (a surrogate escape) and a control character as ``\\xNN`` (:func:`graven.core.paths.display_path`),
    never repr's ``'\\udcff'``, which is no byte the user typed."""
    from graven.core.paths import display_path  # here: only an error needs it (start-up)

    return f"'{display_path(value)}'"


# A str literal as repr writes it: argparse quotes the values of its messages with %r
_LITERAL = r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*["]"""


def _readable(message: str) -> str:
    """argparse's ``message`` with each value it quoted with repr (``invalid choice: '\\udcff'``,
    ``ignored explicit argument``, a type's ``'\\x1b' is not a port number``) that holds a byte that is
    not UTF-8 or a control character shown by :func:`quoted`; any other literal is left as it is."""
    if message.isascii() and "\\" not in message:
        return message  # no escape in any literal: nothing to show otherwise
    import ast
    import re

    def shown(found: re.Match[str]) -> str:
        try:
            value = ast.literal_eval(found.group(0))
        except (ValueError, SyntaxError):
            return found.group(0)
        if not isinstance(value, str) or value.isprintable():
            return found.group(0)
        return quoted(value)

    return re.sub(_LITERAL, shown, message)


def _suggested(message: str) -> str:
    """argparse's ``argument X: invalid choice: 'genrate' (choose from 'generate', ...)`` with the
    choice meant, as for a command (``did you mean 'generate'?``); a subcommand's in graven's words,
    not argparse's name for its list (``argument [SUBCOMMAND]``)."""
    import re

    found = re.fullmatch(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)", message, re.DOTALL)
    if found is None:
        return message
    what, given, listed = found.groups()
    choices = re.findall(r"'([^']*)'", listed)
    import difflib

    close = difflib.get_close_matches(given, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    # ``given`` is quoted already (repr's, or :func:`quoted`'s): quoted again, its escapes would double
    if what.strip("[]") == "SUBCOMMAND":
        return f"no such subcommand '{given}'{hint} (one of: {', '.join(choices)})"
    return f"argument {what}: invalid choice '{given}'{hint} (one of: {', '.join(choices)})"


class _Unused(ArgParser):
    """Stands in for the parser of a command that is not being run: arguments added to it are
    dropped (building every command's full parser would cost start-up for nothing)."""

    def __init__(self) -> None:  # no argparse state at all: only add_argument is ever called
        pass

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        return argparse.Action(option_strings=[], dest="unused")

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return self  # its arguments are dropped alike


class _UnusedCommands:
    """Stands in for the subcommands of a group that is not being run."""

    def add_parser(self, *args: Any, **kwargs: Any) -> ArgParser:
        return _Unused()


def _skipped(commands: object, name: str) -> bool:
    """True for a command that is not the one being run (or inside a group that is not). While one
    command's line is parsed, build_parser marks the top-level subcommands with that command's name
    (``graven_only``), and the parsers of its siblings are not built."""
    if isinstance(commands, _UnusedCommands):
        return True
    only = getattr(commands, "graven_only", None)
    return only is not None and only != name


def add_command(
    commands: argparse._SubParsersAction[ArgParser], name: str, handler: Handler | None
) -> ArgParser:
    """Add the command ``name``; its help is the handler's docstring (first line in listings).

    A handler of None makes a group whose subcommands are added to the returned parser.
    """
    if _skipped(commands, name):
        return _Unused()
    doc = (handler.__doc__ if handler else None) or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else ""
    parser = commands.add_parser(name, help=summary, description=_dedent(doc))
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_group(
    commands: argparse._SubParsersAction[ArgParser], name: str, summary: str, handler: Handler | None = None
) -> tuple[ArgParser, argparse._SubParsersAction[ArgParser]]:
    """A command with subcommands: its parser (for its own options) and its subcommands. With
    ``handler`` it also runs on its own (``graven log``); without, a subcommand is required."""
    if _skipped(commands, name):
        unused: argparse._SubParsersAction[ArgParser] = _UnusedCommands()  # type: ignore[assignment]
        return _Unused(), unused
    parser = commands.add_parser(name, help=summary, description=summary)
    if handler is not None:
        parser.set_defaults(handler=handler)
        parser.description = _dedent(handler.__doc__ or summary)
    sub = parser.add_subparsers(
        title="subcommands",
        metavar="SUBCOMMAND" if handler is None else "[SUBCOMMAND]",
        parser_class=ArgParser,
        required=handler is None,
    )
    return parser, sub


def _dedent(doc: str) -> str:
    """A docstring as help text: the first line, then the rest without its common indentation."""
    lines = doc.strip().splitlines()
    if not lines:
        return ""
    rest = lines[1:]
    indent = min((len(line) - len(line.lstrip()) for line in rest if line.strip()), default=0)
    return "\n".join([lines[0], *(line[indent:] for line in rest)]).strip()


def port_number(value: str) -> int:
    """An argparse type: a TCP port, 0-65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not in the range 0-65535")
    return port


_MAX_LIMIT = 2**63 - 1  # graven.service.context.MAX_LIMIT (not imported here: start-up)


def limit_count(value: str) -> int:
    """An argparse type: how many of the newest rows to show, a positive integer in ASCII digits
    (no sign, ``_``, spaces or other scripts' digits, which ``int()`` would take)."""
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer (1, 2, 3, ...)")
    count = int(value)
    if count > _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is larger than the largest limit {_MAX_LIMIT}")
    return count


def file_path(text: str) -> Path:
    """An argparse type: a file that a command reads or writes. An empty value (an unset shell
    variable) names no file: ``Path("")`` is the current directory, and the error said so
    (``policy file . is a directory``, ``cannot read .: Is a directory``). A value ending in ``/``
    names a directory, which ``Path`` would drop: ``-o new.tar/`` wrote a file ``new.tar``."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; give a file name")
    if text.endswith("/"):
        raise argparse.ArgumentTypeError("ends with '/', which names a directory; give a file name")
    from pathlib import Path

    return Path(text)


def add_limit(parser: ArgParser, help_text: str, *, dest: str = "limit") -> None:
    """Add ``-n N`` / ``--limit N``: only the newest N rows of a listing (a usage error, exit 2,
    unless N is a positive integer)."""
    parser.add_argument(
        "-n",
        "--limit",
        dest=dest,
        type=limit_count,
        metavar="N",
        help=help_text,
    )


def build_parser(command: str | None) -> ArgParser:
    """The parser for ``command`` (only its module is imported), or for every command."""
    parser = ArgParser(
        prog="graven",
        description="graven: reproducible, signed, content-addressed artifacts from a git commit.",
    )
    parser.add_argument("--version", action="version", version=f"graven {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Show tracebacks and more detail.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=ArgParser)
    if command in COMMAND_MODULES:
        modules = [COMMAND_MODULES[command]]
    else:
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    if len(modules) == 1:
        commands.graven_only = command  # type: ignore[attr-defined]
    for name in modules:
        importlib.import_module(f"graven.cli.{name}").register(commands)
    if len(modules) > 1:  # list commands in the registry's order, whatever the modules' order
        order = {name: i for i, name in enumerate(COMMAND_MODULES)}
        commands._choices_actions.sort(key=lambda action: order.get(action.dest, len(order)))
    return parser


def _check_text(namespace: argparse.Namespace, where: _ArgNames | None = None) -> None:
    """Refuse an argument that is not UTF-8 text (a byte that is none arrives as a surrogate escape):
    reasons, names and digests are recorded in UTF-8 databases and logs. Paths (``pathlib.Path``
    values) may hold any bytes and are checked where they are used. ``where`` says, for an argument's
    dest, how the user wrote it and which command's ``--help`` describes it (:class:`_ArgNames`)."""
    names = where or _ArgNames([])
    reason = getattr(namespace, "reason", None)
    if isinstance(reason, str) and not reason.strip():  # recorded for good: it must say something
        raise UsageError(
            "--reason is empty; say why (it is recorded in the history and the audit log)",
            names.help("reason"),
        )
    typed_in = _typed_in()
    for name, value in vars(namespace).items():
        if typed_in and name in _FREE_TEXT and isinstance(value, str) and not value.isascii():
            setattr(namespace, name, value := _retyped(value, typed_in))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    from graven.core.paths import json_text

                    shown = "" if name in _SECRET_ARGS else f" '{json_text(item)[:80]}'"
                    raise UsageError(
                        f"{names.shown(name)}{shown} is not valid UTF-8 text; use UTF-8",
                        names.help(name),
                    ) from None


class _ArgNames:
    """For one command line: the (sub)commands it names, outermost first, and through them how an
    argument (by its dest) is shown to the user."""

    def __init__(self, chain: list[argparse.ArgumentParser]) -> None:
        self.chain = chain

    @classmethod
    def of(cls, parser: ArgParser, args: list[str]) -> _ArgNames:
        """The chain of parsers of ``args``: graven's, then each subcommand's that the line names."""
        chain: list[argparse.ArgumentParser] = [parser]
        rest = args
        while True:
            sub = next((a for a in chain[-1]._actions if isinstance(a, argparse._SubParsersAction)), None)
            word = _command_name(rest)
            if sub is None or word is None or word not in sub.choices:
                break
            chain.append(sub.choices[word])
            rest = rest[rest.index(word) + 1 :]
        return cls(chain)

    def _owner(self, dest: str) -> tuple[argparse.ArgumentParser, argparse.Action] | None:
        """The innermost parser of the line with an argument ``dest``, and that argument (``graven
        log``'s own ``--env`` stays the timeline's under ``graven log verify``)."""
        for found in reversed(self.chain):
            for action in found._actions:
                if action.dest == dest:
                    return found, action
        return None

    def help(self, dest: str) -> str:
        """The command whose ``--help`` describes ``dest``: ``graven db copy`` for ``url``; else the
        innermost command (``graven --help`` lists no subcommand's options)."""
        owner = self._owner(dest)
        if owner is not None:
            return owner[0].prog
        return self.chain[-1].prog if self.chain else "graven"

    def shown(self, dest: str) -> str:
        """``dest`` as the user wrote it: an option by its longest spelling (``--env``, not the
        ``log_env`` it is stored as), a positional argument by its metavar (``URL``)."""
        owner = self._owner(dest)
        if owner is None:
            return f"the argument {dest.replace('_', '-')}"
        action = owner[1]
        if action.option_strings:
            return max(action.option_strings, key=len)
        return action.metavar if isinstance(action.metavar, str) else dest.upper()


# Arguments that are words for people (recorded in the history and the log), decoded with the user's
# charset; every other one (a command line, a URL, a git revision) goes on as the bytes it was.
_FREE_TEXT = frozenset({"reason"})
# arguments never echoed: a database URL's password, a webhook's token (in its path), an alert command's
_SECRET_ARGS = frozenset({"url", "webhook", "alert_command"})
_TYPED_IN: list[str | None] = []  # the charset of the arguments, once read (see _typed_in)


def _typed_in() -> str | None:
    """The charset the user's locale uses, when graven started again in Python's UTF-8 mode under a
    locale that is not UTF-8 (:func:`graven.cli.main._run_in_utf8_mode`): text arguments were typed
    in it, and the terminal shows it. Read once, and taken out of the environment (hooks and steps
    do not see it); stderr, and stdout on a terminal, then write that charset again (as before the
    re-run; what cannot be shown is escaped)."""
    if not _TYPED_IN:
        from graven.cli.main import ARGS_ENCODING

        charset = os.environ.pop(ARGS_ENCODING, None) or None
        if charset is not None:
            import contextlib

            # a terminal shows that charset; a pipe gets UTF-8 (JSON is UTF-8, RFC 8259)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError, LookupError, ValueError, OSError):
                    if stream is sys.stderr or stream.isatty():
                        stream.reconfigure(encoding=charset, errors="backslashreplace")  # type: ignore[union-attr]
        _TYPED_IN.append(charset)
    return _TYPED_IN[0]


def _retyped(text: str, charset: str) -> str:
    """A text argument as typed in the user's locale (``charset``) when it is not UTF-8: the bytes of
    ``café`` under ISO-8859-1 arrive in UTF-8 mode as ``caf\\udce9``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode(charset)
    except (UnicodeError, LookupError):
        return text


# Commands whose output is the point of running them for as long as they run: when its reader goes
# away, they stop (a closed pipe ends them with 141), as any filter in a pipeline does.
_OWN_STDOUT = frozenset({"watch"})


class _Written:
    """The stdout of a command that handles its own (:data:`_OWN_STDOUT`): written through unchanged,
    noting only whether anything was (see :func:`_json_error`)."""

    def __init__(self, stream: Any) -> None:
        self.written = False
        self.broken: OSError | None = None  # a closed pipe ends the command (see _OWN_STDOUT)
        self._stream = stream

    def write(self, text: str) -> int:
        self.written = self.written or bool(text)
        return int(self._stream.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _PipeGuard:
    """The command's stdout: once a write or flush meets a closed pipe (``| head``), the rest of the
    output is dropped and the command goes on, so that its exit code (a drift found, a failed verify)
    is not lost to the broken pipe (see :func:`graven.cli.main.output_failed`)."""

    def __init__(self, stream: Any) -> None:
        self.broken: OSError | None = None
        self.written = False  # whether the command printed anything (see _json_error)
        if stream is None:  # closed before graven started (`>&-`): written nowhere, said at the end
            import os

            stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives with the process
            self.broken = OSError(9, "stdout is closed")
        self._stream = stream

    def write(self, text: str) -> int:
        self.written = self.written or bool(text)
        if self.broken is None:
            try:
                return int(self._stream.write(text))
            except BrokenPipeError as exc:
                self.broken = exc
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.broken is None:
            try:
                self._stream.flush()
            except BrokenPipeError as exc:
                self.broken = exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def run(args: list[str], *, freeze_gc: bool = False) -> int:
    """Parse ``args``, run the command, map errors to exit codes; always close what was opened.

    ``freeze_gc``: once the command's line is parsed, freeze what the start-up made (the interpreter,
    argparse, the command's module) so that no collection scans it again; only for a process that runs
    one command (see graven.cli.main)."""
    from graven.cli.context import close_all
    from graven.cli.main import STOPPED, stopped
    from graven.errors import GravenError

    STOPPED.clear()  # this command's stop is yet to be said (run() may run again in this process)
    verbose = False
    namespace: argparse.Namespace | None = None
    guard: _PipeGuard | _Written | None = None
    _typed_in()
    previous = _handle_sigterm()
    try:
        command = _command_name(args)
        if command is not None and command not in COMMAND_MODULES:
            import difflib

            close = difflib.get_close_matches(command, list(COMMAND_MODULES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"no such command {quoted(command)}{hint}")
        if command is not None:
            _check_global_options(args[: args.index(command)], command)
        parser = build_parser(command)
        namespace, extra = parser.parse_known_args(args)
        if extra and command is not None:
            namespace, extra = _intermixed(parser, command, args, namespace, extra), []
        if extra:  # argparse reports them at the top level; name the command's own help instead
            raise UsageError(
                f"unrecognized arguments: {' '.join(extra)}", f"graven {command}" if command else "graven"
            )
        verbose = namespace.verbose
        _check_text(namespace, _ArgNames.of(parser, args))  # naming the subcommand's help, not graven's
        handler: Handler | None = getattr(namespace, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return 2
        if freeze_gc:
            gc.freeze()
        stdout = sys.stdout
        guard = sys.stdout = _PipeGuard(stdout) if command not in _OWN_STDOUT else _Written(stdout)
        try:
            code = handler(namespace)
            if guard is not None:
                guard.flush()
        finally:
            sys.stdout = stdout
        if guard is not None and guard.broken is not None:  # the reader left: the check's code stays
            from graven.cli.main import output_failed

            return output_failed(guard.broken, code)
        return code
    except GravenError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        message = _redacted(str(exc))  # a value as typed (--since URL) may hold a credential
        _say_error(message)
        _json_error(namespace, guard, exc.exit_code, message)
        return exc.exit_code
    except UsageError as exc:  # from the parser (no namespace yet) or from a command's check
        message = f"{exc.message} (see `{exc.prog} --help`)"
        _say_error(message)
        if guard is None:  # the command did not start: --json as the line says it
            _json_usage_error(args, message)
        else:
            _json_error(namespace, guard, 2, message)
        return 2
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): one line, said once
        return stopped(terminated=isinstance(exc, Terminated))
    except RuntimeError as exc:  # Ctrl-C while a class was made (a command module's first import)
        if not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        return stopped(terminated=False)
    except BrokenPipeError as exc:  # the reader left (`| head`): never 0, a failed check may hide here
        from graven.cli.main import output_failed

        return output_failed(exc, 0)
    except OSError as exc:  # a file no check of the command's own caught: one line all the same
        if verbose:
            import traceback

            traceback.print_exc()
        _say_error(_os_error(exc, escape=True))
        code = 2 if _user_fixable(exc) else 1
        _json_error(namespace, guard, code, _os_error(exc, escape=False))
        return code
    finally:
        import contextlib

        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C while closing: nothing to add
            close_all()
        if previous is not None:  # as it was: run() may be called again in this process (tests do)
            with contextlib.suppress(ValueError, TypeError):
                _signal.signal(_signal.SIGTERM, previous)  # type: ignore[arg-type]


_GLOBAL_OPTIONS = frozenset({"-v", "--verbose", "-h", "--help", "--version"})


def _json_error(
    namespace: argparse.Namespace | None, guard: _PipeGuard | _Written | None, code: int, message: str
) -> None:
    """With ``--json``, a command that failed before printing its result prints
    ``{"ok": false, "error": {"exit_code": N, "message": "..."}}`` on stdout (as well as its one line
    on stderr), so that a script reading stdout always gets JSON. A command that printed its result
    (a failed verify, drift found) leaves it as it is."""
    if guard is None or guard.written or namespace is None:
        return
    if not (getattr(namespace, "as_json", False) or getattr(namespace, "log_json", False)):
        return
    try:  # a full disk: the error line said it, and the error's exit code stays (not "cannot write")
        guard.write(_error_document(code, message) + "\n")
        guard.flush()
    except OSError:
        pass


def _json_usage_error(args: list[str], message: str) -> None:
    """The error object of :func:`_json_error` for a command line refused before its command started
    (an unknown option, a missing argument, a bad value): there is no parsed ``--json`` then, so the
    line's own words decide (``--json`` before any ``--``), and a script that asked for JSON gets it."""
    words = args[: args.index("--")] if "--" in args else args
    if "--json" not in words:
        return
    try:  # as in _json_error: a full disk leaves the usage error's line and its exit code
        sys.stdout.write(_error_document(2, message) + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def _error_document(code: int, message: str) -> str:
    """The error object as one line of JSON. A byte of a name that is not UTF-8 (a path given on the
    command line) is in ``message`` as a surrogate escape, which ``json.dumps`` would write as
    ``\\udcNN``, a lone surrogate that no UTF-8 text holds: it is written ``\\xNN``, as everywhere in
    graven's JSON and as the error line on stderr shows it (:func:`graven.core.paths.json_text`). A
    value longer than 200 characters is shortened in the middle, as the error line shows it
    (:func:`graven.cli.output.shortened_message`)."""
    import json

    from graven.cli.output import shortened_message
    from graven.core.paths import json_text

    message = json_text(shortened_message(message))
    return json.dumps({"ok": False, "error": {"exit_code": code, "message": message}})


def _global_option(word: str) -> bool:
    """Whether ``word`` is one of graven's own options: -v, -h (or both, -vh), --verbose, --help,
    --version, spelled out (the parser takes no abbreviation: ``allow_abbrev=False``)."""
    if word.startswith("--"):
        return word in _GLOBAL_OPTIONS
    return len(word) > 1 and set(word[1:]) <= {"v", "h"}


def _check_global_options(before: list[str], command: str) -> None:
    """Refuse what stands before the command word but graven's own options: argparse set aside an
    unknown one there, and the command's second parse never saw it (`graven --plan deploy D prod`
    deployed for real, `graven --json status` printed the table)."""
    unknown = [word for word in before if not _global_option(word)]
    if unknown:
        raise UsageError(
            f"unrecognized arguments before the command: {' '.join(unknown)}; a command's options go after "
            f"its name (graven {command} ... {unknown[0]})",
            "graven",
        )


def _intermixed(
    parser: ArgParser, command: str, args: list[str], namespace: argparse.Namespace, extra: list[str]
) -> argparse.Namespace:
    """Parse the command's words again with positionals and options in any order, as click did
    (`graven drift prod --json staging`): argparse stops a ``nargs="*"`` positional at the first
    option. Unknown options are still refused, naming the command's own help."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: ArgParser = action.choices[command]
    nested = next((a for a in sub._actions if isinstance(a, argparse._SubParsersAction)), None)
    if nested is not None:  # a group (`graven keys generate`): name the subcommand's help
        word = _command_name(args[args.index(command) + 1 :])
        prog = nested.choices[word].prog if word in nested.choices else sub.prog
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}", prog)
    # only the top level's own options carried over: a list positional the first parse left empty
    # would make argparse warn ("Do not expect ...") on stderr
    top = {a.dest for a in parser._actions if not isinstance(a, argparse._SubParsersAction)}
    base = argparse.Namespace(**{k: v for k, v in vars(namespace).items() if k in top})
    return sub.parse_intermixed_args(args[args.index(command) + 1 :], base)


def _say_error(message: str) -> None:
    from graven.cli.output import error_line

    try:  # stderr may share a pipe the reader closed (`2>&1 | head`): the exit code says it all
        sys.stderr.write(error_line(message))  # a value of 100,000 characters given by mistake: shortened
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


# What the user fixes (a path, a permission) rather than the machine (a full disk, an I/O error).
_USER_FIXABLE = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _user_fixable(exc: OSError) -> bool:
    """Whether an OSError that reached the top is the user's to fix (exit 2) rather than the machine's:
    one of :data:`_USER_FIXABLE`, or a path's error that has no subclass of its own, as
    graven.archive.writer.write_error counts them: a name too long (a `-o` or `-C` of 300 characters),
    a loop of symbolic links, a read-only file system."""
    import errno

    return isinstance(exc, _USER_FIXABLE) or exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EROFS)


def _os_error(exc: OSError, *, escape: bool) -> str:
    """``path: reason`` for an OSError that reached the top (with the second path of a rename); with
    ``escape``, the paths as the error line shows them (:func:`graven.cli.output.printable`), else
    as JSON carries them (JSON escapes the rest; a byte that is not UTF-8 is ``\\xNN``, as everywhere
    in graven's JSON: :func:`graven.core.paths.json_text`)."""
    reason = (exc.strerror or str(exc)).lower()
    where = exc.filename if exc.filename is not None else None
    if where is None:
        return reason
    from graven.cli.output import printable
    from graven.core.paths import json_text

    def shown(name: object) -> str:
        text = os.fsdecode(name) if isinstance(name, str | bytes) else str(name)
        return printable(text) if escape else json_text(text)

    also = f" -> {shown(exc.filename2)}" if exc.filename2 is not None else ""
    hint = _permission_hint(where, shown) if isinstance(exc, PermissionError) else ""
    return f"{shown(where)}{also}: {reason}{hint}"


def _permission_hint(where: object, shown: Callable[[object], str]) -> str:
    """What to do about a permission denied at ``where``: in a GRAVEN_HOME of another user (one root
    made, used by a team member), run graven as that user or use a home of one's own, never open up
    that home (its keys/ holds the signing keys); anywhere else, check the path's permissions.
    ``shown``: a path as the error line shows it."""
    from graven.errors import GravenError
    from graven.home import Home, run_as, user_name

    try:
        root = os.fspath(Home.from_env().root)
        path = os.fsdecode(where) if isinstance(where, str | bytes) else str(where)
        inside = os.path.isabs(path) and os.path.commonpath([root, path]) == root
        owner = os.stat(root).st_uid if inside else os.geteuid()
    except (GravenError, OSError, ValueError):
        inside, owner, root = False, os.geteuid(), ""
    if not inside or owner == os.geteuid():
        return "; check its permissions"
    name = user_name(owner) or str(owner)
    how = run_as(owner, name)
    return (
        f"; GRAVEN_HOME {shown(root)} belongs to another user ({name}, uid {owner}): run graven as that user "
        f"({how}), or set GRAVEN_HOME to a home of your own"
    )
