"""Which check of an environment its recorded drift state is: the one made last, by the check's own
time, whatever order the checks reach the database in (``graven drift`` waits for another writer,
``graven watch`` holds its checks while the database is busy). Pure: times and digests in, a decision
out. Times are RFC 3339 UTC with microseconds (``graven.service.context.utc_now``): they sort as they
compare.
"""

from __future__ import annotations

__all__ = ["GONE", "NEWEST", "OLDER", "place_check", "superseded_evidence"]

NEWEST = "newest"  # after the check the state holds: the state (an event if what drifts changed)
OLDER = "older"  # before the check the state holds: never the state (superseded_evidence: history)
GONE = "gone"  # of a release no longer live, or one a deployment may have switched since: nothing


def place_check(
    *,
    checked_at: str,
    digest: str,
    state_checked_at: str | None,
    live: str | None,
    pending: bool,
    started: str | None,
    finished: str | None,
) -> str:
    """Where a check of release ``digest`` made at ``checked_at`` stands: :data:`GONE` when a
    deployment of the environment may have changed what ``current`` points to after it, or its
    release is not ``live`` and not that of a deployment still in progress (``pending``); else
    :data:`OLDER` when the recorded state is of a check made at the same time or later
    (``state_checked_at``; empty or None: no check recorded yet); else :data:`NEWEST`.

    A deployment may have changed ``current`` after the check when it started after it
    (``started``: the latest ``started_at`` of the environment's deployments, whatever their
    result), or finished after it by its own deployer (``finished``: the latest ``finished_at`` of
    those whose deployer recorded their end; not an ``interrupted`` one, whose ``finished_at`` is
    when another command settled it; only a check made without the check lock, below, can see one
    finish that started before it). A deployment's row is written only once it passed its checks
    and its release is ready, just before its switch: one refused by policy or a trust check, one
    that failed before (or a ``--plan``) has none and supersedes nothing. One with a row counts,
    whatever became of it: its switch may have happened, even when it failed or was switched back
    (the same release live again: changed twice). The deployer holds the check lock from the time it
    records as ``started_at`` to its end, checks hold it shared: a deployment that started before
    the check was over, or its deployer dead, when the check was made; so a deployment still in
    progress at the check (``pending`` then) supersedes nothing, and neither does its settling
    later. (A check that could not open the check lock goes ahead without it.)"""
    if (started and started > checked_at) or (finished and finished > checked_at):
        return GONE
    if digest != live and not pending:
        return GONE
    if state_checked_at and state_checked_at >= checked_at:
        return OLDER
    return NEWEST


def superseded_evidence(keys: str, state_keys: str) -> bool:
    """Whether an :data:`OLDER` check is kept in the history (``superseded``): it found drift
    (``keys``: canonical JSON of its [path, kind] pairs) that the recorded state does not hold. An
    older clean check, or one that found what the state holds, adds nothing."""
    return keys not in ("[]", state_keys)
