"""Start the forked walker of ``graven drift --full`` before the check imports its own code.

A full check of django-sized release is ~0.1 s of walking and hashing split between two processes;
the command's imports, its database reads and the manifest come to ~40 ms more before the check
would fork. Here, right after the live environment is read from the database, the check lock is taken
(shared, as the check itself takes it), the file system's clock is read (the check's "recording
time": what the child sees is never newer than it) and the child starts on its part of the release,
where the last full check split it. The check, holding the lock itself by then, takes the walker
(:meth:`EarlyWalks.take`) for that release and the early lock is released; when anything changed
meanwhile, the walker is stopped unused and the check walks as without it.

Only the first environment gets an early walker (two children at once would share the same two
cores), only where forking is safe (:func:`graven.runtime.can_fork`), and only when a plan of the
split exists for the live release and no deployment is pending.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from graven.deploy.layout import EnvLayout
from graven.deploy.lock import shared_lock
from graven.deploy.statdb import recorded_deployer
from graven.drift.cache import fs_clock
from graven.drift.walk import ForkedWalk, Split, load_split, split_path
from graven.errors import GravenError
from graven.runtime import can_fork
from graven.service.context import Context
from graven.service.drift_live import live_targets

__all__ = ["EarlyWalk", "EarlyWalks", "start_early"]


class EarlyWalk:
    """A walker started early: its child, the release it walks, the clock read before it started and
    the split it follows."""

    __slots__ = ("child", "digest_hex", "now_ns", "split")

    def __init__(self, child: ForkedWalk, digest_hex: str, now_ns: int | None, split: Split) -> None:
        self.child = child
        self.digest_hex = digest_hex
        self.now_ns = now_ns
        self.split = split


class EarlyWalks:
    """The walkers started early (by environment) and the check locks held for them until the check
    takes them; closing stops every walker not taken and releases the locks."""

    def __init__(self) -> None:
        self._walks: dict[str, EarlyWalk] = {}
        self._locks: dict[str, ExitStack] = {}

    @property
    def started(self) -> dict[str, int]:
        """The environments with a walker not taken yet, and the walker's process id."""
        return {env: walk.child.pid for env, walk in self._walks.items()}

    def take(self, env: str, digest_hex: str) -> EarlyWalk | None:
        """The walker of ``env`` when it walks release ``digest_hex`` (once); else None. The caller holds
        the check lock of ``env`` itself by now: the one taken for the walker is released."""
        walk = self._walks.pop(env, None)
        try:
            if walk is not None and walk.digest_hex != digest_hex:
                walk.child.cancel()  # another release is checked now: stopped, never used
                return None
            return walk
        finally:
            lock = self._locks.pop(env, None)
            if lock is not None:
                lock.close()

    def start(
        self,
        env: str,
        layout: EnvLayout,
        digest_hex: str,
        split: Split,
        key: bytes,
        *,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """Hold the check lock of ``env`` shared (until :meth:`close`), read the clock, fork the walker
        of ``split``'s second part of the release ``digest_hex`` (holding its paths to the owner and
        group the stat table, authenticated under ``key``, records for the release). ``warn``: told
        whom the lock waits for, when a deployer or healer holds it."""
        locks = self._locks.setdefault(env, ExitStack())
        locks.enter_context(shared_lock(layout.lock, env=env, wait=True, warn=warn))
        now_ns = fs_clock(layout.meta / "drift", depth=2)
        base = str(layout.release(digest_hex))
        owner, group = recorded_deployer(layout.stat_file, key, digest_hex)
        child = ForkedWalk(
            base, split[1], frozenset(split[0]) | frozenset(split[1]), owner=owner, group=group
        )
        self._walks[env] = EarlyWalk(child, digest_hex, now_ns, split)

    def close(self) -> None:
        """Stop the walkers not taken, release the locks."""
        try:
            while self._walks:
                self._walks.popitem()[1].child.cancel()
        finally:
            while self._locks:
                self._locks.popitem()[1].close()

    def __enter__(self) -> EarlyWalks:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def start_early(ctx: Context, envs: Sequence[str] = ()) -> EarlyWalks:
    """Start the walker of the first environment ``envs`` names (every live one when empty) as
    described above; an empty set when that cannot be done (the check then works as usual, and says
    what is wrong, if anything)."""
    early = EarlyWalks()
    if not can_fork():
        return early
    try:
        targets = live_targets(ctx, envs)
    except GravenError:
        return early
    if not targets or targets[0].pending is not None:
        return early
    target = targets[0]
    layout = EnvLayout(Path(target.path))
    digest_hex = target.digest.removeprefix("sha256:")
    split = load_split(split_path(layout.meta), digest_hex)
    if split is None:
        return early
    try:  # a real directory at PATH/releases and at the release (the check names anything else)
        if not all(stat.S_ISDIR(os.lstat(p).st_mode) for p in (layout.releases, layout.release(digest_hex))):
            return early
    except OSError:
        return early
    try:
        key = ctx.record_key  # the stat table's, which records who deployed the release
    except GravenError:
        return early
    try:
        early.start(target.env, layout, digest_hex, split, key, warn=ctx.reporter.warn)
    except OSError:  # no pipe or process to spare: the check forks (or not) as usual
        early.close()
        return EarlyWalks()
    except BaseException:
        early.close()
        raise
    return early
