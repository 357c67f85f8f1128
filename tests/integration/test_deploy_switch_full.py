"""A switch that fails for want of space (an inode for the new ``current`` link on a full file system)
is switched back and recorded, as a failed hook is; but the error told the user to "fix the artifact
and deploy again", which no change to the artifact would do."""

from __future__ import annotations

import pytest

from helpers_deploy import World, fail_switch_to


def test_a_switch_that_fails_for_a_full_disk_does_not_blame_the_artifact(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.version(1)
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    fail_switch_to(monkeypatch, v2)
    result = world.deploy(v2, "staging")
    assert not result.ok
    assert world.live("staging") == v1
    assert "No space left on device" in result.message
    assert "fix the artifact" not in result.message
    assert result.message.endswith("deploy again once that is fixed"), result.message
