"""graven.core.drift_order: which check of an environment is its drift state (pure)."""

from __future__ import annotations

import pytest

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
        ({"finished": T1}, NEWEST),  # the deployment that made it live, before the check
        ({"finished": T3}, GONE),  # a deployment completed after the check, even of the same release
        ({"finished": T3, "state_checked_at": T3}, GONE),
        ({"live": B}, GONE),  # another release is live
        ({"live": B, "pending": True}, NEWEST),  # a deployment of A still in progress: nothing newer
        ({"live": B, "pending": True, "state_checked_at": T3}, OLDER),
        ({"live": B, "pending": True, "finished": T3}, GONE),  # settled (or another one) since
        ({"live": None}, GONE),
    ],
)
def test_place_check(facts: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {
        "checked_at": T2,
        "digest": A,
        "state_checked_at": None,
        "live": A,
        "pending": False,
        "finished": None,
    }
    args.update(facts)
    assert place_check(**args) == expected  # type: ignore[arg-type]


def test_an_older_check_is_kept_only_for_drift_the_state_does_not_hold() -> None:
    x, y = '[["x","modified"]]', '[["y","added"]]'
    assert superseded_evidence(x, "[]")
    assert superseded_evidence(x, y)
    assert not superseded_evidence(x, x)
    assert not superseded_evidence("[]", x)  # an older clean check resolves nothing
    assert not superseded_evidence("[]", "[]")
