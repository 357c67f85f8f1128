"""When ``graven watch`` checks what: notifications make an environment due at once (after a short
debounce that folds a burst of events into one check), the periodic interval is the backstop, a full
check is due every ``full_every`` seconds and after a notification overflow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ROOT_SUFFIX", "Schedule", "WatchOptions"]

ROOT_SUFFIX = "\0root"  # notifier key of an environment's own directory (current, config)
_ROOT_NAMES = frozenset({"current", "config"})


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
    thread calls :meth:`notify`, the watcher's loop the rest."""

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
            for table in (self._next, self._last_full, self._dirty):
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
                    return  # releases/, .graven/: deployments and graven's own files
                if env in self._next:
                    first = self._dirty.get(env, (now, now))[0]
                    self._dirty[env] = (first, now)
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

    def postpone(self, env: str, seconds: float) -> None:
        """Try ``env`` again in ``seconds`` (a deployment is in progress)."""
        with self._lock:
            if env in self._next:
                self._next[env] = self.clock() + seconds

    def due(self) -> list[tuple[str, bool]]:
        """The environments to check now, and whether the check must be full."""
        now = self.clock()
        out: list[tuple[str, bool]] = []
        with self._lock:
            for env, at in sorted(self._next.items()):
                dirty = self._dirty.get(env)
                settled = dirty is not None and (now - dirty[1] >= self.debounce or now - dirty[0] >= 1.0)
                if now >= at or settled:
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
            waits = [at - now for at in self._next.values()]
            waits += [max(0.0, self.debounce - (now - last)) for _, last in self._dirty.values()]
        return max(0.0, min(waits, default=self.interval))
