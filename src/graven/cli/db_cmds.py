"""``graven db copy``: the metadata database, copied into another one."""

from __future__ import annotations

import argparse
import sys

from graven.cli.app import ArgParser, add_command, add_group
from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``db`` (copy)."""
    _, db = add_group(commands, "db", "The metadata database (SQLite in GRAVEN_HOME, or GRAVEN_DB_URL).")
    copy = add_command(db, "copy", copy_cmd)
    copy.add_argument(
        "url",
        metavar="URL",
        help="The empty database to copy into: postgresql+psycopg://USER@HOST/DB or sqlite:////PATH.",
    )
    copy.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")


def copy_cmd(args: argparse.Namespace) -> int:
    """Copy this home's database, history and audit log included, into an empty one.

    To move a home to PostgreSQL (or to another SQLite file): stop deployers and `graven watch`, copy,
    then set GRAVEN_DB_URL to the URL. A source whose audit log does not verify is refused before
    anything is written; a failed copy leaves the destination empty."""
    url: str = args.url
    as_json: bool = args.as_json
    from graven.service.context import Context
    from graven.service.dbcopy import copy_database

    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        result = copy_database(ctx, url)
    finally:
        reporter.close()
    if as_json:
        emit_json(result.to_json())
        return 0
    total = sum(result.rows.values())
    sys.stderr.write(
        f"copied {total} rows of {len(result.rows)} tables; the copy's audit log verifies ("
        f"{result.log_size} entries, root {result.log_root[:16]}); set GRAVEN_DB_URL to the URL to use it\n"
    )
    print(result.target)
    return 0
