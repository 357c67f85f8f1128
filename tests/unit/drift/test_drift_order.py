"""graven.core.drift_order: which check of an environment is its drift state (pure)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from graven.core.drift_order import GONE, NEWEST, OLDER, place_check, superseded_evidence

T1, T2, T3 = "2026-01-01T00:00:01.000000Z", "2026-01-01T00:00:02.000000Z", "2026-01-01T00:00:03.000000Z"
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({}, NEWEST),  # nothing recorded yet
        ({"state_checked_at": ""}, NEWEST),  # a state row no check wrote (an alert's)
        ({"state_checked_at": T1}, NEWEST),
        ({"state_checked_at": T2}, OLDER),  # the same check, or one made at the same time
        ({"state_checked_at": T3}, OLDER),
        ({"started": T1, "finished": T1}, NEWEST),  # the deployment that made it live, before the check
        ({"started": T3, "finished": T3}, GONE),  # one after the check, even of the same release again
        ({"started": T3, "finished": T3, "state_checked_at": T3}, GONE),
        ({"started": T3}, GONE),  # started after the check, its deployer killed (pending): it may have
        ({"finished": T3}, GONE),  # switched; one that finished after, its start unread: so may this
        # a deployer killed before the check (its row pending then), settled after it (interrupted:
        # started_at before the check, finished_at when settled, not read as finished): no switch since
        ({"started": T1}, NEWEST),
        ({"started": T1, "state_checked_at": T3}, OLDER),
        ({"live": B}, GONE),  # another release is live
        ({"live": B, "pending": True}, NEWEST),  # a deployment of A still in progress: nothing newer
        ({"live": B, "pending": True, "started": T1}, NEWEST),  # it started before the check
        ({"live": B, "pending": True, "state_checked_at": T3}, OLDER),
        ({"live": B, "pending": True, "started": T3}, GONE),  # another one started since
        ({"live": B, "pending": True, "finished": T3}, GONE),
        ({"live": None}, GONE),
        ({"live": None, "started": T1}, GONE),
    ],
)
def test_place_check(facts: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {
        "checked_at": T2,
        "digest": A,
        "state_checked_at": None,
        "live": A,
        "pending": False,
        "started": None,
        "finished": None,
    }
    args.update(facts)
    assert place_check(**args) == expected  # type: ignore[arg-type]


_times = st.integers(0, 59).map(lambda s: f"2026-01-01T00:00:{s:02d}.000000Z")
_facts = st.fixed_dictionaries(
    {
        "checked_at": _times,
        "digest": st.sampled_from([A, B]),
        "state_checked_at": st.none() | st.just("") | _times,
        "live": st.sampled_from([A, B, None]),
        "pending": st.booleans(),
        "started": st.none() | _times,
        "finished": st.none() | _times,
    }
)


@given(_facts)
def test_deployments_that_started_and_finished_by_the_check_change_nothing(facts: dict[str, object]) -> None:
    """Refused deployments, those that failed before their switch and dry runs have no row; rows that
    started (and ended, by their own deployer) by the check's time switched, if at all, before it:
    where the check stands is decided as if there were no deployment at all."""
    checked_at = str(facts["checked_at"])
    before = {
        k: v if v is None or str(v) <= checked_at else checked_at
        for k, v in facts.items()
        if k in ("started", "finished")
    }
    bare = place_check(**{**facts, "started": None, "finished": None})  # type: ignore[arg-type]
    assert place_check(**{**facts, **before}) == bare  # type: ignore[arg-type]


@given(_facts, _times)
def test_a_deployment_that_started_after_the_check_always_makes_it_moot(
    facts: dict[str, object], started: str
) -> None:
    """Whatever became of it (ok, failed, switched back, interrupted, still pending): its row was
    written just before its switch, so it may have changed what current points to."""
    assume(started > str(facts["checked_at"]))
    assert place_check(**{**facts, "started": started}) == GONE  # type: ignore[arg-type]


def test_an_older_check_is_kept_only_for_drift_the_state_does_not_hold() -> None:
    x, y = '[["x","modified"]]', '[["y","added"]]'
    assert superseded_evidence(x, "[]")
    assert superseded_evidence(x, y)
    assert not superseded_evidence(x, x)
    assert not superseded_evidence("[]", x)  # an older clean check resolves nothing
    assert not superseded_evidence("[]", "[]")
