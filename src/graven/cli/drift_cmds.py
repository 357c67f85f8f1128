"""``graven drift``, ``graven heal`` and ``graven watch``."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, print_table

if TYPE_CHECKING:
    from graven.service.drift import DriftReport

__all__ = ["COMMANDS"]

_ROWS = 40


def _context() -> Any:
    from graven.service.context import Context

    return _closing(Context.from_env(TerminalReporter()))


def _summary(report: DriftReport) -> str:
    from graven.core.drift import summarize

    what = f"{report.name or 'artifact'} {report.digest[7:19]}"
    how = (
        f"{report.mode} check of {report.files} files, {report.hashed} hashed, {report.seconds * 1000:.0f} ms"
    )
    if report.clean:
        line = f"{report.env}: clean ({what} at {report.path}; {how})"
    else:
        counts = ", ".join(f"{n} {kind}" for kind, n in summarize(report.differences).items())
        n = len(report.differences)
        line = f"{report.env}: DRIFT, {n} difference{'s' if n != 1 else ''} ({counts}) ({what}; {how})"
    return line + (f"; {report.note}" if report.note else "")


def show_reports(reports: Sequence[DriftReport]) -> None:
    """A line per environment, then one table of every difference (capped; --json lists all)."""
    for report in reports:
        click.echo(_summary(report))
    rows = [[r.env, d.kind, d.path, d.detail()] for r in reports for d in r.differences]
    if rows:
        print_table(["env", "kind", "path", "detail"], rows[:_ROWS])
        if len(rows) > _ROWS:
            click.echo(f"... and {len(rows) - _ROWS} more (--json lists every difference)")


@click.command("drift")
@click.argument("envs", nargs=-1, metavar="[ENV...]")
@click.option("--full", is_flag=True, help="Re-hash every file instead of trusting unchanged stat records.")
@click.option("--json", "as_json", is_flag=True, help="Print every difference as JSON.")
def drift_cmd(envs: tuple[str, ...], full: bool, as_json: bool) -> int:
    """Compare live environments with what graven deployed; exit 1 when anything drifted."""
    from graven.service import drift as svc

    reports = svc.check(_context(), envs, full=full)
    clean = all(r.clean for r in reports)
    if as_json:
        emit_json({"clean": clean, "environments": [r.to_json() for r in reports]})
    elif not reports:
        click.echo("no live environments; `graven deploy DIGEST ENV` makes one")
    else:
        show_reports(reports)
    return 0 if clean else 1


@click.command("heal")
@click.argument("env")
@click.option("--plan", "plan_only", is_flag=True, help="Show what would be restored; change nothing.")
@click.option("--wait", is_flag=True, help="Wait for a deployment of ENV to finish instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def heal_cmd(env: str, plan_only: bool, wait: bool, as_json: bool) -> int:
    """Restore ENV's release (and current, config) from the store, exactly as deployed."""
    from graven.service import drift as svc

    result = svc.heal(_context(), env, plan_only=plan_only, wait=wait)
    if as_json:
        emit_json(result.to_json())
        return 0 if result.ok else 1
    plan = result.plan
    if not result.before:
        click.echo(f"{env}: nothing to heal, it matches {result.digest[7:19]}")
        return 0
    verb = "would" if plan_only else "did"
    n = len(result.before)
    click.echo(
        f"{env}: {n} difference{'s' if n != 1 else ''}; {verb} remove {len(plan.remove)}, create or fix "
        f"{len(plan.mkdirs)} directories, write {len(plan.files)} files and {len(plan.symlinks)} symlinks"
        + (", repoint current" if plan.current else "")
        + (", repoint config" if plan.config else "")
        + (" (the release directory is rebuilt)" if result.rebuilt else "")
    )
    rows = [[d.kind, d.path, d.detail()] for d in result.before]
    print_table(["kind", "path", "detail"], rows[:_ROWS])
    if len(rows) > _ROWS:
        click.echo(f"... and {len(rows) - _ROWS} more (--json lists all)")
    if plan_only:
        click.echo("nothing was changed (--plan)")
        return 0
    if result.ok:
        click.echo(f"{env}: healed in {result.seconds * 1000:.0f} ms; a full check finds it clean")
        return 0
    sys.stderr.write(
        f"graven: error: {env} still differs after the heal ({len(result.after)} differences, first: "
        f"{result.after[0].path} {result.after[0].kind})\n"
    )
    return 1


def _duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            seconds = float(value[:-1]) * units[value[-1]]
        else:
            seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90, 30s, 5m, 24h)") from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r} must be more than zero")
    return seconds


@click.command("watch")
@click.argument("envs", nargs=-1, metavar="[ENV...]")
@click.option("--interval", default="60", show_default=True, help="Seconds between periodic checks.")
@click.option(
    "--full-every", default="24h", show_default=True, help="How often a check re-hashes everything."
)
@click.option("--alert-command", metavar="CMD", help="Run CMD (sh -c) with the alert JSON on stdin.")
@click.option("--webhook", metavar="URL", help="POST the alert JSON to URL (retried with backoff).")
@click.option("--heal", "do_heal", is_flag=True, help="Restore drifted releases from the store (self-heal).")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on 127.0.0.1:N."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per check instead of text.")
def watch_cmd(
    *,
    envs: tuple[str, ...],
    interval: str,
    full_every: str,
    alert_command: str | None,
    webhook: str | None,
    do_heal: bool,
    metrics_port: int | None,
    as_json: bool,
) -> int:
    """Check live environments on every file change and periodically; alert, heal, export metrics.
    Runs until SIGTERM or SIGINT."""
    from graven.drift.watch import WatchOptions
    from graven.service.drift import run_watch

    options = WatchOptions(
        envs=envs,
        interval=_duration(interval),
        full_every=_duration(full_every),
        alert_command=alert_command,
        webhook=webhook,
        heal=do_heal,
        metrics_port=metrics_port,
        as_json=as_json,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if main_thread else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        run_watch(_context(), options, stop, out=click.echo)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


COMMANDS = [drift_cmd, heal_cmd, watch_cmd]
