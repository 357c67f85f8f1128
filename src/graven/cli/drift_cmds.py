"""``graven drift``, ``graven heal`` and ``graven watch``."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from graven.cli.app import ArgParser, UsageError, add_command, port_number
from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, print_table, printable, printable_message
from graven.core.units import counted

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any

    from graven.service.drift_report import DriftReport

__all__ = ["register"]

_ROWS = 40
_Handler = Callable[[int, "FrameType | None"], "Any"]


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``drift``, ``heal`` and ``watch``."""
    drift = add_command(commands, "drift", drift_cmd)
    drift.add_argument(
        "envs", nargs="*", metavar="ENV", help="Environments to check (default: every live one)."
    )
    drift.add_argument(
        "--full", action="store_true", help="Re-hash every file instead of trusting unchanged stat records."
    )
    drift.add_argument("--json", dest="as_json", action="store_true", help="Print every difference as JSON.")

    heal = add_command(commands, "heal", heal_cmd)
    heal.add_argument("env", metavar="ENV", help="The environment to restore.")
    heal.add_argument(
        "--plan", dest="plan_only", action="store_true", help="Show what would be restored; change nothing."
    )
    heal.add_argument(
        "--wait", action="store_true", help="Wait for a deployment of ENV to finish instead of failing."
    )
    heal.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    watch = add_command(commands, "watch", watch_cmd)
    watch.add_argument(
        "envs", nargs="*", metavar="ENV", help="Environments to watch (default: every live one)."
    )
    watch.add_argument("--interval", default="60", help="Seconds between periodic checks. (default: 60)")
    watch.add_argument(
        "--full-every", default="24h", help="How often a check re-hashes everything. (default: 24h)"
    )
    watch.add_argument("--alert-command", metavar="CMD", help="Run CMD (sh -c) with the alert JSON on stdin.")
    watch.add_argument("--webhook", metavar="URL", help="POST the alert JSON to URL (retried with backoff).")
    watch.add_argument(
        "--heal",
        dest="do_heal",
        action="store_true",
        help="Restore drifted releases from the store (self-heal).",
    )
    watch.add_argument(
        "--metrics-port", type=port_number, metavar="N", help="Serve Prometheus metrics on 127.0.0.1:N."
    )
    watch.add_argument(
        "--json", dest="as_json", action="store_true", help="Print one JSON line per check instead of text."
    )


def _context(*, quiet: bool = False) -> Any:
    """The command's context; ``quiet``: warnings only, no progress (watch's lines come on stdout)."""
    from graven.service.context import Context

    return _closing(Context.from_env(TerminalReporter(quiet=quiet)))


def _summary(report: DriftReport) -> str:
    what = f"{printable(report.name or 'artifact')} {report.digest[7:19]}"
    where = printable(report.path)  # a value, escaped once; the line around it keeps its backslashes
    files = counted(report.files, "file")
    how = f"{report.mode} check of {files}, {report.hashed} hashed, {report.seconds * 1000:.0f} ms"
    if report.error is not None:
        line = f"{report.env}: ERROR, the check failed ({what} at {where}): {report.error}"
    elif report.clean:
        line = f"{report.env}: clean ({what} at {where}; {how})"
    else:
        from graven.core.drift import summarize

        counts = ", ".join(f"{n} {kind}" for kind, n in summarize(report.differences).items())
        n = len(report.differences)
        line = f"{report.env}: DRIFT, {counted(n, 'difference')} ({counts}) ({what}; {how})"
    return printable_message(line + (f"; {report.note}" if report.note else ""))


def show_reports(reports: Sequence[DriftReport]) -> None:
    """A line per environment, then one table of every difference (capped; --json lists all)."""
    for report in reports:
        print(_summary(report))
    rows = [[r.env, d.kind, d.path, d.detail()] for r in reports for d in r.differences]
    if rows:
        print_table(["env", "kind", "path", "detail"], rows[:_ROWS])
        if len(rows) > _ROWS:
            print(f"... and {len(rows) - _ROWS} more (--json lists every difference)")


@contextlib.contextmanager
def _stopped_by_interrupts(stop: threading.Event) -> Iterator[None]:
    """While the block runs, Ctrl-C (SIGINT) and SIGTERM set ``stop`` before they interrupt the main
    thread as they always do (KeyboardInterrupt, :class:`graven.cli.app.Terminated`: the command ends
    with its usual message and exit code). A check given ``stop`` abandons its hashing threads and
    kills its forked walker with it (:class:`graven.drift.scan.ScanStopped`, as when ``graven watch``
    stops), instead of hashing on while the command unwinds. A signal that is ignored stays ignored;
    outside the main thread (graven as a library) nothing is changed
    (:func:`graven.runtime.interrupt_handlers`)."""
    from graven.runtime import interrupt_handlers

    with interrupt_handlers(lambda handler: _setting(stop, handler)):
        yield


def _setting(stop: threading.Event, then: _Handler) -> _Handler:
    """A signal handler that sets ``stop``, then does what ``then`` does."""

    def handler(signum: int, frame: FrameType | None) -> Any:
        stop.set()
        return then(signum, frame)

    return handler


def drift_cmd(args: argparse.Namespace) -> int:
    """Compare live environments with what graven deployed; exit 1 when anything drifted."""
    envs: list[str] = args.envs
    full: bool = args.full
    as_json: bool = args.as_json
    ctx = _context()
    reports = None
    if not full:  # answered by the snapshots of the last clean checks, when nothing changed since
        from graven.service.drift_quick import quick_reports

        reports = quick_reports(ctx, envs)
    stop = threading.Event()
    with _stopped_by_interrupts(stop):
        if reports is None and full:
            # the forked walker starts before the check's imports (graven.service.drift_early)
            from graven.service.drift_early import start_early

            with start_early(ctx, envs) as early:
                from graven.service import drift as svc

                reports = svc.check(ctx, envs, full=True, early=early, stop=stop)
        elif reports is None:
            from graven.service import drift as svc

            reports = svc.check(ctx, envs, full=full, stop=stop)
    ctx.reporter.close()  # the progress line of a full check, before the result
    clean = all(r.clean for r in reports)
    if as_json:
        emit_json({"clean": clean, "environments": [r.to_json() for r in reports]})
    elif not reports:
        print("no live environments; `graven deploy DIGEST ENV` makes one")
    else:
        show_reports(reports)
    return 0 if clean else 1


def heal_cmd(args: argparse.Namespace) -> int:
    """Restore ENV's release (and current, config) from the store, exactly as deployed."""
    env: str = args.env
    plan_only: bool = args.plan_only
    wait: bool = args.wait
    as_json: bool = args.as_json
    from graven.service import drift as svc
    from graven.service.context import Context

    reporter = TerminalReporter()  # a release rebuilt whole draws its progress: cleared before the result
    stop = threading.Event()  # Ctrl-C also stops the hashing threads of its full checks
    try:
        with _stopped_by_interrupts(stop):
            ctx = _closing(Context.from_env(reporter))
            result = svc.heal(ctx, env, plan_only=plan_only, wait=wait, stop=stop)
    finally:
        reporter.close()
    if as_json:
        emit_json(result.to_json())
        return 0 if result.ok else 1
    plan = result.plan
    if not result.before:
        print(f"{env}: nothing to heal, it matches {result.digest[7:19]}")
        return 0
    verb = "would" if plan_only else "did"
    differences = counted(len(result.before), "difference")
    print(
        f"{env}: {differences}; {verb} remove {len(plan.remove)}, create or fix "
        f"{counted(len(plan.mkdirs), 'directory', 'directories')}, write {counted(len(plan.files), 'file')} "
        f"and {counted(len(plan.symlinks), 'symlink')}"
        + (", repoint current" if plan.current else "")
        + (", repoint config" if plan.config else "")
        + (" (the release directory is rebuilt)" if result.rebuilt else "")
    )
    rows = [[d.kind, d.path, d.detail()] for d in result.before]
    print_table(["kind", "path", "detail"], rows[:_ROWS])
    if len(rows) > _ROWS:
        print(f"... and {len(rows) - _ROWS} more (--json lists all)")
    if plan_only:
        print("nothing was changed (--plan)")
        return 0
    if result.ok:
        print(f"{env}: healed in {result.seconds * 1000:.0f} ms; a full check finds it clean")
        return 0
    remaining = counted(len(result.after), "difference")
    sys.stderr.write(
        f"graven: error: {env} still differs after the heal ({remaining}, first: "
        f"{printable(result.after[0].path)} {result.after[0].kind})\n"
    )
    return 1


def _echo(line: str) -> None:
    """One line on stdout, flushed at once (watch runs for long, often into a pipe)."""
    print(line, flush=True)


def _duration(text: str, option: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            seconds = float(value[:-1]) * units[value[-1]]
        else:
            seconds = float(value)
    except ValueError:
        raise UsageError(
            f"argument {option}: {text!r} is not a duration (e.g. 90, 30s, 5m, 24h)", "graven watch"
        ) from None
    if not math.isfinite(seconds) or seconds > _MAX_DURATION:  # nan never elapses, inf never comes
        raise UsageError(
            f"argument {option}: {text!r} must be a finite duration of at most 365d", "graven watch"
        )
    if seconds <= 0:
        raise UsageError(f"argument {option}: {text!r} must be more than zero", "graven watch")
    if seconds < _MIN_DURATION:  # a check after every check, without pause: a core burnt for ever
        raise UsageError(
            f"argument {option}: {text!r} must be at least {_MIN_DURATION:g} s (file changes are "
            "noticed at once anyway; the interval is for the periodic check)",
            "graven watch",
        )
    return seconds


_MAX_DURATION = 365 * 86400.0
_MIN_DURATION = 0.1


def watch_cmd(args: argparse.Namespace) -> int:
    """Check live environments on every file change and periodically; alert, heal, export metrics.
    Runs until SIGTERM, SIGINT or SIGHUP (each a clean stop, exit 0)."""
    envs: list[str] = args.envs
    interval: str = args.interval
    full_every: str = args.full_every
    alert_command: str | None = args.alert_command
    webhook: str | None = args.webhook
    do_heal: bool = args.do_heal
    metrics_port: int | None = args.metrics_port
    as_json: bool = args.as_json
    from graven.drift.alerts import check_webhook
    from graven.drift.watch import WatchOptions
    from graven.service.drift import run_watch

    if webhook is not None:  # before the home is opened or a watcher waits for its first deployment
        check_webhook(webhook)
    options = WatchOptions(
        envs=tuple(envs),
        interval=_duration(interval, "--interval"),
        full_every=_duration(full_every, "--full-every"),
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
    # SIGHUP too (a closed ssh session, a reload by a service manager): a clean stop, never a kill that
    # loses queued alerts
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if main_thread else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        run_watch(_context(quiet=True), options, stop, out=_echo)  # a heal's progress is no watch line
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
