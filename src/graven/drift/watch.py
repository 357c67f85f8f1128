"""When ``graven watch`` checks what: notifications make an environment due at once (after a short
debounce that folds a burst of events into one check), the periodic interval is the backstop, a full
check is due every ``full_every`` seconds and after a notification overflow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ROOT_SUFFIX", "Schedule", "WatchOptions"]

ROOT_SUFFIX = "\0root"  # notifier key of an environment's own directory (current, config, releases)
# what is checked in it: a deployment writes inside releases/ (not watched there) and .graven/, never
# PATH/releases itself, which only the first deployment makes: a change of it is a link put there
_ROOT_NAMES = frozenset({"current", "config", "releases"})


@dataclass(frozen=True)
class WatchOptions:
    """``graven watch`` options."""

    envs: tuple[str, ...] = ()
    interval: float = 60.0
    full_every: float = 86400.0
    alert_command: str | None = None
    webhook: str | None = None
    heal: bool = False
    metrics_port: int | None = None
    as_json: bool = False
    debounce: float = 0.05
    webhook_retries: int = 4
    webhook_backoff: float = 0.5


class Schedule:
    """Per environment: when the next check is due, whether it must be full. Thread-safe: the notifier
    thread calls :meth:`notify`, the watcher's loop the rest.

    An environment is due at its periodic time, or once a burst of notifications settled (50 ms of
    quiet, at most 1 s after the first); never while it is postponed (:meth:`postpone`: a deployer
    holds its lock), and notifications are dropped while it is muted (:meth:`mute`: graven itself is
    changing it)."""

    def __init__(
        self,
        *,
        interval: float,
        full_every: float,
        debounce: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.full_every = full_every
        self.debounce = debounce
        self.clock = clock
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._last_full: dict[str, float] = {}
        self._dirty: dict[str, tuple[float, float]] = {}  # env -> (first event, last event)
        self._force_full: set[str] = set()
        self._hold: dict[str, float] = {}  # env -> not checked before this time (postponed)
        self._muted: dict[str, float] = {}  # env -> its notifications are dropped until this time
        self.events = 0
        self.overflows = 0

    def add(self, env: str) -> None:
        """Start scheduling ``env``: checked at once, fully (nothing was verified by this watcher)."""
        with self._lock:
            self._next[env] = self.clock()
            self._force_full.add(env)
        self.wake.set()

    def forget(self, env: str) -> None:
        """Stop scheduling ``env``."""
        with self._lock:
            for table in (self._next, self._last_full, self._dirty, self._hold, self._muted):
                table.pop(env, None)
            self._force_full.discard(env)

    def notify(self, key: str | None, overflow: bool, name: str | None = None) -> None:
        """A notifier callback: ``key`` changed (``name``: which entry of an environment directory), or
        events were lost (``overflow``: every environment gets a full check)."""
        now = self.clock()
        with self._lock:
            self.events += 1
            if overflow:
                self.overflows += 1
                for env in self._next:
                    self._force_full.add(env)
                    self._dirty[env] = (now, now)
            elif key is not None:
                env = key.removesuffix(ROOT_SUFFIX)
                if key.endswith(ROOT_SUFFIX) and name not in _ROOT_NAMES:
                    return  # .graven/ and the like: graven's own files
                if now < self._muted.get(env, -1e18):
                    return  # graven's own heal at work (a check follows it: see mute)
                if env in self._next:
                    first = self._dirty.get(env, (now, now))[0]
                    self._dirty[env] = (first, now)
                if now < self._hold.get(env, -1e18):
                    return  # postponed: due when the wait ends (timeout() says when), not before
        self.wake.set()

    def mark(self, env: str, *, full: bool = False) -> None:
        """Check ``env`` again as soon as possible."""
        now = self.clock()
        with self._lock:
            if env in self._next:
                self._dirty[env] = (now - self.debounce, now - self.debounce)
                if full:
                    self._force_full.add(env)
        self.wake.set()

    def mute(self, env: str, seconds: float) -> None:
        """Drop ``env``'s notifications for ``seconds`` from now (graven's own changes: a heal, whose
        events reach the notifier a little after it is done) and check it when that ends: what changed
        in the meantime is seen by that check. A later call replaces the time (``math.inf`` while the
        heal runs, then a short grace once it is done)."""
        now = self.clock()
        with self._lock:
            if env in self._next:
                until = now + seconds
                self._muted[env] = until
                self._dirty.pop(env, None)
                self._next[env] = min(self._next[env], until)
        self.wake.set()

    def postpone(self, env: str, seconds: float) -> None:
        """Do not check ``env`` for ``seconds`` (a deployment is in progress), then try again: what it
        is due for (a notification, the periodic check) stays due."""
        now = self.clock()
        with self._lock:
            if env in self._next:
                self._hold[env] = now + seconds
                self._next[env] = min(self._next[env], now + seconds)

    def check_in(self, env: str, seconds: float) -> None:
        """Check ``env`` in ``seconds`` at the latest (an alert that was not delivered is sent again
        after the check then); unlike :meth:`postpone`, nothing that is due sooner waits for it."""
        now = self.clock()
        with self._lock:
            if env in self._next:
                self._next[env] = min(self._next[env], now + seconds)
        self.wake.set()

    def _ready_at(self, env: str) -> float:
        at = self._next[env]
        dirty = self._dirty.get(env)
        if dirty is not None:
            at = min(at, dirty[1] + self.debounce, dirty[0] + 1.0)
        return max(at, self._hold.get(env, at))

    def due(self) -> list[tuple[str, bool]]:
        """The environments to check now, and whether the check must be full."""
        now = self.clock()
        out: list[tuple[str, bool]] = []
        with self._lock:
            for env in sorted(self._next):
                if now >= self._ready_at(env):
                    full = env in self._force_full or now - self._last_full.get(env, -1e18) >= self.full_every
                    out.append((env, full))
        return out

    def checked(self, env: str, *, full: bool, started: float) -> None:
        """``env`` was checked (the check began at ``started``): events before it are covered."""
        now = self.clock()
        with self._lock:
            if env not in self._next:
                return
            self._next[env] = now + self.interval
            self._hold.pop(env, None)
            if full:
                self._last_full[env] = started
                self._force_full.discard(env)
            dirty = self._dirty.get(env)
            if dirty is not None and dirty[1] < started:
                del self._dirty[env]

    def timeout(self) -> float:
        """Seconds until something is due (at most the interval)."""
        now = self.clock()
        with self._lock:
            waits = [self._ready_at(env) - now for env in self._next]
        return max(0.0, min(waits, default=self.interval))
