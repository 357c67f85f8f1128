"""``graven watch``: the loop that checks live environments on notifications and on a schedule,
alerts, heals (optionally) and exports metrics (:func:`run_watch`).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from graven.core.drift import CHECK_EVENTS, Alert, alert_transition, keys_of, make_alert, make_check_alert
from graven.core.paths import display_path
from graven.core.units import counted
from graven.deploy.layout import EnvLayout
from graven.deploy.lock import shared_lock
from graven.drift.scan import ScanStopped
from graven.drift.watch import ROOT_SUFFIX, Schedule, WatchOptions
from graven.errors import (
    CheckLockBusyError,
    DatabaseBusyError,
    DatabaseReplacedError,
    EnvironmentBusyError,
    GravenError,
    NotFoundError,
)
from graven.service.context import Context, utc_now
from graven.service.drift_check import DriftReport, check_target
from graven.service.drift_heal import HealNotStartedError, HealStopped, heal
from graven.service.drift_quick import record_clean
from graven.service.drift_records import alerted_keys, reason_of, record_alert, record_check
from graven.service.drift_targets import DriftSession, DriftTarget, live_targets

if TYPE_CHECKING:
    from graven.drift.alerts import Delivery
    from graven.drift.notify import Notifier

__all__ = [
    "DB_WAIT",
    "HEAL_BACKOFF_MAX",
    "HEAL_GRACE",
    "HEAL_LOCK_WAIT",
    "HELD_MAX",
    "LOCKED_WARN",
    "RELAPSE_WINDOW",
    "HealBackoff",
    "HeldChecks",
    "Relapse",
    "run_watch",
]

# -- watch ------------------------------------------------------------------------------------------

HEAL_GRACE = 0.2  # seconds: a heal's own notifications arrive within this; the check after it waits
_POSTPONED = 1.0  # seconds before a heal a deployment held off is tried again
HEAL_BACKOFF_MAX = 3600.0  # seconds: the longest wait between two heals that leave drift behind
RELAPSE_WINDOW = 60.0  # seconds (or twice the interval): what a heal restored drifting again within it
DB_WAIT = 0.5  # seconds the watcher's own writes wait for another writer (then held: HeldChecks)
HELD_MAX = 100  # checks of one environment held at most while the database is busy (oldest dropped)
ALERT_RETRY = 30.0  # seconds after an alert that was not delivered before it is sent again
ALERT_RETRY_MAX = 900.0  # seconds: the longest wait between two tries of an undelivered alert
LOCKED_WARN = 60.0  # seconds an environment's check lock may keep its checks off before it is said
# seconds a heal waits at most for the checks in flight on its environment (they hold its check lock
# shared, for milliseconds): the watcher's one loop waits with it, and a stop must not wait for a
# check that hangs; longer, the heal fails (backed off as any failed heal)
HEAL_LOCK_WAIT = 2.0


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


class Relapse(NamedTuple):
    """What a heal restored drifted again soon after it (:meth:`HealBackoff.relapsed`)."""

    paths: tuple[str, ...]  # the paths the heal restored that drift again, sorted
    since: float  # seconds from the end of the heal to the check that found them
    wait: float  # seconds before the next heal may run


class HealBackoff:
    """When ``watch --heal`` may heal an environment again: after a heal that did not leave it clean
    (it failed, or something it cannot remove stays), not before ``interval`` seconds, then twice as
    long after each further one (at most :data:`HEAL_BACKOFF_MAX`, or the interval when longer); a
    clean check or a successful heal ends the backoff.

    A heal that succeeds but whose paths drift again at once (an application that rewrites its own
    file every second) would else be healed again and again, as fast as the watcher notices, forever:
    the first drift found after a heal, within :attr:`window` of it, on a path it restored, is a
    relapse (:meth:`relapsed`): the next heal waits the interval, twice as long after each relapse
    in a row; a first drift after a heal on other paths, or after the window, ends the doubling."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.window = max(RELAPSE_WINDOW, 2.0 * interval)  # a periodic check after a heal falls in it
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._healed: dict[str, tuple[float, frozenset[str]]] = {}  # the last heal: when, what
        self._relapses: dict[str, int] = {}

    def allowed(self, env: str) -> bool:
        """True when ``env`` may be healed now."""
        return self.clock() >= self._not_before.get(env, -math.inf)

    def _wait(self, count: int) -> float:
        return min(self.interval * 2.0 ** min(count - 1, 32), max(self.interval, HEAL_BACKOFF_MAX))

    def failed(self, env: str) -> float:
        """A heal of ``env`` did not leave it clean: the seconds until the next may run."""
        count = self._failures.get(env, 0) + 1
        self._failures[env] = count
        wait = self._wait(count)
        self._not_before[env] = self.clock() + wait
        return wait

    def succeeded(self, env: str) -> None:
        """``env`` is clean: heal it at once the next time it drifts (a relapse aside)."""
        self._failures.pop(env, None)
        self._not_before.pop(env, None)

    def healed(self, env: str, paths: Iterable[str]) -> None:
        """A heal left ``env`` clean, restoring ``paths``: :meth:`succeeded`, and the first drift found
        after it decides whether they came back (:meth:`relapsed`)."""
        self.succeeded(env)
        self._healed[env] = (self.clock(), frozenset(paths))

    def relapsed(self, env: str, paths: Iterable[str]) -> Relapse | None:
        """Drift of ``paths`` was found in ``env``, which :meth:`allowed` a heal of: a :class:`Relapse`
        (the next heal held back) when it is the first drift found since the last heal, within
        :attr:`window` of it, on paths that heal restored; else None (heal it)."""
        last = self._healed.pop(env, None)
        if last is None:
            return None
        at, restored = last
        since = self.clock() - at
        again = tuple(sorted(restored.intersection(paths)))
        if not again or since >= self.window:
            self._relapses.pop(env, None)
            return None
        count = self._relapses.get(env, 0) + 1
        self._relapses[env] = count
        wait = self._wait(count)
        self._not_before[env] = self.clock() + wait
        return Relapse(again, since, wait)


def _relapse_reason(relapse: Relapse) -> str:
    """Why a heal is held back: what it restored drifted again (each path shown on one line)."""
    paths = relapse.paths
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    shown = ", ".join(display_path(path) for path in paths[:3]) + more
    them = "it" if len(paths) == 1 else "them"
    return (
        f"{shown} drifted again {relapse.since:.1f} s after the heal restored {them}: something keeps "
        f"changing {them}; not healed again at once"
    )


def _check_line(report: DriftReport) -> str:
    files = counted(report.files, "file")
    what = f"{report.mode}, {files}, {report.hashed} hashed, {report.seconds * 1000:.0f} ms"
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
    _Watcher(ctx, opts, stop, out=out, notifier_backend=notifier_backend).run(on_ready)


@dataclass
class _BusyEpisode:
    """While the database does not take the watcher's writes (another writer holds it: they wait
    :data:`DB_WAIT` at most, so checks, alerts and metrics go on): ``failed``, a write failed this round
    (no other is tried before the next); ``warned``, said once while it lasts; ``checks`` and ``alerts``,
    recorded late meanwhile (said in one line when it ends: :meth:`_Watcher._end_round`)."""

    failed: bool = False
    warned: bool = False
    checks: int = 0
    alerts: int = 0


class _Watcher:
    """One run of :func:`run_watch`: its attributes are the state the phases share, its methods the
    phases, in the order they run:

    - start-up (``__init__``): the live environments, the schedule, the metrics port, the notifier,
      the alert dispatcher; then :meth:`run`: :meth:`_announce`, :meth:`_loop`, :meth:`_shut_down`;
    - a round (:meth:`_round`): :meth:`_read_targets` (a deployment is followed), what the database
      did not take yet (:meth:`_record_all_held`), the notifier follows the live releases
      (:meth:`_watch_targets`, :meth:`_unwatch_gone`), :meth:`_check` of each environment due (then
      :meth:`_alert`, :meth:`_heal_drift`, :meth:`_heal`), :meth:`_finish_deliveries`,
      :meth:`_end_round`;
    - the database busy: checks are held (:class:`HeldChecks`; :meth:`_record`, the recorder of each
      check, and :meth:`_record_held`), then deliveries (``unrecorded``), each recorded in order once
      it is free; one failed write per round at most (:meth:`_cannot_record`), one warning while it
      lasts, one line when it ends (:meth:`_end_round`);
    - the output (:meth:`_say`): gone (a closed pipe, or terminal: SIGHUP), its error ends the
      watcher, but only once what its stop still records (alerts not delivered, held checks) is
      recorded; nothing more is written."""

    def __init__(
        self,
        ctx: Context,
        opts: WatchOptions,
        stop: threading.Event,
        *,
        out: Callable[[str], None],
        notifier_backend: str,
    ) -> None:
        """Start-up: a named environment must be live now; a metrics port in use is an InputError
        before any thread or notifier is started."""
        from graven.drift.alerts import AlertDispatcher, AlertSender
        from graven.drift.metrics import DriftMetrics
        from graven.drift.notify import make_notifier

        self.ctx = ctx
        self.opts = opts
        self.stop = stop
        self.out = out
        # a named environment must be live now
        self.targets = {t.env: t for t in live_targets(ctx, opts.envs)}
        self.schedule = schedule = Schedule(
            interval=opts.interval, full_every=opts.full_every, debounce=opts.debounce
        )
        sender = AlertSender(
            command=opts.alert_command,
            webhook=opts.webhook,
            retries=opts.webhook_retries,
            backoff=opts.webhook_backoff,
            stop=stop,
        )
        # the metrics port first: one in use is an InputError before any thread or notifier is started
        metrics = DriftMetrics() if opts.metrics_port is not None else None
        self.metrics = metrics
        self.port = metrics.serve(opts.metrics_port or 0) if metrics is not None else None
        try:
            self.session = DriftSession(ctx)
            self.notifier: Notifier = make_notifier(schedule.notify, backend=notifier_backend)
        except BaseException:
            if metrics is not None:
                metrics.close()
            raise
        self.dispatcher = (
            AlertDispatcher(sender, on_done=schedule.wake.set, warn=ctx.reporter.warn)
            if sender.configured
            else None
        )
        # per environment: what the notifier watches (release, its inode, PATH's directory, its inode),
        # when it may be healed again, what its last alert was about
        self.watched: dict[str, tuple[str, int, str, int]] = {}
        self.backoff = HealBackoff(opts.interval, clock=schedule.clock)
        self.alerted: dict[str, frozenset[tuple[str, str]]] = {}
        # per environment whose last alert was not delivered: failures in a row, and the clock time
        # before which it is not sent again (:meth:`_undelivered`)
        self.alert_retry: dict[str, tuple[int, float]] = {}
        # per environment that cannot be checked (its check fails, or its check lock keeps it off for
        # LOCKED_WARN): its check-failed alert's failed deliveries in a row, and the clock time before
        # which it is not sent (again): inf once sent (:meth:`_unchecked`)
        self.unchecked: dict[str, tuple[int, float]] = {}
        self.lost_output: list[OSError] = []  # the output gone: raised once the stop recorded the rest
        # what the database did not take yet: checks, then deliveries (with when each ended)
        self.held = HeldChecks()
        self.unrecorded: list[tuple[Delivery, str]] = []
        self.episode = _BusyEpisode()
        self.heal_after: set[str] = set()  # environments whose heal waits for their held checks
        # per environment whose checks a held check lock keeps off: since when (clock), and whether
        # that was said (:meth:`_locked_out`)
        self.locked: dict[str, tuple[float, bool]] = {}

    # -- the run --------------------------------------------------------------------------------------

    def run(self, on_ready: Callable[[dict[str, Any]], None] | None) -> None:
        """Rounds until ``stop`` is set, then the stop (also after an error, which goes on as it is).
        An output lost at the stop is raised last: the command must not end as if it was written."""
        threading.Thread(target=self._wake_on_stop, name="graven-watch-stop", daemon=True).start()
        stopped = False  # the loop ended at the stop request (not by an error, which goes on as it is)
        try:
            self._announce(on_ready)
            self._loop()
            stopped = True
        finally:
            self._shut_down()
        if self.lost_output and stopped:  # lost at the stop: the command must not end as if it was written
            raise self.lost_output[0]

    def _wake_on_stop(self) -> None:
        """A thread's: the stop request wakes the loop at once."""
        self.stop.wait()
        self.schedule.wake.set()

    def _announce(self, on_ready: Callable[[dict[str, Any]], None] | None) -> None:
        """Say the metrics port, warn when nothing is live yet, then ``on_ready``."""
        info = {
            "metrics_port": self.port,
            "environments": sorted(self.targets),
            "backend": type(self.notifier).__name__,
        }
        if self.port is not None:
            self._say("metrics", f"metrics on http://127.0.0.1:{self.port}/metrics", {"port": self.port})
        # nothing live: else a watcher of the wrong home (or before any deploy) would say nothing, ever
        if not self.targets:
            self.ctx.reporter.warn(
                f"no live environments yet (home {self.ctx.home.root}); watching for the first deployment "
                f"(every {self.opts.interval:g} s)"
            )
        if on_ready is not None:
            on_ready(info)

    def _loop(self) -> None:
        """Round after round (what is live read again before each but the first) until ``stop``."""
        first = True
        # a database this watcher reads: one removed later is an error
        opened = self.ctx.home.has_database()
        while not self.stop.is_set():
            self.schedule.wake.clear()
            if not first:
                opened = self._read_targets(opened)
            first = False
            self._round()
            # what is live is read again at least every 2 s (a deployment is followed); a notification,
            # a finished delivery or the stop request wakes the loop at once
            self.schedule.wake.wait(min(self.schedule.timeout(), 2.0))

    def _read_targets(self, opened: bool) -> bool:
        """Read the live environments again (a database error keeps those known: read again soon);
        ``opened``: the watcher read a database, whose removal is DatabaseReplacedError, as its
        replacement is. Returns ``opened`` now."""
        try:
            present = self.ctx.home.has_database()
            if opened and not present:
                with self.ctx.db.connect():  # DatabaseReplacedError (never "nothing is live" now)
                    pass
            opened = opened or present
            try:
                self.targets = {t.env: t for t in live_targets(self.ctx, self.opts.envs)}
            except NotFoundError:
                targets = {t.env: t for t in live_targets(self.ctx)}
                self.targets = {k: v for k, v in targets.items() if not self.opts.envs or k in self.opts.envs}
        except DatabaseReplacedError:  # for good: only a new process takes the new file
            raise
        except GravenError as exc:  # the database: keep the environments known, read them again soon
            self._say(
                "error",
                f"{utc_now()} reading the live environments failed: {exc}; trying again",
                {"error": str(exc)},
            )
        return opened

    def _round(self) -> None:
        """One round: what is held, the notifier's watches, the checks due, the deliveries finished."""
        self._record_all_held()
        self._watch_targets()
        self._unwatch_gone()
        for env, full in self.schedule.due():
            if self.stop.is_set() or not self._check(env, full):
                break
        self._finish_deliveries()
        self._end_round()

    def _watch_targets(self) -> None:
        """Watch each live environment's release and PATH, again when a deployment replaced them (a
        redeploy may replace the release directory itself) or PATH is another directory now; a new
        one is checked, one that changed gets a full check."""
        notifier = self.notifier
        for env, target in self.targets.items():
            release = str(EnvLayout(Path(target.path)).release(target.digest.removeprefix("sha256:")))
            # PATH may be a symlink: the directory it leads to is watched (the notifier follows no link)
            root = os.path.realpath(target.path)
            inodes = []
            for path in (release, root):
                try:
                    inodes.append(os.stat(path).st_ino)  # a redeploy may replace the release itself
                except OSError:
                    inodes.append(0)
            watch = (release, inodes[0], root, inodes[1])
            if self.watched.get(env) != watch:
                notifier.unwatch(env)
                notifier.unwatch(env + ROOT_SUFFIX)
                notifier.watch(env, Path(release), recursive=True)
                notifier.watch(env + ROOT_SUFFIX, Path(root), recursive=False)
                if env not in self.watched:
                    self.schedule.add(env)
                else:
                    self.schedule.mark(env, full=True)
                self.watched[env] = watch
        self._warn_unwatched()

    def _warn_unwatched(self) -> None:
        """Warn of each directory the notifier could not watch: those of a release it was given, and
        those its thread found made later (a directory created there, every directory again after an
        overflow), which the user's inotify watch limit may leave unwatched as well."""
        failures: list[str] = getattr(self.notifier, "failures", [])
        while failures:
            self.ctx.reporter.warn(f"{failures.pop(0)}; periodic checks still run")

    def _unwatch_gone(self) -> None:
        """Forget the environments no longer live (nothing of them is held, healed or exported)."""
        for env in sorted(set(self.watched) - set(self.targets)):
            self.notifier.unwatch(env)
            self.notifier.unwatch(env + ROOT_SUFFIX)
            self.schedule.forget(env)
            del self.watched[env]
            self.held.forget(env)
            self.heal_after.discard(env)
            self.alerted.pop(env, None)
            self.alert_retry.pop(env, None)
            self.unchecked.pop(env, None)
            self.locked.pop(env, None)
            self.backoff.succeeded(env)
            if self.metrics is not None:
                self.metrics.forget(env)
            self._say("unwatch", f"{utc_now()} {env}: nothing is live there now; not watched", {"env": env})

    # -- a check, its alert and its heal --------------------------------------------------------------

    def _check(self, env: str, full: bool) -> bool:
        """Check ``env`` (recorded by :meth:`_record`), export and say it, then alert and heal; False
        when the watcher is stopping (the round ends here)."""
        target = self.targets[env]
        started = self.schedule.clock()
        try:
            report = check_target(
                self.ctx, self.session, target, full=full, wait=False, recorder=self._record, stop=self.stop
            )
        except ScanStopped:  # the watcher is stopping: the check is abandoned, nothing of it kept
            return False
        except EnvironmentBusyError as exc:  # a deploy or heal is changing it: look again once it is done
            self.schedule.postpone(env, 0.2)
            self._locked_out(env, exc)
            return True
        except GravenError as exc:
            self.locked.pop(env, None)
            self.schedule.checked(env, full=False, started=started)
            if self.metrics is not None:
                self.metrics.observe(
                    env, digest=target.digest, commit=target.commit, paths=None, timestamp=time.time()
                )
            self._unchecked(target, str(exc))
            self._say("error", f"{utc_now()} {env}: check failed: {exc}", {"env": env, "error": str(exc)})
            return True
        self.locked.pop(env, None)
        self.schedule.checked(env, full=full, started=started)
        if self.metrics is not None:
            self.metrics.observe(
                env,
                digest=report.digest,
                commit=report.commit,
                paths=len({d.path for d in report.differences}),
                timestamp=time.time(),
            )
        self._say("check", _check_line(report), report.to_json())
        self._checked_again(target, report.checked_at)
        if not self._alert(env, report):
            return True  # no heal either: the next check decides
        return self._heal_drift(env, report)

    def _locked_out(self, env: str, exc: EnvironmentBusyError) -> None:
        """A check of ``env`` was put off: its check lock is held (a deployment or heal at work). Said
        once, as an ``error`` line, when that has lasted :data:`LOCKED_WARN` seconds: a deployment
        whose hook hangs, or an intruder with the deployer's rights holding the lock while changing
        the release, would else keep the environment unchecked, and what drifts unsaid, silently."""
        now = self.schedule.clock()
        since, said = self.locked.setdefault(env, (now, False))
        if said or now - since < LOCKED_WARN:
            return
        self.locked[env] = (since, True)
        text = f"not checked for {now - since:.0f} s: {exc}"
        self._unchecked(self.targets[env], text)
        self._say("error", f"{utc_now()} {env}: {text}", {"env": env, "error": text})

    def _unchecked(self, target: DriftTarget, error: str) -> None:
        """``target`` cannot be checked (``error``: why): one ``check-failed`` alert while that lasts,
        not one per check; sent again only when no channel took it (after :data:`ALERT_RETRY`,
        doubling up to :data:`ALERT_RETRY_MAX`). Kept in memory: a restarted watcher sends it again."""
        failures, not_before = self.unchecked.get(target.env, (0, -math.inf))
        if self.schedule.clock() < not_before:
            return
        self.unchecked[target.env] = (failures, math.inf)
        self._send_check_alert("check-failed", target, utc_now(), error)

    def _checked_again(self, target: DriftTarget, at: str) -> None:
        """``target`` was checked (clean or drift) after it could not be: ``check-resumed``."""
        if self.unchecked.pop(target.env, None) is not None:
            self._send_check_alert("check-resumed", target, at, None)

    def _send_check_alert(self, event: str, target: DriftTarget, at: str, error: str | None) -> None:
        alert = make_check_alert(
            event,
            env=target.env,
            path=target.path,
            digest=target.digest,
            commit=target.commit,
            name=target.name,
            time=at,
            error=error,
        )
        if self.dispatcher is not None:  # first: an output gone while saying it loses no alert
            self.dispatcher.submit(alert.to_json(), context=alert)
        self._say("alert", alert.text(), alert.to_json())

    def _alert(self, env: str, report: DriftReport) -> bool:
        """Alert new drift and its resolution (said, and delivered by the dispatcher); False when what
        was alerted cannot be read (the database: decided at the next check, soon). After a delivery
        that failed, nothing is decided before its retry time (:meth:`_undelivered`)."""
        retry = self.alert_retry.get(env)
        if retry is not None and env not in self.alerted and self.schedule.clock() < retry[1]:
            return True
        before = self.alerted.get(env)
        if before is None:
            try:
                before = alerted_keys(self.ctx, env)
            except GravenError as exc:  # the database: decide on alerting at the next check
                self.schedule.postpone(env, 1.0)
                self._say(
                    "error",
                    f"{utc_now()} {env}: reading alert state failed: {exc}",
                    {"env": env, "error": str(exc)},
                )
                return False
        event, self.alerted[env] = alert_transition(before, keys_of(report.differences))
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
            if self.dispatcher is not None:  # first: an output gone while saying it loses no alert
                self.dispatcher.submit(alert.to_json(), context=alert)
            self._say("alert", alert.text(), alert.to_json())
        return True

    def _heal_drift(self, env: str, report: DriftReport) -> bool:
        """With ``--heal``, heal the drift found unless its backoff says not yet, or its checks are
        held (healed once they are recorded), or PATH/.graven is gone; False when the watcher is
        stopping. A clean check ends the backoff."""
        if report.clean:
            self.backoff.succeeded(env)
        if not self.opts.heal or report.clean:
            return True
        if self.held.count(env):
            self.heal_after.add(env)  # its `heal started` follows the drift found, held meanwhile
            return True
        if not self.backoff.allowed(env):
            return True
        relapse = self.backoff.relapsed(env, {d.path for d in report.differences})
        if relapse is not None:
            reason = _relapse_reason(relapse)
            self._say(
                "heal",
                f"{utc_now()} {env}: heal held back: {reason}; "
                f"next heal in {relapse.wait:g}s at the earliest",
                {"env": env, "ok": False, "error": reason, "retry_in": relapse.wait},
            )
            return True
        if not os.path.isdir(os.path.join(report.path, ".graven")):
            # Every deployed environment has PATH/.graven: without it the directory is gone, or the
            # file system it lies on is not mounted (an empty mount point): healing would write the
            # release wherever PATH leads now. The operator decides (graven heal).
            wait = self.backoff.failed(env)
            reason = (
                f"{report.path} holds no .graven: the environment's directory is gone, or its file "
                f"system is not mounted; not healed automatically (graven heal {env} recreates it)"
            )
            self._say(
                "heal",
                f"{utc_now()} {env}: heal failed: {reason}; next heal in {wait:g}s at the earliest",
                {"env": env, "ok": False, "error": reason, "retry_in": wait},
            )
            return True
        return self._heal(env)

    def _heal(self, env: str) -> bool:
        """Heal ``env`` and say how it went; False when the watcher is stopping (the heal abandoned)."""
        # the heal's own changes wake no check; one follows it (HEAL_GRACE after it is done)
        self.schedule.mute(env, math.inf)
        try:
            healed = heal(
                self.ctx,
                env,
                session=self.session,
                start_wait=DB_WAIT,
                stop=self.stop,
                lock_wait=HEAL_LOCK_WAIT,
            )
        except HealStopped as exc:  # the watcher is stopping: abandoned half-way, recorded
            self._say(
                "heal",
                f"{utc_now()} {env}: heal stopped: {exc}",
                {"env": env, "ok": False, "error": str(exc)},
            )
            if exc.unrecorded is not None:  # the database stayed busy: the stop goes on
                self.ctx.reporter.warn(
                    f"the stopped heal of {env} was not recorded ({exc.unrecorded}); the log "
                    "shows it started, not how it ended (the next check finds what still differs)"
                )
            return False
        except ScanStopped:  # ... before it changed anything: nothing of it kept
            return False
        except CheckLockBusyError as exc:  # a check that hangs, or a holder of the file: not soon
            self._heal_failed(env, exc)
            return True
        except EnvironmentBusyError as exc:  # a deployment holds the lock: try again soon
            self.schedule.postpone(env, _POSTPONED)
            self._say(
                "heal",
                f"{utc_now()} {env}: heal postponed: {exc}; next heal in {_POSTPONED:g}s at the earliest",
                {"env": env, "ok": False, "error": str(exc), "retry_in": _POSTPONED},
            )
            return True
        except HealNotStartedError as exc:  # the database is busy: nothing changed yet
            self.schedule.postpone(env, 1.0)
            self._cannot_record(exc)
            return True
        except GravenError as exc:
            self._heal_failed(env, exc)
            return True
        finally:
            self.schedule.mute(env, HEAL_GRACE)
        text = f"{utc_now()} {env}: healed {counted(len(healed.before), 'difference')}"
        data = healed.to_json()
        if healed.ok:
            self.backoff.healed(env, {d.path for d in healed.before})
        else:
            wait = self.backoff.failed(env)
            text += f"; {len(healed.after)} remain; next heal in {wait:g}s at the earliest"
            data["retry_in"] = wait
        self._say("heal", text, data)
        return True

    def _heal_failed(self, env: str, exc: GravenError) -> None:
        """Say a heal of ``env`` that failed (``exc``), and when the next may run (:class:`HealBackoff`)."""
        wait = self.backoff.failed(env)
        self._say(
            "heal",
            f"{utc_now()} {env}: heal failed: {exc}; next heal in {wait:g}s at the earliest",
            {"env": env, "ok": False, "error": str(exc), "retry_in": wait},
        )

    # -- recording while the database is busy ---------------------------------------------------------

    def _record(self, report: DriftReport) -> None:
        """Record a check (under its lock), or hold it while the database does not take it."""
        if not self.held.count(report.env) and not self.episode.failed:
            try:
                if not record_clean(self.ctx, report, wait=DB_WAIT):
                    record_check(self.ctx, report, wait=DB_WAIT)
            except GravenError as exc:
                self.held.add(report)
                self._cannot_record(exc)
            self._show_held(report.env)
            return
        self.held.add(report)
        self._record_held(report.env, locked=True)

    def _record_all_held(self) -> None:
        """Try again to record what is held, for each environment still live."""
        for env in self.held.envs():
            if env in self.targets:
                self._record_held(env, locked=False)

    def _record_held(self, env: str, *, locked: bool) -> None:
        """Record what is held for ``env`` (``locked``: the caller holds its check lock)."""
        held, episode = self.held, self.episode
        if not episode.failed and held.count(env):
            try:
                if locked:
                    episode.checks += held.record(self.ctx, env, wait=DB_WAIT)
                else:
                    with shared_lock(EnvLayout(Path(self.targets[env].path)).lock, env=env, wait=False):
                        episode.checks += held.record(self.ctx, env, wait=DB_WAIT)
            except EnvironmentBusyError:  # a deployment or heal at work: after it
                pass
            except GravenError as exc:
                self._cannot_record(exc)
            if not held.count(env) and env in self.heal_after:
                self.heal_after.discard(env)
                self.schedule.mark(env)  # the heal it waited for: at the next round
        self._show_held(env)

    def _cannot_record(self, exc: GravenError) -> None:
        """A write failed: none other this round; warned once while the database does not take them."""
        self.episode.failed = True
        if not self.episode.warned:
            self.episode.warned = True
            if isinstance(exc, DatabaseBusyError):
                self.ctx.reporter.warn(
                    f"database busy ({exc}); checks and alerts go on, and what they find is recorded "
                    "when it is free"
                )
            else:
                self.ctx.reporter.warn(f"cannot record drift ({exc}); checks and alerts go on, tried again")

    def _show_held(self, env: str) -> None:
        """Export how many checks and deliveries of ``env`` are held; not for an environment no longer
        watched (:meth:`_unwatch_gone` removed its series): a delivery of it recorded after that would
        bring ``graven_pending_records{env}`` back, and nothing would remove it again."""
        if self.metrics is not None and env in self.watched:
            self.metrics.held(
                env, self.held.count(env) + sum(1 for d, _ in self.unrecorded if d.context.env == env)
            )

    def _finish_deliveries(self) -> None:
        """Say the alert deliveries finished since the last round, then record them in order (each
        after the held checks of its environment: the drift found before its alert)."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        finished = [(delivery, utc_now()) for delivery in dispatcher.results()]
        self.unrecorded.extend(finished)  # all of them before any is said: an output gone loses none
        for delivery, ended in finished:
            alert: Alert = delivery.context
            outcome = "; ".join(f"{k}: {v}" for k, v in delivery.channels.items())
            self._say(
                "delivery",
                f"{ended} {alert.env}: {alert.event} alert {'sent' if delivery.ok else 'FAILED'} ({outcome})",
                {"env": alert.env, "event": alert.event, "ok": delivery.ok, "channels": delivery.channels},
            )
            if alert.event in CHECK_EVENTS:
                self._check_alert_done(alert, reached=delivery.reached)
            elif delivery.reached:
                self.alert_retry.pop(alert.env, None)
            else:
                self._undelivered(alert.env)
        unrecorded = self.unrecorded
        while unrecorded and not self.episode.failed:
            delivery, ended = unrecorded[0]
            if self.held.count(delivery.context.env):
                break  # after the checks it follows (the drift found before its alert)
            try:
                alert = delivery.context
                record_alert(
                    self.ctx,
                    alert,
                    ok=delivery.ok,
                    reached=delivery.reached,
                    channels=delivery.channels,
                    wait=DB_WAIT,
                    time=ended,
                )
            except GravenError as exc:
                self._cannot_record(exc)
                break
            unrecorded.pop(0)
            self.episode.alerts += 1
            self._show_held(delivery.context.env)

    def _check_alert_done(self, alert: Alert, *, reached: bool) -> None:
        """A ``check-failed`` alert that reached no channel is sent again by the first check after
        its retry time that still fails (30 s, doubling up to 15 min); a ``check-resumed`` one is not
        (the environment is checked: its drift, if any, is alerted as usual)."""
        state = self.unchecked.get(alert.env)
        if alert.event != "check-failed" or state is None:
            return
        if reached:
            self.unchecked[alert.env] = (0, math.inf)
            return
        failures = state[0] + 1
        delay = min(ALERT_RETRY * 2 ** (failures - 1), ALERT_RETRY_MAX)
        self.unchecked[alert.env] = (failures, self.schedule.clock() + delay)

    def _undelivered(self, env: str) -> None:
        """An alert of ``env`` reached no channel (each failed, or it was dropped from a full queue, or
        left at a stop): what it said is not taken as alerted, so the first check after its retry time that
        still finds the drift (or, for ``resolved``, none) sends it again; 30 s after the first
        failure, doubling up to 15 min while they go on. What was alerted is read again from the
        database, where a failed delivery leaves it as it was (:func:`record_alert`)."""
        failures = self.alert_retry.get(env, (0, 0.0))[0] + 1
        delay = min(ALERT_RETRY * 2 ** (failures - 1), ALERT_RETRY_MAX)
        self.alert_retry[env] = (failures, self.schedule.clock() + delay)
        self.alerted.pop(env, None)
        self.schedule.check_in(env, delay)

    def _end_round(self) -> None:
        """Say once that what was held is recorded; the next failure warns again."""
        episode = self.episode
        if episode.warned and not self.held and not self.unrecorded:
            dropped, self.held.dropped = self.held.dropped, 0
            text = f"{utc_now()} database free again: recorded {episode.checks} checks and " + (
                f"{episode.alerts} alert deliveries held meanwhile"
            )
            if dropped:
                text += f" ({dropped} older checks dropped)"
            self._say(
                "recorded",
                text,
                {"checks": episode.checks, "alerts": episode.alerts, "dropped": dropped},
            )
            episode.warned, episode.checks, episode.alerts = False, 0, 0
        episode.failed = False

    # -- the output and the stop ----------------------------------------------------------------------

    def _say(self, kind: str, text: str, data: dict[str, Any]) -> None:
        """One line of output (a --json document with ``--json``); nothing once the output is gone.
        Its error is raised at once, but at the stop kept for the end (:meth:`run`)."""
        if self.lost_output:
            return
        try:
            self.out(json.dumps({"type": kind, **data}, sort_keys=True) if self.opts.as_json else text)
        except OSError as exc:
            self.lost_output.append(exc)
            if not self.stop.is_set():
                raise

    def _shut_down(self) -> None:
        """The stop (also after an error): the alerts still queued get 5 s, then one last try to
        record what is held; what is not is said; the notifier, the metrics port, the hashing threads
        are closed."""
        self.stop.set()  # also ends the thread that waits for it
        self.notifier.close()
        if self.dispatcher is not None:
            left = self.dispatcher.close(timeout=5.0)
            if left:
                self.ctx.reporter.warn(f"{left} alerts were not delivered: the watcher stopped first")
        self.episode.failed = False  # one last try for what is held
        self._record_all_held()
        self._finish_deliveries()
        lost = sum(self.held.count(env) for env in self.held.envs()) + len(self.unrecorded)
        if lost:
            self.ctx.reporter.warn(
                f"{lost} checks and alert deliveries were not recorded: the database was busy when the "
                "watcher stopped (the next check finds what drifts again, and records it)"
            )
        if self.metrics is not None:
            self.metrics.close()
        self.session.close()
