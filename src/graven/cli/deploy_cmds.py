"""``graven deploy``, ``promote``, ``rollback``, ``hold``, ``unhold``, ``reject``, ``status``, ``history``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, human_size, print_table

if TYPE_CHECKING:
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, DeployResult

__all__ = ["COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])
_LIST_LIMIT = 40


class _DeployReporter:
    """Shows the progress of writing a release; step markers are not drawn."""

    def __init__(self, inner: TerminalReporter) -> None:
        self._inner = inner

    def warn(self, message: str) -> None:
        self._inner.warn(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == "deploy:materialize":
            self._inner.progress("writing release", done, total)

    def close(self) -> None:
        self._inner.close()


def _target_options(func: F) -> F:
    func = click.option(
        "--root",
        type=click.Path(path_type=Path, file_okay=False),
        help="Base directory for relative [env] paths (default: $GRAVEN_DEPLOY_ROOT).",
    )(func)
    func = click.option(
        "--policy", type=click.Path(path_type=Path), help="An extra trust policy file (TOML)."
    )(func)
    func = click.option(
        "--wait", is_flag=True, help="Wait for another deployment of the environment instead of failing."
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(func)


def _options(
    root: Path | None, policy: Path | None, wait: bool, reason: str | None, override: bool = False
) -> DeployOptions:
    from graven.service.deploy import ROOT_ENV, DeployOptions

    base = str(root) if root is not None else os.environ.get(ROOT_ENV) or None
    return DeployOptions(
        root=os.path.abspath(base) if base else None,
        policy_file=policy,
        wait=wait,
        reason=reason,
        override=override,
    )


def _context() -> tuple[Context, _DeployReporter]:
    from graven.service.context import Context

    reporter = _DeployReporter(TerminalReporter())
    return _closing(Context.from_env(reporter)), reporter


def _report(result: DeployResult, *, as_json: bool) -> int:
    if as_json:
        emit_json(result.to_json())
    elif result.ok:
        stats = result.stats
        if result.reused_release:
            how = "release already on disk, checked"
        elif stats:
            how = (
                f"{stats['files']} files: {stats['linked']} linked from the live release, "
                f"{stats['copied']} copied ({human_size(stats['copied_bytes'])})"
            )
        else:
            how = ""
        verb = {"deploy": "deployed", "promote": "promoted", "rollback": "rolled back to"}[result.kind]
        click.echo(f"{verb} {result.name} {result.digest[7:19]} in {result.env} ({result.path}); {how}")
        if result.overridden:
            click.echo(f"policy overridden: requires {', '.join(result.overridden)}")
        if result.removed:
            click.echo(f"removed old releases: {', '.join(d[7:19] for d in result.removed)}")
        if result.held:
            click.echo(
                f"{result.env} is held on {result.digest[7:19]}; `graven unhold {result.env}` lifts it"
            )
        click.echo(result.message)
    if not result.ok:
        sys.stderr.write(f"graven: error: {result.message}\n")
        return 1
    return 0


@click.command("deploy")
@click.argument("digest")
@click.argument("env")
@click.option("--plan", "plan_only", is_flag=True, help="Show what would change; change nothing.")
@click.option("--reason", help="Why (recorded in the history and the audit log).")
@click.option(
    "--override-policy",
    "override",
    is_flag=True,
    help="Break glass: bypass the environment's `requires` (never hashes, signatures or rejection).",
)
@_target_options
def deploy_cmd(
    *,
    digest: str,
    env: str,
    plan_only: bool,
    reason: str | None,
    override: bool,
    root: Path | None,
    policy: Path | None,
    wait: bool,
    as_json: bool,
) -> int:
    """Verify DIGEST and make it the live release of ENV (atomic switch, then activate and health)."""
    from graven.errors import InputError
    from graven.service import deploy as svc

    if override and not (reason and reason.strip()):
        raise InputError("--override-policy needs --reason TEXT: say why policy is bypassed")
    opts = _options(root, policy, wait, reason, override)
    ctx, reporter = _context()
    try:
        if plan_only:
            return _show_plan(svc.plan_deploy(ctx, digest, env, opts), as_json=as_json)
        result = svc.deploy(ctx, digest, env, opts)
    finally:
        reporter.close()
    return _report(result, as_json=as_json)


def _show_plan(plan: Any, *, as_json: bool) -> int:
    if as_json:
        emit_json(plan.to_json())
        return 0
    click.echo(f"plan: deploy {plan.name} {plan.digest[7:19]} to {plan.env} ({plan.path})")
    click.echo(f"live: {plan.live[7:19] if plan.live else 'nothing'}")
    diff = plan.diff
    click.echo(
        f"files: {len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
        f"{diff.unchanged} unchanged; would link {plan.would_link} and copy {plan.would_copy} files"
        + ("; the release is already on disk" if plan.release_on_disk else "")
    )
    for mark, paths in (("+", diff.added), ("-", diff.removed), ("~", diff.changed)):
        for path in paths[:_LIST_LIMIT]:
            click.echo(f"  {mark} {path}")
        if len(paths) > _LIST_LIMIT:
            click.echo(f"  {mark} ... and {len(paths) - _LIST_LIMIT} more (--json lists all)")
    if plan.overridden:
        click.echo(f"policy: requires {', '.join(plan.overridden)} would be overridden")
    if plan.config:
        if plan.config_diff:
            click.echo(f"config ({plan.config}):")
            sys.stdout.write(plan.config_diff)
        else:
            click.echo(f"config ({plan.config}): unchanged")
    click.echo("nothing was changed (--plan)")
    return 0


@click.command("promote")
@click.argument("from_env", metavar="FROM")
@click.argument("to_env", metavar="TO")
@click.option("--reason", help="Why (recorded in the history and the audit log).")
@_target_options
def promote_cmd(
    *,
    from_env: str,
    to_env: str,
    reason: str | None,
    root: Path | None,
    policy: Path | None,
    wait: bool,
    as_json: bool,
) -> int:
    """Deploy to TO exactly the digest that is live and healthy in FROM."""
    from graven.service import deploy as svc

    ctx, reporter = _context()
    try:
        result = svc.promote(ctx, from_env, to_env, _options(root, policy, wait, reason))
    finally:
        reporter.close()
    return _report(result, as_json=as_json)


@click.command("rollback")
@click.argument("env")
@click.option("--to", "to", metavar="DIGEST", help="A digest from this environment's history.")
@click.option("--reason", help="Why (recorded in the history and the audit log).")
@_target_options
def rollback_cmd(
    *,
    env: str,
    to: str | None,
    reason: str | None,
    root: Path | None,
    policy: Path | None,
    wait: bool,
    as_json: bool,
) -> int:
    """Make the previous release (or --to DIGEST) live again, then hold ENV on it."""
    from graven.service import deploy as svc

    ctx, reporter = _context()
    try:
        result = svc.rollback(ctx, env, _options(root, policy, wait, reason), to=to)
    finally:
        reporter.close()
    return _report(result, as_json=as_json)


@click.command("hold")
@click.argument("env")
@click.option("--reason", required=True, help="Why the environment must not change.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def hold_cmd(env: str, reason: str, as_json: bool) -> int:
    """Hold ENV on its live digest: deploy and promote refuse any other until unhold."""
    from graven.service import environments as svc
    from graven.service.context import Context

    result = svc.hold(_closing(Context.from_env()), env, reason)
    if as_json:
        emit_json(result.to_json())
    elif result.changed:
        click.echo(f"{env} is held on {(result.digest or 'nothing')[7:19] or 'nothing'}")
    else:
        click.echo(f"{env} was already held")
    return 0


@click.command("unhold")
@click.argument("env")
@click.option("--reason", help="Why it is safe to deploy again.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def unhold_cmd(env: str, reason: str | None, as_json: bool) -> int:
    """Lift the hold on ENV (set by a rollback or by graven hold)."""
    from graven.service import environments as svc
    from graven.service.context import Context

    result = svc.unhold(_closing(Context.from_env()), env, reason)
    if as_json:
        emit_json(result.to_json())
    elif result.changed:
        click.echo(f"{env} is no longer held; deploy and promote may change it again")
    else:
        click.echo(f"{env} was not held")
    return 0


@click.command("reject")
@click.argument("digest")
@click.option("--reason", required=True, help="Why this artifact must never be deployed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def reject_cmd(digest: str, reason: str, as_json: bool) -> int:
    """Mark DIGEST so that it can never be deployed again, anywhere."""
    from graven.service import environments as svc
    from graven.service.context import Context

    result = svc.reject(_closing(Context.from_env()), digest, reason)
    if as_json:
        emit_json(result.to_json())
        return 0
    if result.already:
        click.echo(f"{result.digest[7:19]} was already rejected ({result.reason})")
    else:
        click.echo(f"rejected {result.digest[7:19]}: it can never be deployed again")
    for env in result.live_in:
        sys.stderr.write(
            f"graven: warning: {result.digest[7:19]} is still live in {env}; deploy a fix or "
            f"`graven rollback {env}`\n"
        )
    return 0


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the environments as JSON.")
def status_cmd(as_json: bool) -> int:
    """Per environment: the live digest, what it is, when and by whom it was deployed, health, hold."""
    from graven.service import environments as svc
    from graven.service.context import Context

    envs = svc.status(_closing(Context.from_env()))
    if as_json:
        emit_json([e.to_json() for e in envs])
        return 0
    if not envs:
        click.echo("no environments yet; `graven deploy DIGEST ENV` deploys to one")
        return 0

    def digest_cell(value: str | None) -> str:
        return value[7:19] if value else "-"

    print_table(
        ["env", "live", "name", "commit", "deployed", "by", "health", "held", "previous"],
        [
            [
                e.env,
                digest_cell(e.live) + (" (rejected)" if e.rejected else ""),
                e.name or "-",
                (e.commit or "-")[:12],
                (e.deployed_at or "-")[:19].replace("T", " "),
                e.deployed_by or "-",
                e.health or "-",
                f"yes ({digest_cell(e.held_digest)})" if e.held else "no",
                digest_cell(e.previous),
            ]
            for e in envs
        ],
    )
    for e in envs:
        if e.on_disk != e.live:
            sys.stderr.write(
                f"graven: warning: {e.env}: {e.path}/current points to {digest_cell(e.on_disk)}, "
                f"not the recorded {digest_cell(e.live)}; redeploy or roll back to settle it\n"
            )
    return 0


@click.command("history")
@click.argument("env")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
def history_cmd(env: str, as_json: bool) -> int:
    """Every deploy, promote and rollback of ENV, with reason and result."""
    from graven.service import environments as svc
    from graven.service.context import Context

    rows = svc.history(_closing(Context.from_env()), env)
    if as_json:
        emit_json(rows)
        return 0
    print_table(
        ["id", "time", "kind", "digest", "result", "health", "actor", "reason"],
        [
            [
                str(r["id"]),
                str(r["finished_at"] or r["started_at"])[:19].replace("T", " "),
                r["kind"] + (f" from {r['source_env']}" if r["source_env"] else ""),
                str(r["digest"])[7:19],
                r["result"],
                r["health"],
                r["actor"],
                "; ".join(
                    x
                    for x in (
                        "OVERRIDE" if r["override"] else "",
                        r["reason"] or "",
                        r["detail"] or "",
                    )
                    if x
                ),
            ]
            for r in rows
        ],
    )
    return 0


COMMANDS = [
    deploy_cmd,
    promote_cmd,
    rollback_cmd,
    hold_cmd,
    unhold_cmd,
    reject_cmd,
    status_cmd,
    history_cmd,
]
