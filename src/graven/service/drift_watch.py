"""``graven watch``: the loop that checks live environments on notifications and on a schedule,
alerts, heals (optionally) and exports metrics (:func:`run_watch`).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graven.core.drift import Alert, alert_transition, keys_of, make_alert
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import shared_lock
from graven.drift.scan import ScanStopped
from graven.drift.watch import ROOT_SUFFIX, Schedule, WatchOptions
from graven.errors import (
    DatabaseBusyError,
    DatabaseReplacedError,
    GravenError,
    NotFoundError,
    PolicyError,
)
from graven.service.context import Context, utc_now
from graven.service.drift_check import DriftReport, check_target
from graven.service.drift_heal import HealNotStartedError, HealStopped, heal
from graven.service.drift_quick import record_clean
from graven.service.drift_records import alerted_keys, reason_of, record_alert, record_check
from graven.service.drift_targets import DriftSession, live_targets

__all__ = ["DB_WAIT", "HEAL_BACKOFF_MAX", "HEAL_GRACE", "HELD_MAX", "HealBackoff", "HeldChecks", "run_watch"]

# -- watch ------------------------------------------------------------------------------------------

HEAL_GRACE = 0.2  # seconds: a heal's own notifications arrive within this; the check after it waits
HEAL_BACKOFF_MAX = 3600.0  # seconds: the longest wait between two heals that leave drift behind
DB_WAIT = 0.5  # seconds the watcher's own writes wait for another writer (then held: HeldChecks)
HELD_MAX = 100  # checks of one environment held at most while the database is busy (oldest dropped)


class HeldChecks:
    """The checks ``graven watch`` could not record yet (the database is busy, or cannot be written),
    per environment, in the order they were made; recorded in that order, under the environment's
    check lock, once the database takes them (:meth:`record`).

    A run of checks that found the same thing keeps its first (when it was found) and its last (the
    time of the last check); past :data:`HELD_MAX` the oldest is dropped (the database still ends with
    the newest state). A held check older than the one recorded meanwhile (another process's, a
    heal's) never becomes the state: it is kept in the history as ``superseded`` when it found drift
    the state does not hold; one that a deployment may have switched away from since (its row
    started after the check) is left out; a deployment refused or failed before its switch, or still
    in progress at the check, supersedes nothing (``drift_live.place``). Kept in memory only: a
    watcher killed meanwhile loses them, and its next check finds the drift again and records it (a
    restarted watcher then alerts it again: what was alerted is recorded with the drift)."""

    def __init__(self) -> None:
        self._held: dict[str, list[DriftReport]] = {}
        self.dropped = 0

    def __bool__(self) -> bool:
        return any(self._held.values())

    def count(self, env: str) -> int:
        """How many checks of ``env`` are held."""
        return len(self._held.get(env, ()))

    def envs(self) -> list[str]:
        """The environments with held checks."""
        return sorted(env for env, held in self._held.items() if held)

    def add(self, report: DriftReport) -> None:
        """Hold ``report`` (the newest check of its environment)."""
        held = self._held.setdefault(report.env, [])
        same = (report.digest, keys_of(report.differences))
        if len(held) >= 2 and all((r.digest, keys_of(r.differences)) == same for r in held[-2:]):
            held[-1] = report  # the same state again: only the time of the last check changes
            return
        if len(held) >= HELD_MAX:
            del held[0]
            self.dropped += 1
        held.append(report)

    def forget(self, env: str) -> None:
        """Drop what is held for ``env`` (no longer live: nothing of it would be recorded)."""
        self._held.pop(env, None)

    def record(self, ctx: Context, env: str, *, wait: float) -> int:
        """Record ``env``'s held checks in order (the caller holds its check lock); how many were.
        GravenError (DatabaseBusyError: another writer) when one cannot be: it and those after it stay
        held."""
        held = self._held.get(env, [])
        done = 0
        while held:
            report = held[0]
            if not record_clean(ctx, report, wait=wait):
                record_check(ctx, report, wait=wait, late=True)
            held.pop(0)
            done += 1
        return done


class HealBackoff:
    """When ``watch --heal`` may heal an environment again: after a heal that did not leave it clean
    (it failed, or something it cannot remove stays), not before ``interval`` seconds, then twice as
    long after each further one (at most :data:`HEAL_BACKOFF_MAX`, or the interval when longer); a
    clean check or a successful heal ends the backoff."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}

    def allowed(self, env: str) -> bool:
        """True when ``env`` may be healed now."""
        return self.clock() >= self._not_before.get(env, -math.inf)

    def failed(self, env: str) -> float:
        """A heal of ``env`` did not leave it clean: the seconds until the next may run."""
        count = self._failures.get(env, 0) + 1
        self._failures[env] = count
        wait = min(self.interval * 2.0 ** min(count - 1, 32), max(self.interval, HEAL_BACKOFF_MAX))
        self._not_before[env] = self.clock() + wait
        return wait

    def succeeded(self, env: str) -> None:
        """``env`` is clean: heal it at once the next time it drifts."""
        self._failures.pop(env, None)
        self._not_before.pop(env, None)


def _check_line(report: DriftReport) -> str:
    what = f"{report.mode}, {report.files} files, {report.hashed} hashed, {report.seconds * 1000:.0f} ms"
    if report.clean:
        return f"{report.checked_at} {report.env}: clean ({what})"
    return f"{report.checked_at} {report.env}: DRIFT: {reason_of(report.differences)} ({what})"


def run_watch(
    ctx: Context,
    opts: WatchOptions,
    stop: threading.Event,
    *,
    out: Callable[[str], None],
    notifier_backend: str = "auto",
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """``graven watch``: check on every notification and periodically, alert on new drift and on its
    resolution, heal (with ``opts.heal``), export metrics; until ``stop`` is set."""
    from graven.drift.alerts import AlertDispatcher, AlertSender, Delivery
    from graven.drift.metrics import DriftMetrics
    from graven.drift.notify import make_notifier

    targets = {t.env: t for t in live_targets(ctx, opts.envs)}  # a named environment must be live now
    schedule = Schedule(interval=opts.interval, full_every=opts.full_every, debounce=opts.debounce)
    sender = AlertSender(
        command=opts.alert_command,
        webhook=opts.webhook,
        retries=opts.webhook_retries,
        backoff=opts.webhook_backoff,
        stop=stop,
    )
    # the metrics port first: one in use is an InputError before any thread or notifier is started
    metrics = DriftMetrics() if opts.metrics_port is not None else None
    port = metrics.serve(opts.metrics_port or 0) if metrics is not None else None
    try:
        session = DriftSession(ctx)
        notifier = make_notifier(schedule.notify, backend=notifier_backend)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    dispatcher = (
        AlertDispatcher(sender, on_done=schedule.wake.set, warn=ctx.reporter.warn)
        if sender.configured
        else None
    )
    watched: dict[str, tuple[str, str, int]] = {}
    backoff = HealBackoff(opts.interval, clock=schedule.clock)
    alerted: dict[str, frozenset[tuple[str, str]]] = {}

    # The output gone (a closed pipe, or terminal: SIGHUP): the error ends the watcher, but only once what
    # its stop still records (alerts not delivered, held checks) is recorded; nothing more is written.
    lost_output: list[OSError] = []

    def say(kind: str, text: str, data: dict[str, Any]) -> None:
        if lost_output:
            return
        try:
            out(json.dumps({"type": kind, **data}, sort_keys=True) if opts.as_json else text)
        except OSError as exc:
            lost_output.append(exc)
            if not stop.is_set():
                raise

    # What the database did not take yet (another writer holds it: the watcher's writes wait DB_WAIT at
    # most, so checks, alerts and metrics go on): checks, then deliveries, each recorded in order once it
    # is free. One failed write per round at most; one warning while it lasts, one line when it ends.
    held = HeldChecks()
    unrecorded: list[tuple[Delivery, str]] = []  # deliveries not recorded yet, with when each ended
    episode = {"failed": False, "warned": False, "checks": 0, "alerts": 0}

    def cannot_record(exc: GravenError) -> None:
        episode["failed"] = True
        if not episode["warned"]:
            episode["warned"] = True
            if isinstance(exc, DatabaseBusyError):
                ctx.reporter.warn(
                    f"database busy ({exc}); checks and alerts go on, and what they find is recorded "
                    "when it is free"
                )
            else:
                ctx.reporter.warn(f"cannot record drift ({exc}); checks and alerts go on, tried again")

    def show_held(env: str) -> None:
        if metrics is not None:
            metrics.held(env, held.count(env) + sum(1 for d, _ in unrecorded if d.context.env == env))

    heal_after: set[str] = set()  # environments whose heal waits for their held checks

    def record_held(env: str, *, locked: bool) -> None:
        """Record what is held for ``env`` (``locked``: the caller holds its check lock)."""
        if not episode["failed"] and held.count(env):
            try:
                if locked:
                    episode["checks"] += held.record(ctx, env, wait=DB_WAIT)
                else:
                    with shared_lock(EnvLayout(Path(targets[env].path)).lock, env=env, wait=False):
                        episode["checks"] += held.record(ctx, env, wait=DB_WAIT)
            except PolicyError:  # a deployment or heal at work: after it
                pass
            except GravenError as exc:
                cannot_record(exc)
            if not held.count(env) and env in heal_after:
                heal_after.discard(env)
                schedule.mark(env)  # the heal it waited for: at the next round
        show_held(env)

    def recorder(report: DriftReport) -> None:
        """Record a check (under its lock), or hold it while the database does not take it."""
        if not held.count(report.env) and not episode["failed"]:
            try:
                if not record_clean(ctx, report, wait=DB_WAIT):
                    record_check(ctx, report, wait=DB_WAIT)
            except GravenError as exc:
                held.add(report)
                cannot_record(exc)
            show_held(report.env)
            return
        held.add(report)
        record_held(report.env, locked=True)

    def finish_deliveries() -> None:
        if dispatcher is None:
            return
        for delivery in dispatcher.results():
            alert: Alert = delivery.context
            ended = utc_now()
            unrecorded.append((delivery, ended))
            outcome = "; ".join(f"{k}: {v}" for k, v in delivery.channels.items())
            say(
                "delivery",
                f"{ended} {alert.env}: {alert.event} alert {'sent' if delivery.ok else 'FAILED'} ({outcome})",
                {"env": alert.env, "event": alert.event, "ok": delivery.ok, "channels": delivery.channels},
            )
        while unrecorded and not episode["failed"]:
            delivery, ended = unrecorded[0]
            if held.count(delivery.context.env):
                break  # after the checks it follows (the drift found before its alert)
            try:
                alert = delivery.context
                record_alert(ctx, alert, ok=delivery.ok, channels=delivery.channels, wait=DB_WAIT, time=ended)
            except GravenError as exc:
                cannot_record(exc)
                break
            unrecorded.pop(0)
            episode["alerts"] += 1
            show_held(delivery.context.env)

    def end_round() -> None:
        """Say once that what was held is recorded; the next failure warns again."""
        if episode["warned"] and not held and not unrecorded:
            dropped, held.dropped = held.dropped, 0
            text = f"{utc_now()} database free again: recorded {episode['checks']} checks and " + (
                f"{episode['alerts']} alert deliveries held meanwhile"
            )
            if dropped:
                text += f" ({dropped} older checks dropped)"
            say(
                "recorded",
                text,
                {"checks": episode["checks"], "alerts": episode["alerts"], "dropped": dropped},
            )
            episode.update(warned=False, checks=0, alerts=0)
        episode["failed"] = False

    def wake_on_stop() -> None:
        stop.wait()
        schedule.wake.set()

    threading.Thread(target=wake_on_stop, name="graven-watch-stop", daemon=True).start()
    stopped = False  # the loop ended at the stop request (not by an error, which goes on as it is)
    try:
        info = {"metrics_port": port, "environments": sorted(targets), "backend": type(notifier).__name__}
        if port is not None:
            say("metrics", f"metrics on http://127.0.0.1:{port}/metrics", {"port": port})
        if not targets:  # else a watcher of the wrong home (or before any deploy) would say nothing, ever
            ctx.reporter.warn(
                f"no live environments yet (home {ctx.home.root}); watching for the first deployment "
                f"(every {opts.interval:g} s)"
            )
        if on_ready is not None:
            on_ready(info)
        first = True
        opened = ctx.home.has_database()  # a database this watcher reads: one removed later is an error
        while not stop.is_set():
            schedule.wake.clear()
            if not first:
                try:
                    present = ctx.home.has_database()
                    if opened and not present:
                        with ctx.db.connect():  # DatabaseReplacedError (never "nothing is live" now)
                            pass
                    opened = opened or present
                    try:
                        targets = {t.env: t for t in live_targets(ctx, opts.envs)}
                    except NotFoundError:
                        targets = {t.env: t for t in live_targets(ctx)}
                        targets = {k: v for k, v in targets.items() if not opts.envs or k in opts.envs}
                except DatabaseReplacedError:  # for good: only a new process takes the new file
                    raise
                except GravenError as exc:  # the database: keep the environments known, read them again soon
                    say(
                        "error",
                        f"{utc_now()} reading the live environments failed: {exc}; trying again",
                        {"error": str(exc)},
                    )
            first = False
            for env in held.envs():
                if env in targets:
                    record_held(env, locked=False)
            for env, target in targets.items():
                release = str(EnvLayout(Path(target.path)).release(target.digest.removeprefix("sha256:")))
                try:
                    inode = os.stat(release).st_ino  # a redeploy may replace the directory itself
                except OSError:
                    inode = 0
                if watched.get(env) != (release, target.path, inode):
                    notifier.unwatch(env)
                    notifier.unwatch(env + ROOT_SUFFIX)
                    notifier.watch(env, Path(release), recursive=True)
                    notifier.watch(env + ROOT_SUFFIX, Path(target.path), recursive=False)
                    for failure in getattr(notifier, "failures", []):
                        ctx.reporter.warn(f"{failure}; periodic checks still run")
                    getattr(notifier, "failures", []).clear()
                    if env not in watched:
                        schedule.add(env)
                    else:
                        schedule.mark(env, full=True)
                    watched[env] = (release, target.path, inode)
            for env in sorted(set(watched) - set(targets)):
                notifier.unwatch(env)
                notifier.unwatch(env + ROOT_SUFFIX)
                schedule.forget(env)
                del watched[env]
                held.forget(env)
                heal_after.discard(env)
                alerted.pop(env, None)
                backoff.succeeded(env)
                if metrics is not None:
                    metrics.forget(env)
                say("unwatch", f"{utc_now()} {env}: nothing is live there now; not watched", {"env": env})
            for env, full in schedule.due():
                if stop.is_set():
                    break
                target = targets[env]
                started = schedule.clock()
                try:
                    report = check_target(
                        ctx, session, target, full=full, wait=False, recorder=recorder, stop=stop
                    )
                except ScanStopped:  # the watcher is stopping: the check is abandoned, nothing of it kept
                    break
                except PolicyError:  # a deploy or heal is changing it: look again once it is done
                    schedule.postpone(env, 0.2)
                    continue
                except GravenError as exc:
                    schedule.checked(env, full=False, started=started)
                    if metrics is not None:
                        metrics.observe(
                            env, digest=target.digest, commit=target.commit, paths=None, timestamp=time.time()
                        )
                    say("error", f"{utc_now()} {env}: check failed: {exc}", {"env": env, "error": str(exc)})
                    continue
                schedule.checked(env, full=full, started=started)
                if metrics is not None:
                    metrics.observe(
                        env,
                        digest=report.digest,
                        commit=report.commit,
                        paths=len({d.path for d in report.differences}),
                        timestamp=time.time(),
                    )
                say("check", _check_line(report), report.to_json())
                before = alerted.get(env)
                if before is None:
                    try:
                        before = alerted_keys(ctx, env)
                    except GravenError as exc:  # the database: decide on alerting at the next check
                        schedule.postpone(env, 1.0)
                        say(
                            "error",
                            f"{utc_now()} {env}: reading alert state failed: {exc}",
                            {"env": env, "error": str(exc)},
                        )
                        continue
                event, alerted[env] = alert_transition(before, keys_of(report.differences))
                if event is not None:
                    alert = make_alert(
                        event,
                        env=env,
                        path=report.path,
                        digest=report.digest,
                        commit=report.commit,
                        name=report.name,
                        time=report.checked_at,
                        differences=report.differences,
                        alerted=before,
                    )
                    say("alert", alert.text(), alert.to_json())
                    if dispatcher is not None:
                        dispatcher.submit(alert.to_json(), context=alert)
                if report.clean:
                    backoff.succeeded(env)
                if opts.heal and not report.clean and held.count(env):
                    heal_after.add(env)  # its `heal started` follows the drift found, held meanwhile
                elif (
                    opts.heal
                    and not report.clean
                    and backoff.allowed(env)
                    and not os.path.isdir(os.path.join(report.path, ".graven"))
                ):
                    # Every deployed environment has PATH/.graven: without it the directory is gone, or
                    # the file system it lies on is not mounted (an empty mount point): healing would
                    # write the release wherever PATH leads now. The operator decides (graven heal).
                    wait = backoff.failed(env)
                    reason = (
                        f"{report.path} holds no .graven: the environment's directory is gone, or its file "
                        f"system is not mounted; not healed automatically (graven heal {env} recreates it)"
                    )
                    say(
                        "heal",
                        f"{utc_now()} {env}: heal failed: {reason}; next heal in {wait:g}s at the earliest",
                        {"env": env, "ok": False, "error": reason, "retry_in": wait},
                    )
                elif opts.heal and not report.clean and backoff.allowed(env):
                    # the heal's own changes wake no check; one follows it (HEAL_GRACE after it is done)
                    schedule.mute(env, math.inf)
                    try:
                        healed = heal(ctx, env, session=session, start_wait=DB_WAIT, stop=stop)
                    except HealStopped as exc:  # the watcher is stopping: abandoned half-way, recorded
                        say(
                            "heal",
                            f"{utc_now()} {env}: heal stopped: {exc}",
                            {"env": env, "ok": False, "error": str(exc)},
                        )
                        if exc.unrecorded is not None:  # the database stayed busy: the stop goes on
                            ctx.reporter.warn(
                                f"the stopped heal of {env} was not recorded ({exc.unrecorded}); the log "
                                "shows it started, not how it ended (the next check finds what still differs)"
                            )
                        break
                    except ScanStopped:  # ... before it changed anything: nothing of it kept
                        break
                    except PolicyError as exc:  # a deployment holds the lock: try again soon
                        schedule.postpone(env, 1.0)
                        say("heal", f"{utc_now()} {env}: heal postponed: {exc}", {"env": env, "ok": False})
                        continue
                    except HealNotStartedError as exc:  # the database is busy: nothing changed yet
                        schedule.postpone(env, 1.0)
                        cannot_record(exc)
                        continue
                    except GravenError as exc:
                        wait = backoff.failed(env)
                        say(
                            "heal",
                            f"{utc_now()} {env}: heal failed: {exc}; next heal in {wait:g}s at the earliest",
                            {"env": env, "ok": False, "error": str(exc), "retry_in": wait},
                        )
                        continue
                    finally:
                        schedule.mute(env, HEAL_GRACE)
                    text = f"{utc_now()} {env}: healed {len(healed.before)} differences"
                    data = healed.to_json()
                    if healed.ok:
                        backoff.succeeded(env)
                    else:
                        wait = backoff.failed(env)
                        text += f"; {len(healed.after)} remain; next heal in {wait:g}s at the earliest"
                        data["retry_in"] = wait
                    say("heal", text, data)
            finish_deliveries()
            end_round()
            # what is live is read again at least every 2 s (a deployment is followed); a notification,
            # a finished delivery or the stop request wakes the loop at once
            schedule.wake.wait(min(schedule.timeout(), 2.0))
        stopped = True
    finally:
        stop.set()  # also ends the thread that waits for it
        notifier.close()
        if dispatcher is not None:
            left = dispatcher.close(timeout=5.0)
            if left:
                ctx.reporter.warn(f"{left} alerts were not delivered: the watcher stopped first")
        episode["failed"] = False  # one last try for what is held
        for env in held.envs():
            if env in targets:
                record_held(env, locked=False)
        finish_deliveries()
        lost = sum(held.count(env) for env in held.envs()) + len(unrecorded)
        if lost:
            ctx.reporter.warn(
                f"{lost} checks and alert deliveries were not recorded: the database was busy when the "
                "watcher stopped (the next check finds what drifts again, and records it)"
            )
        if metrics is not None:
            metrics.close()
        session.close()
    if lost_output and stopped:  # lost at the stop: the command must not end as if it was written
        raise lost_output[0]
