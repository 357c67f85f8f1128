"""``graven log``: the tamper-evident audit log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from graven.cli.context import closing as _closing
from graven.cli.output import emit_json, print_table
from graven.errors import InputError, NotFoundError

__all__ = ["COMMANDS"]


@click.group("log", invoke_without_command=True)
@click.option("--env", "env", help="Only entries about this environment.")
@click.option("--artifact", help="Only entries about this artifact (digest or unique prefix).")
@click.option("--since", help="Only entries at or after this time (ISO 8601, UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.pass_context
def log_group(
    click_ctx: click.Context, env: str | None, artifact: str | None, since: str | None, as_json: bool
) -> int:
    """Show the audit log as a timeline (subcommands verify and prove it)."""
    if click_ctx.invoked_subcommand is not None:
        return 0
    from graven.service.artifacts import resolve_digest
    from graven.service.context import Context

    ctx = _closing(Context.from_env())
    if not ctx.home.has_database():
        entries = []
    else:
        digest = str(resolve_digest(ctx, artifact)) if artifact else None
        entries = [e for e, _ in ctx.audit.entries(env=env, artifact=digest, since=_since(since))]
    if as_json:
        emit_json([e.to_json() for e in entries])
        return 0
    if not entries:
        click.echo("the audit log has no matching entries")
        return 0
    print_table(
        ["index", "time", "event", "artifact", "env", "result", "actor", "reason"],
        [
            [
                str(e.index),
                e.time[:19].replace("T", " "),
                e.event,
                (e.artifact or "-")[7:19] or "-",
                e.env or "-",
                e.result,
                e.actor,
                e.reason or "",
            ]
            for e in entries
        ],
    )
    return 0


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--since {value!r} is not an ISO 8601 time (e.g. 2026-11-26T08:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@log_group.command("verify")
@click.option("--all-signatures", is_flag=True, help="Also check the signature of every stored checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(all_signatures: bool, as_json: bool) -> int:
    """Recompute the tree from every entry and check it against every stored checkpoint."""
    from graven.service.context import Context

    ctx = _closing(Context.from_env())
    report = ctx.audit.verify(all_signatures=all_signatures)
    if as_json:
        emit_json(report.to_json())
    elif report.ok:
        click.echo(f"ok: {report.size} entries, {report.checkpoints_checked} checkpoints, root {report.root}")
    else:
        for problem in report.problems[:20]:
            sys.stderr.write(f"{problem}\n")
        where = f" (first bad index {report.first_bad_index})" if report.first_bad_index is not None else ""
        sys.stderr.write(f"graven: error: the audit log does not verify{where}\n")
    return 0 if report.ok else 1


@log_group.command("checkpoint")
@click.option("--vkey", is_flag=True, help="Print the log's verifier key (Go note format) instead.")
def checkpoint_cmd(vkey: bool) -> int:
    """Print the latest signed checkpoint (for an auditor or a witness to keep)."""
    from graven.service.context import Context

    ctx = _closing(Context.from_env())
    if vkey:
        click.echo(ctx.audit.verifier_key())
    else:
        sys.stdout.write(ctx.audit.latest_checkpoint())
    return 0


@log_group.command("prove")
@click.argument("index", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the proof as JSON (the default).")
def prove_cmd(index: int, as_json: bool) -> int:
    """An inclusion proof of entry INDEX (0-based) in the latest checkpoint, verifiable offline."""
    from graven.service.context import Context

    del as_json  # the proof is always JSON
    ctx = _closing(Context.from_env())
    emit_json(ctx.audit.prove(index))
    return 0


@log_group.command("consistency")
@click.argument("old_checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the proof as JSON.")
def consistency_cmd(old_checkpoint: Path, as_json: bool) -> int:
    """Prove that an old checkpoint is a prefix of the current log; exit 1 on a fork."""
    from graven.errors import VerificationError
    from graven.service.context import Context

    try:
        old = old_checkpoint.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"{old_checkpoint}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {old_checkpoint}: {exc}") from None
    ctx = _closing(Context.from_env())
    ctx.audit.parse_old_checkpoint(old)  # malformed -> exit 2
    try:
        result = ctx.audit.consistency(old)
    except VerificationError as exc:
        if as_json:
            emit_json({"ok": False, "error": str(exc)})
        sys.stderr.write(f"graven: error: {exc}\n")
        return 1
    if as_json:
        emit_json({"ok": True, **result})
    else:
        click.echo(
            f"ok: the checkpoint of {result['old_size']} entries is a prefix of the log "
            f"({result['new_size']} entries); proof: {len(result['proof'])} hashes"
        )
    return 0


@log_group.command("export")
@click.option("--since", "since_index", type=int, default=0, help="First index to export.")
def export_cmd(since_index: int) -> int:
    """Every entry as JSON Lines, with its index and leaf hash (hex)."""
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


COMMANDS = [log_group]
