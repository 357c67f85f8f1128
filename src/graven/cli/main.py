"""The ``graven`` command: a thin layer over :mod:`graven.service`.

Exit codes: 0 success, 1 a check failed (verification, policy, drift), 2 bad usage or input. Errors are
one line on stderr, ``graven: error: ...``; ``-v`` adds the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from graven import __version__

__all__ = ["main"]

# The click application (and the registry of command modules) lives in graven.cli.app; it is
# imported only when a command runs, so that `graven --version` loads nothing else.


def _say_error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"graven: error: {first}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # answered before any command module is loaded
        sys.stdout.write(f"graven {__version__}\n")
        return 0
    import click

    from graven.cli.app import State, cli
    from graven.errors import GravenError

    try:
        result = cli.main(args=args, prog_name="graven", standalone_mode=False)
    except GravenError as exc:
        if State.verbose:
            import traceback

            traceback.print_exc()
        _say_error(str(exc))
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        return 2
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _say_error(f"{exc.format_message()}{hint}")
        return 2
    except click.ClickException as exc:
        _say_error(exc.format_message())
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("graven: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    if isinstance(result, int):
        return result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
