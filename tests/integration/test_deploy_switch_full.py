"""A switch that fails for want of space (an inode for the new ``current`` link on a full file system)
is switched back and recorded, as a failed hook is; but the error told the user to "fix the artifact
and deploy again", which no change to the artifact would do."""

from __future__ import annotations

from typing import Any

import pytest

from graven.errors import BackendError
from graven.service import deploy_release
from helpers_deploy import World


def test_a_switch_that_fails_for_a_full_disk_does_not_blame_the_artifact(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.version(1)
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    real = deploy_release.point_symlink

    def full(link: Any, target: str) -> bool:
        if str(link).endswith("/current") and v2.removeprefix("sha256:") in target:
            raise BackendError(f"cannot switch {link} to {target}: No space left on device")
        return real(link, target)

    monkeypatch.setattr(deploy_release, "point_symlink", full)
    result = world.deploy(v2, "staging")
    assert not result.ok
    assert world.live("staging") == v1
    assert "No space left on device" in result.message
    assert "fix the artifact" not in result.message
    assert result.message.endswith("deploy again once that is fixed"), result.message
