"""``graven log``: the tamper-evident audit log."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from graven.cli.app import ArgParser, UsageError, add_command, add_group, add_limit, file_path
from graven.cli.context import closing as _closing
from graven.cli.output import (
    TerminalReporter,
    emit_json,
    emit_json_list,
    error_line,
    print_rows,
    printable_message,
)
from graven.errors import InputError, NotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from graven.model.logentry import LogEntry

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``log`` and its subcommands verify, checkpoint, prove, consistency and export."""
    log, sub = add_group(commands, "log", _first_line(log_cmd.__doc__), log_cmd)
    # their own names: a subcommand's defaults would silently replace them (`graven log --json verify`)
    # (and metavars of their own: --help would say --env LOG_ENV)
    log.add_argument("--env", dest="log_env", metavar="ENV", help="Only entries about this environment.")
    log.add_argument(
        "--artifact",
        dest="log_artifact",
        metavar="DIGEST",
        help="Only entries about this artifact (digest or unique prefix).",
    )
    log.add_argument(
        "--since",
        dest="log_since",
        metavar="TIME",
        help="Only entries at or after this time (ISO 8601, UTC).",
    )
    log.add_argument(
        "--event",
        dest="log_event",
        metavar="EVENT",
        help="Only entries of this event (build, deploy, rollback, promote, drift, heal, override, ...).",
    )
    add_limit(log, "Only the newest N matching entries, still oldest first (as tail).", dest="log_limit")
    log.add_argument("--json", dest="log_json", action="store_true", help="Print the entries as JSON.")

    verify = add_command(sub, "verify", verify_cmd)
    verify.add_argument(
        "--all-signatures", action="store_true", help="Also check the signature of every stored checkpoint."
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="Rewrite wrong or stray stored subtree hashes from entries that lead to the latest signed "
        "checkpoint (one transaction, logged); never changes an entry.",
    )
    verify.add_argument("--json", dest="as_json", action="store_true", help="Print the report as JSON.")

    checkpoint = add_command(sub, "checkpoint", checkpoint_cmd)
    checkpoint.add_argument(
        "--vkey", action="store_true", help="Print the log's verifier key (Go note format) instead."
    )

    prove = add_command(sub, "prove", prove_cmd)
    prove.add_argument("index", type=_log_index, metavar="INDEX", help="The entry's index (`graven log`).")
    prove.add_argument(
        "--json", dest="as_json", action="store_true", help="Print the proof as JSON (the default)."
    )

    consistency = add_command(sub, "consistency", consistency_cmd)
    consistency.add_argument(
        "old_checkpoint",
        type=file_path,
        metavar="OLD_CHECKPOINT",
        help="A checkpoint kept from `graven log checkpoint`.",
    )
    consistency.add_argument("--json", dest="as_json", action="store_true", help="Print the proof as JSON.")

    export = add_command(sub, "export", export_cmd)
    export.add_argument(
        "--since",
        dest="since_index",
        type=_log_index,
        default=0,
        metavar="INDEX",
        help="First index to export (0-based).",
    )


def _timeline_options_unused(args: argparse.Namespace, subcommand: str) -> None:
    """Refuse the timeline's options before ``subcommand``: they would be dropped without a word."""
    given = [
        option
        for option, dest in (
            ("--env", "log_env"),
            ("--artifact", "log_artifact"),
            ("--since", "log_since"),
            ("--event", "log_event"),
            ("--limit", "log_limit"),
        )
        if getattr(args, dest, None) is not None
    ] + (["--json"] if getattr(args, "log_json", False) else [])
    if given:
        raise UsageError(
            f"{', '.join(given)} before `graven log {subcommand}` would not apply to it (the timeline's "
            f"options are for `graven log` alone); put {subcommand}'s own options after it",
            f"graven log {subcommand}",
        )


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


_MAX_INDEX = 2**63 - 1  # the largest tree size (Go's int64, SQLite's INTEGER)
_MAX_CHECKPOINT_BYTES = 1 << 20  # a signed note of at most 100 signature lines is a few KiB


def _log_index(value: str) -> int:
    """An argparse type: a log index, ASCII digits only (no sign, ``_`` or other scripts' digits)."""
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r} is not a log index (0, 1, 2, ...)")
    index = int(value)
    if index > _MAX_INDEX:
        raise argparse.ArgumentTypeError(f"{value} is larger than the largest log index {_MAX_INDEX}")
    return index


def log_cmd(args: argparse.Namespace) -> int:
    """Show the audit log as a timeline (subcommands verify and prove it)."""
    env: str | None = args.log_env
    artifact: str | None = args.log_artifact
    since: str | None = args.log_since
    limit: int | None = args.log_limit
    event: str | None = args.log_event
    as_json: bool = args.log_json
    if event is not None:
        from graven.model.logentry import EVENT_TYPES

        if event not in EVENT_TYPES:
            raise InputError(
                f"--event {event!r} is no event of the log; one of: {', '.join(sorted(EVENT_TYPES))}"
            )
    if env is not None:
        from graven.deploy.settings import check_env_name

        check_env_name(env)
    if artifact is not None and not artifact.strip():
        raise InputError("--artifact is empty; give a digest or a unique prefix of one")
    from graven.service.artifacts import resolve_digest
    from graven.service.context import Context

    ctx = _closing(Context.from_env())
    entries: Iterator[LogEntry] = iter(())
    if ctx.home.has_database():
        digest = str(resolve_digest(ctx, artifact)) if artifact else None
        entries = (
            e
            for e, _ in ctx.audit.entries(
                env=env, artifact=digest, since=_since(since), event=event, limit=limit
            )
        )
    # one entry at a time: a log of 100,000 entries is never held whole (with --limit, only N are read)
    first = next(entries, None)
    if first is None:
        ctx.audit.check_not_lost()  # a lost log is not "no matching entries"
    found = itertools.chain([first], entries) if first is not None else iter(())
    if as_json:
        emit_json_list(e.to_json() for e in found)
        return 0
    if first is None:
        print("the audit log has no matching entries")
        return 0
    print_rows(
        ["index", "time", "event", "artifact", "env", "result", "actor", "reason"],
        (
            (
                str(e.index),
                e.time[:19].replace("T", " "),
                e.event,
                (e.artifact or "-")[7:19] or "-",
                e.env or "-",
                e.result,
                e.actor,
                e.reason or "",
            )
            for e in found
        ),
    )
    return 0


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        utc = moment.astimezone(UTC)
    except ValueError:
        raise InputError(f"--since {value!r} is not an ISO 8601 time (e.g. 2026-11-26T08:00:00Z)") from None
    except OverflowError:
        raise InputError(
            f"--since {value!r} is out of range: in UTC it falls outside the years 1 to 9999"
        ) from None
    # isoformat pads the year to four digits (strftime's %Y gives "999" for year 999 on glibc)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def verify_cmd(args: argparse.Namespace) -> int:
    """Recompute the tree from every entry and check it against every stored checkpoint.

    With --repair, stored subtree hashes that are wrong or stray (derived rows that proofs read) are
    rewritten from the entries, only when these lead to the latest signed checkpoint; then it verifies
    again."""
    _timeline_options_unused(args, "verify")
    all_signatures: bool = args.all_signatures
    repair: bool = args.repair
    as_json: bool = args.as_json
    from graven.service.context import Context

    reporter = TerminalReporter()  # the walk over every entry draws its progress: cleared before the result
    ctx = _closing(Context.from_env(reporter))
    try:
        report = ctx.audit.verify(all_signatures=all_signatures, repair=repair)
    finally:
        reporter.close()
    done = report.repair
    if as_json:
        emit_json(report.to_json())
        return 0 if report.ok else 1
    if done is not None and done.changed:
        print(
            f"repaired the stored subtree hashes: {done.rewritten} wrong rewritten, {done.added} missing "
            f"added, {done.removed} stray removed (recomputed from the {done.size} entries of the latest "
            f"signed checkpoint; logged as entry {done.entry})"
        )
    if report.ok and report.size == 0:
        print("ok: the audit log is empty (nothing was logged yet)")
    elif report.ok:
        print(f"ok: {report.size} entries, {report.checkpoints_checked} checkpoints, root {report.root}")
    else:
        for problem in report.problems[:20]:
            sys.stderr.write(f"{printable_message(problem)}\n")
        more = len(report.problems) - 20 + report.more_problems
        if more > 0:
            sys.stderr.write(f"... and {more} more problems (--json lists the first 100)\n")
        if done is not None and done.error is not None:
            sys.stderr.write(
                f"the stored subtree hashes were not repaired: {printable_message(done.error)}\n"
            )
        elif done is None and report.bad_subtrees:
            sys.stderr.write(
                "the stored subtree hashes are derived from the entries: `graven log verify --repair` "
                "rewrites them\n"
            )
        where = f" (first bad index {report.first_bad_index})" if report.first_bad_index is not None else ""
        sys.stderr.write(f"graven: error: the audit log does not verify{where}\n")
    return 0 if report.ok else 1


def checkpoint_cmd(args: argparse.Namespace) -> int:
    """Print the latest signed checkpoint (for an auditor or a witness to keep).

    The checkpoint is printed only when its signature verifies with the log key (else exit 1)."""
    _timeline_options_unused(args, "checkpoint")
    vkey: bool = args.vkey
    from graven.service.context import Context

    ctx = _closing(Context.from_env())
    if vkey:
        print(ctx.audit.verifier_key())
    else:
        sys.stdout.write(ctx.audit.signed_checkpoint())
    return 0


def prove_cmd(args: argparse.Namespace) -> int:
    """An inclusion proof of entry INDEX (0-based) in the latest checkpoint, verifiable offline.

    The proof is checked against the signed root first: exit 1 when the entries no longer lead to it."""
    _timeline_options_unused(args, "prove")
    index: int = args.index
    from graven.service.context import Context

    # --json is accepted for symmetry: the proof is always JSON
    # a proof made from the entries (wrong stored hashes) says so, and draws its progress reading them
    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        proof = ctx.audit.prove(index)
    finally:
        reporter.close()
    emit_json(proof)
    return 0


def consistency_cmd(args: argparse.Namespace) -> int:
    """Prove that an old checkpoint is a prefix of the current log; exit 1 on a fork."""
    _timeline_options_unused(args, "consistency")
    old_checkpoint: Path = args.old_checkpoint
    as_json: bool = args.as_json
    from graven.errors import VerificationError
    from graven.service.context import Context

    try:
        # bytes as kept (text mode would turn a CRLF into the LF the note needs), and no more than a
        # checkpoint can hold: /dev/zero or a large file given by mistake is not read whole
        with old_checkpoint.open("rb") as handle:
            data = handle.read(_MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{old_checkpoint}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {old_checkpoint}: {exc.strerror}") from None
    if len(data) > _MAX_CHECKPOINT_BYTES:
        raise InputError(
            f"{old_checkpoint} is not a checkpoint of a graven log (it holds more than 1 MiB); pass a "
            "file that `graven log checkpoint` wrote"
        )
    try:
        old = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"{old_checkpoint} is not a checkpoint of a graven log (it is not UTF-8 text); pass a file "
            "that `graven log checkpoint` wrote"
        ) from None
    # a proof made from the entries says so, and draws its progress reading them
    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        ctx.audit.parse_old_checkpoint(old)  # malformed -> exit 2
    except InputError as exc:
        raise InputError(
            f"{old_checkpoint} is not a checkpoint of a graven log ({exc}); pass a file that "
            "`graven log checkpoint` wrote"
        ) from None
    try:
        result = ctx.audit.consistency(old)
    except VerificationError as exc:
        reporter.close()
        if as_json:
            emit_json({"ok": False, "error": {"exit_code": exc.exit_code, "message": str(exc)}})
        # the CLI's one error line, escaped and shortened: it names the kept checkpoint's origin, and a
        # note's text may hold U+202E, C1 controls (U+009B: a CSI) or 100,000 characters
        sys.stderr.write(error_line(str(exc)))
        return 1
    finally:
        reporter.close()  # the progress line, if any, is gone before the result or the error
    if as_json:
        emit_json({"ok": True, **result})
    else:
        print(
            f"ok: the checkpoint of {result['old_size']} entries is a prefix of the log "
            f"({result['new_size']} entries); proof: {len(result['proof'])} hashes"
        )
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    """Every entry as JSON Lines, with its index and leaf hash (hex)."""
    _timeline_options_unused(args, "export")
    since_index: int = args.since_index
    from graven.service.context import Context

    ctx = _closing(Context.from_env())
    if not ctx.home.has_database():
        return 0
    out = sys.stdout
    for entry, leaf in ctx.audit.entries(since_index=since_index):
        doc = entry.to_json()
        doc["leaf_hash"] = leaf
        out.write(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    return 0
