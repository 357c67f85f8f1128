"""The ``graven`` command: a thin layer over :mod:`graven.service`.

Exit codes: 0 success, 1 a check failed (verification, policy, drift), 2 bad usage or input. Errors are
one line on stderr, ``graven: error: ...``; ``-v`` adds the traceback.
"""

from __future__ import annotations

import sys

from graven import __version__

__all__ = ["main"]

# The parser (and the registry of command modules) lives in graven.cli.app; it is imported only when
# a command runs, so that `graven --version` loads nothing else.


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # answered before any command module is loaded
        sys.stdout.write(f"graven {__version__}\n")
        return 0
    from graven.cli.app import run

    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
