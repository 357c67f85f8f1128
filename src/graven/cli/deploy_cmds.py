"""``graven deploy``, ``promote``, ``rollback``, ``hold``, ``unhold``, ``retire``, ``reject``, ``status``,
``history``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graven.cli.app import ArgParser, add_command, add_limit, file_path
from graven.cli.context import closing as _closing
from graven.cli.output import (
    TerminalReporter,
    emit_json,
    human_size,
    print_table,
    printable,
    printable_message,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any

    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, DeployResult

__all__ = ["register"]

_LIST_LIMIT = 40
CLI_ROOT_HINT = "set GRAVEN_DEPLOY_ROOT or pass --root DIR"  # the CLI's words for DeployOptions(root=...)


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add the deploy commands: deploy, promote, rollback, hold, unhold, retire, reject, status, history."""
    reason_help = "Why (recorded in the history and the audit log)."

    deploy = add_command(commands, "deploy", deploy_cmd)
    deploy.add_argument("digest", help="The artifact to deploy.")
    deploy.add_argument("env", help="The environment to deploy to.")
    deploy.add_argument(
        "--plan", dest="plan_only", action="store_true", help="Show what would change; change nothing."
    )
    deploy.add_argument("--reason", help=reason_help)
    deploy.add_argument(
        "--override-policy",
        dest="override",
        action="store_true",
        help="Break glass: bypass the environment's `requires` (never hashes, signatures or rejection).",
    )
    _target_options(deploy)

    promote = add_command(commands, "promote", promote_cmd)
    promote.add_argument("from_env", metavar="FROM", help="The environment whose live digest is promoted.")
    promote.add_argument("to_env", metavar="TO", help="The environment to deploy it to.")
    promote.add_argument("--reason", help=reason_help)
    _target_options(promote)

    rollback = add_command(commands, "rollback", rollback_cmd)
    rollback.add_argument("env", help="The environment to roll back.")
    rollback.add_argument("--to", metavar="DIGEST", help="A digest from this environment's history.")
    rollback.add_argument("--reason", help=reason_help)
    _target_options(rollback)

    hold = add_command(commands, "hold", hold_cmd)
    hold.add_argument("env", help="The environment to hold.")
    hold.add_argument("--reason", required=True, help="Why the environment must not change.")
    hold.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    unhold = add_command(commands, "unhold", unhold_cmd)
    unhold.add_argument("env", help="The environment to release.")
    unhold.add_argument("--reason", help="Why it is safe to deploy again.")
    unhold.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    retire = add_command(commands, "retire", retire_cmd)
    retire.add_argument("env", help="The environment graven no longer manages.")
    retire.add_argument("--reason", required=True, help="Why (a rename, a decommissioned host).")
    retire.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    reject = add_command(commands, "reject", reject_cmd)
    reject.add_argument("digest", help="The artifact to reject.")
    reject.add_argument("--reason", required=True, help="Why this artifact must never be deployed.")
    reject.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    status = add_command(commands, "status", status_cmd)
    status.add_argument("--json", dest="as_json", action="store_true", help="Print the environments as JSON.")

    history = add_command(commands, "history", history_cmd)
    history.add_argument("env", help="The environment whose history is shown.")
    add_limit(history, "Only the newest N rows, still oldest first (as tail).")
    history.add_argument("--json", dest="as_json", action="store_true", help="Print the history as JSON.")


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


def _target_options(parser: ArgParser) -> None:
    parser.add_argument(
        "--root",
        type=_root_path,
        help="Base directory for relative [env] paths (default: $GRAVEN_DEPLOY_ROOT).",
    )
    parser.add_argument(
        "--policy", type=file_path, help="A trust policy file (TOML) instead of GRAVEN_HOME/policy.toml."
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="Wait for another deployment of the environment instead of failing.",
    )
    parser.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")


def _root_path(text: str) -> Path:
    """``--root``'s value: an empty one (an unset shell variable) is no directory, not the current one
    (GRAVEN_DEPLOY_ROOT='' counts as unset)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give the base directory of relative [env] paths")
    return Path(text)


def _root(args: argparse.Namespace) -> Path | None:
    """``--root``, which must not be a file."""
    from graven.errors import InputError

    root: Path | None = args.root
    if root is not None and str(root).startswith("~"):
        # --root=~/srv: the shell expands a tilde only at the start of a word; taken as written, it
        # made a directory named ~ in the working directory (which `rm -rf ~` would then clean up)
        raise InputError(
            f"--root {printable(str(root))} starts with '~', which no shell expanded; give the directory "
            "itself (--root ~/srv, with a space, or --root $HOME/srv)"
        )
    if root is not None and root.exists() and not root.is_dir():
        raise InputError(f"--root {root} is a file, not a directory")
    return root


def _root_from_env(value: str | None, name: str) -> str | None:
    """The deploy root the environment variable ``name`` gives, which must be absolute: a relative one
    (``srv``, a quoted ``~/srv`` no shell expanded) would put every environment below the working
    directory of each command, as a relative GRAVEN_HOME would its home (refused alike, exit 2).
    ``--root`` on the command line is a path typed for this command and may be relative."""
    from graven.errors import InputError

    if value is not None and not value.startswith("/"):
        raise InputError(
            f"{name} {printable(value)} is a relative path: each command would deploy below its own "
            f"working directory; give an absolute one ({name}=$PWD/...)"
        )
    return value


def _options(
    root: Path | None, policy: Path | None, wait: bool, reason: str | None, override: bool = False
) -> DeployOptions:
    from graven.service.deploy import ROOT_ENV, DeployOptions

    base = str(root) if root is not None else _root_from_env(os.environ.get(ROOT_ENV) or None, ROOT_ENV)
    return DeployOptions(
        root=os.path.abspath(base) if base else None,
        policy_file=policy,
        wait=wait,
        reason=reason,
        override=override,
    )


@contextmanager
def _deploying() -> Iterator[Context]:
    """The context of a deploy, promote or rollback; its reporter is closed at the end, and an error
    that says how to give the deploy root says it as the command line does (the library's
    ``DeployOptions(root=...)`` is ``--root`` or GRAVEN_DEPLOY_ROOT here: RootHintError)."""
    from graven.deploy.settings import RootHintError
    from graven.service.context import Context

    reporter = _DeployReporter(TerminalReporter())
    try:
        yield _closing(Context.from_env(reporter))
    except RootHintError as exc:
        raise exc.with_hint(CLI_ROOT_HINT) from None
    finally:
        reporter.close()


def _report(result: DeployResult, *, as_json: bool) -> int:
    if as_json:
        emit_json(result.to_json())
    elif result.ok:
        stats = result.stats
        if result.reused_release:
            how = "release already on disk, checked"
        elif stats:
            # hard links: to the same file of the live release, or to a first copy of the same
            # content in this one; with nothing live before, only the second
            linked = "duplicates" if result.previous is None else "unchanged or duplicates"
            how = (
                f"{stats['files']} files: {stats['linked']} hard-linked ({linked}), "
                f"{stats['copied']} copied ({human_size(stats['copied_bytes'])})"
            )
        else:
            how = ""
        verb = {"deploy": "deployed", "promote": "promoted", "rollback": "rolled back to"}[result.kind]
        name, path = printable(result.name), printable(result.path)  # from graven.toml and the deploy root
        print(f"{verb} {name} {result.digest[7:19]} in {result.env} ({path}); {how}")
        if result.overridden:
            print(f"policy overridden: requires {', '.join(result.overridden)}")
        if result.removed:
            print(f"removed old releases: {', '.join(d[7:19] for d in result.removed)}")
        if result.held:
            print(f"{result.env} is held on {result.digest[7:19]}; `graven unhold {result.env}` lifts it")
        print(printable_message(result.message))
    if not result.ok:
        sys.stderr.write(f"graven: error: {printable_message(result.message)}\n")
        return 1
    return 0


def deploy_cmd(args: argparse.Namespace) -> int:
    """Verify DIGEST and make it the live release of ENV (atomic switch, then activate and health)."""
    digest: str = args.digest
    env: str = args.env
    plan_only: bool = args.plan_only
    reason: str | None = args.reason
    override: bool = args.override
    root = _root(args)
    policy: Path | None = args.policy
    wait: bool = args.wait
    as_json: bool = args.as_json
    from graven.errors import InputError
    from graven.service import deploy as svc

    if not _digest_shaped(digest) and _digest_shaped(env):  # `graven deploy staging 3fa2`: kubectl's order
        raise InputError(
            f"{digest!r} is not a digest, {env!r} is: the digest comes first, graven deploy DIGEST ENV "
            f"(graven deploy {env} {digest})"
        )
    if override and not (reason and reason.strip()):
        raise InputError("--override-policy needs --reason TEXT: say why policy is bypassed")
    opts = _options(root, policy, wait, reason, override)
    with _deploying() as ctx:
        if plan_only:
            from graven.service.deploy_plan import plan_deploy

            plan = plan_deploy(ctx, digest, env, opts)
        else:
            result = svc.deploy(ctx, digest, env, opts)
    if plan_only:
        return _show_plan(plan, as_json=as_json)
    return _report(result, as_json=as_json)


def _digest_shaped(text: str) -> bool:
    """Whether ``text`` has the shape of a digest or a prefix of one (as resolve_digest takes it)."""
    from graven.service.artifacts import digest_prefix

    return digest_prefix(text) is not None


def _show_plan(plan: Any, *, as_json: bool) -> int:
    if as_json:
        emit_json(plan.to_json())
        return 0
    print(f"plan: deploy {printable(plan.name)} {plan.digest[7:19]} to {plan.env} ({printable(plan.path)})")
    print(f"live: {plan.live[7:19] if plan.live else 'nothing'}")
    diff = plan.diff
    print(
        f"files: {len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
        f"{diff.unchanged} unchanged; would link {plan.would_link} and copy {plan.would_copy} files"
        + ("; the release is already on disk" if plan.release_on_disk else "")
    )
    for mark, paths in (("+", diff.added), ("-", diff.removed), ("~", diff.changed)):
        for path in paths[:_LIST_LIMIT]:
            print(f"  {mark} {printable(path)}")
        if len(paths) > _LIST_LIMIT:
            print(f"  {mark} ... and {len(paths) - _LIST_LIMIT} more (--json lists all)")
    if plan.overridden:
        print(f"policy: requires {', '.join(plan.overridden)} would be overridden")
    _show_hooks(plan.settings, plan.live_settings)
    if plan.config:
        config = printable(plan.config)  # a path of the artifact's graven.toml
        if plan.config_diff:
            print(f"config ({config}):")
            lines = plan.config_diff.split("\n")  # not splitlines(): \x0b, \x0c... end no line here
            if lines[-1] == "":
                lines.pop()
            sys.stdout.writelines(printable(line, tabs=True) + "\n" for line in lines)
        else:
            print(f"config ({config}): unchanged")
    print("nothing was changed (--plan)")
    return 0


def _show_hooks(settings: dict[str, Any], live: dict[str, Any] | None) -> None:
    """The commands the deploy would run (as this user, in the environment's directory), from the
    artifact's graven.toml, and how they differ from what the live deployment ran."""
    for hook in ("activate", "health"):
        command, before = settings.get(hook), (live or {}).get(hook)
        if not command and not before:
            continue
        shown = f"`{printable(command)}`" if command else "none"
        if live is None:
            change = ""
        elif command == before:
            change = " (unchanged)"
        else:
            change = f" (live: `{printable(before)}`)" if before else " (new: the live release has none)"
        print(f"{hook}: {shown}{change}")


def promote_cmd(args: argparse.Namespace) -> int:
    """Deploy to TO exactly the digest that is live and healthy in FROM."""
    from_env: str = args.from_env
    to_env: str = args.to_env
    reason: str | None = args.reason
    root = _root(args)
    policy: Path | None = args.policy
    wait: bool = args.wait
    as_json: bool = args.as_json
    from graven.service import deploy as svc

    with _deploying() as ctx:
        result = svc.promote(ctx, from_env, to_env, _options(root, policy, wait, reason))
    return _report(result, as_json=as_json)


def rollback_cmd(args: argparse.Namespace) -> int:
    """Make the previous release (or --to DIGEST) live again, then hold ENV on it."""
    env: str = args.env
    to: str | None = args.to
    reason: str | None = args.reason
    root = _root(args)
    policy: Path | None = args.policy
    wait: bool = args.wait
    as_json: bool = args.as_json
    from graven.errors import NeverDeployedError, NotFoundError
    from graven.service import deploy as svc

    try:
        with _deploying() as ctx:
            result = svc.rollback(ctx, env, _options(root, policy, wait, reason), to=to)
    except NeverDeployedError as exc:
        if to is None and _digest_shaped(env):  # `graven rollback 7a10`: a digest where ENV goes
            raise NotFoundError(
                f"{exc.message}; to make a digest live again: graven rollback ENV --to {env}"
            ) from None
        raise
    return _report(result, as_json=as_json)


def hold_cmd(args: argparse.Namespace) -> int:
    """Hold ENV on its live digest: deploy and promote refuse any other until unhold."""
    env: str = args.env
    reason: str = args.reason
    as_json: bool = args.as_json
    from graven.service import environments as svc
    from graven.service.context import Context

    # a terminal reporter: the lock says there what it waits for
    result = svc.hold(_closing(Context.from_env(TerminalReporter())), env, reason)
    if as_json:
        emit_json(result.to_json())
    elif result.changed:
        print(f"{env} is held on {(result.digest or 'nothing')[7:19] or 'nothing'}")
    else:
        print(f"{env} was already held")
    return 0


def unhold_cmd(args: argparse.Namespace) -> int:
    """Lift the hold on ENV (set by a rollback or by graven hold)."""
    env: str = args.env
    reason: str | None = args.reason
    as_json: bool = args.as_json
    from graven.service import environments as svc
    from graven.service.context import Context

    result = svc.unhold(_closing(Context.from_env()), env, reason)
    if as_json:
        emit_json(result.to_json())
    elif result.changed:
        print(f"{env} is no longer held; deploy and promote may change it again")
    else:
        print(f"{env} was not held")
    return 0


def retire_cmd(args: argparse.Namespace) -> int:
    """Stop managing ENV (a renamed or decommissioned environment); its files and history stay."""
    env: str = args.env
    reason: str = args.reason
    as_json: bool = args.as_json
    from graven.service import environments as svc
    from graven.service.context import Context

    # a terminal reporter: the lock says there what it waits for
    result = svc.retire(_closing(Context.from_env(TerminalReporter())), env, reason)
    if as_json:
        emit_json(result.to_json())
    else:
        print(  # the path escaped as a value (once), as every other line shows one
            f"retired {env}: graven no longer checks or lists it, and changed nothing on disk;"
            f" its directory {printable(result.path)} may become another environment's"
            f" (`graven history {env}` keeps its past; a deploy to {env} manages it again)"
        )
    return 0


def reject_cmd(args: argparse.Namespace) -> int:
    """Mark DIGEST so that it can never be deployed again, anywhere."""
    digest: str = args.digest
    reason: str = args.reason
    as_json: bool = args.as_json
    from graven.service import environments as svc
    from graven.service.context import Context

    result = svc.reject(_closing(Context.from_env()), digest, reason)
    if as_json:
        emit_json(result.to_json())
        return 0
    if result.already:
        print(f"{result.digest[7:19]} was already rejected ({printable(result.reason or '')})")
    else:
        print(f"rejected {result.digest[7:19]}: it can never be deployed again")
    for env in result.live_in:
        sys.stderr.write(
            f"graven: warning: {result.digest[7:19]} is still live in {env}; deploy a fix or "
            f"`graven rollback {env}`\n"
        )
    return 0


def status_cmd(args: argparse.Namespace) -> int:
    """Per environment: the live digest, what it is, when and by whom it was deployed, health, hold."""
    as_json: bool = args.as_json
    from graven.service import environments as svc
    from graven.service.context import Context

    envs = svc.status(_closing(Context.from_env()))
    if as_json:
        emit_json([e.to_json() for e in envs])
        return 0
    if not envs:
        print("no environments yet; `graven deploy DIGEST ENV` deploys to one")
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
                _held_cell(digest_cell(e.held_digest), e.hold_reason) if e.held else "no",
                digest_cell(e.previous),
            ]
            for e in envs
        ],
    )
    for e in envs:
        if e.pending is not None:  # its deployer may be at work: neither redeploy nor roll back over it
            since = f" since {e.pending_since[:19].replace('T', ' ')}" if e.pending_since else ""
            settles = (  # nothing recorded live (a first deployment, say): nothing to roll back to
                f"`graven deploy {digest_cell(e.pending)} {e.env}` settles a killed one and deploys it again"
                if e.live is None
                else f"the next deploy, rollback or hold of {e.env} settles a killed one"
            )
            sys.stderr.write(
                f"graven: warning: {e.env}: a deployment of {digest_cell(e.pending)} is pending{since} (at "
                f"work, or its deployer was killed); `graven history {e.env}` shows it, and {settles}\n"
            )
            if e.on_disk in (e.pending, e.live):
                continue
        if e.on_disk_error is not None:  # what is there is unknown: neither heal nor redeploy is the way
            sys.stderr.write(f"graven: warning: {e.env}: {printable(e.on_disk_error)}\n")
        elif e.on_disk is None and e.live is not None:  # missing, or a file or directory in its place
            sys.stderr.write(
                f"graven: warning: {e.env}: {printable(e.path)}/current is not a link to a release (the "
                f"recorded one is {digest_cell(e.live)}); `graven heal {e.env}` points it back\n"
            )
        elif e.on_disk != e.live:
            sys.stderr.write(
                f"graven: warning: {e.env}: {printable(e.path)}/current points to {digest_cell(e.on_disk)}, "
                f"not the recorded {digest_cell(e.live)}; redeploy or roll back to settle it\n"
            )
    return 0


def _held_cell(digest: str, reason: str | None) -> str:
    """The HELD cell of a held environment: the digest and why (what to read before `unhold`)."""
    return f"yes ({digest}: {reason})" if reason else f"yes ({digest})"


def history_cmd(args: argparse.Namespace) -> int:
    """Every deploy, promote and rollback of ENV, with reason and result."""
    env: str = args.env
    limit: int | None = args.limit
    as_json: bool = args.as_json
    from graven.service import environments as svc
    from graven.service.context import Context

    rows = svc.history(_closing(Context.from_env()), env, limit=limit)
    if as_json:
        emit_json(rows)
        return 0
    print_table(
        ["id", "started", "kind", "digest", "result", "health", "actor", "reason"],
        [
            [
                str(r["id"]),
                # when it began, as --json's started_at: an interrupted one's finished_at is when a
                # later deployer (or hold, rollback) found it and settled it, maybe days later
                str(r["started_at"])[:19].replace("T", " "),
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
