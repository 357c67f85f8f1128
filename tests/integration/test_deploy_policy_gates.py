"""``requires`` as a gate: the evidence it takes (a healthy deployment to the required environment) is
withdrawn by what happened there after it."""

from __future__ import annotations

from typing import Any

import pytest

from graven.errors import PolicyError
from graven.service import environments
from graven.service.deploy import plan_deploy, promote, rollback
from helpers_deploy import World, env_toml, staging_prod


def log_events(world: World) -> list[dict[str, object]]:
    return [e.to_json() for e, _ in world.ctx().audit.entries()]


def test_a_digest_rolled_back_in_staging_no_longer_counts_as_healthy_there(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok  # healthy in staging ...
    assert rollback(world.ctx(), "staging", world.options(reason="v2 corrupts carts")).ok  # ... undone
    # staging is held so that automation cannot put v2 back: it must not reach prod around the hold
    for attempt in (
        lambda: world.deploy(v2, "prod"),
        lambda: plan_deploy(world.ctx(), v2, "prod", world.options()),
    ):
        with pytest.raises(PolicyError, match="rolled back in staging after its healthy deployment"):
            attempt()
    assert world.live("prod") == v1
    # a break glass still can (recorded as the override it is)
    result = world.deploy(v2, "prod", override=True, reason="hotfix, staging rollback was unrelated")
    assert result.ok and result.overridden == ("staging",)
    # deployed healthy to staging again after the rollback: it counts again
    assert rollback(world.ctx(), "prod", world.options()).ok
    environments.unhold(world.ctx(), "staging")
    environments.unhold(world.ctx(), "prod")
    assert world.deploy(v2, "staging").ok
    assert world.deploy(v2, "prod").ok


def test_a_digest_whose_later_deployment_to_staging_failed_is_not_healthy_there(
    world: World, tmp_path: Any
) -> None:
    broken = tmp_path / "staging-broken"
    toml = env_toml("app", staging_prod(health=f"test ! -e {broken}"))
    v1 = world.version(1, toml)
    v2 = world.version(2, toml)
    assert world.deploy(v1, "staging").ok and world.deploy(v2, "staging").ok
    broken.touch()
    failed = world.deploy(v1, "staging")  # v1 again: its health check fails this time
    assert not failed.ok and failed.rolled_back_to == v2 and failed.rolled_back_health == "failed"
    broken.unlink()
    with pytest.raises(PolicyError, match=r"failed in staging after its healthy deployment"):
        world.deploy(v1, "prod")
    # v2's switch back failed too, but that was the environment's doing (an automatic rollback),
    # not a deployment of v2: its own healthy deployment still counts
    assert world.deploy(v2, "prod").ok
