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
GONE = "gone"  # of a release no longer live, or replaced by a deployment completed since: nothing


def place_check(
    *,
    checked_at: str,
    digest: str,
    state_checked_at: str | None,
    live: str | None,
    pending: bool,
    finished: str | None,
) -> str:
    """Where a check of release ``digest`` made at ``checked_at`` stands: :data:`GONE` when a
    deployment of the environment completed after it (``finished``: the latest ``finished_at`` of
    its deployments, whatever their result; even one that made the same release live again) or its
    release is not ``live`` and not that of a deployment still in progress (``pending``); else
    :data:`OLDER` when the recorded state is of a check made at the same time or later
    (``state_checked_at``; empty or None: no check recorded yet); else :data:`NEWEST`. A deployment
    that is still in progress supersedes nothing."""
    if finished and finished > checked_at:
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
