"""``requires`` as a gate: the evidence it takes (a healthy deployment to the required environment) is
withdrawn by what happened there after it, and an artifact's own graven.toml cannot drop the gate
of the environment it goes to."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import ProgressRecorder
from graven.errors import PolicyError
from graven.service import environments
from graven.service.deploy import deploy, plan_deploy, promote, rollback
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


def _lax(n: int) -> str:
    envs = staging_prod()
    del envs["prod"]["requires"]
    return env_toml("app", envs) + f"# {n}\n"


def test_a_new_graven_toml_cannot_drop_the_gate_of_the_live_deployment(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    v2 = world.version(2, _lax(2))  # code and a graven.toml whose prod requires nothing
    for attempt in (
        lambda: world.deploy(v2, "prod"),
        lambda: plan_deploy(world.ctx(), v2, "prod", world.options()),
    ):
        with pytest.raises(PolicyError, match=r"never deployed healthy to staging, which prod requires"):
            attempt()
    assert world.live("prod") == v1
    # retiring prod does not forget its gate either
    environments.retire(world.ctx(), "prod", "moving hosts")
    with pytest.raises(PolicyError, match="which prod requires"):
        world.deploy(v2, "prod")
    # dropping the gate takes one override, recorded as such
    result = world.deploy(v2, "prod", override=True, reason="staging decommissioned")
    assert result.ok and result.overridden == ("staging",)
    events = [(e["event"], e["env"], e["reason"]) for e in log_events(world)]
    assert ("override", "prod", "requires staging bypassed: staging decommissioned") in events
    # from then on what is live in prod requires nothing
    v3 = world.version(3, _lax(3))
    assert world.deploy(v3, "prod").ok


def test_the_live_gate_also_needs_the_graven_toml_to_have_run_there(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    v2 = world.version(2, _lax(2))
    assert world.deploy(v2, "staging").ok  # healthy in staging: the gate is met
    result = promote(world.ctx(), "staging", "prod", world.options())
    assert result.ok and result.overridden == ()


def test_a_killed_override_of_the_live_gate_is_logged_naming_it(world: World) -> None:
    from test_deploy_policy_races import _killed_after_the_switch

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    v2 = world.version(2, _lax(2))
    _killed_after_the_switch(world, v2, "prod", override=True, reason="staging decommissioned")
    settler = world.ctx()
    environments.hold(settler, "prod", "look at it")  # settles the dead deployer's row
    overrides = [e for e, _ in world.ctx().audit.entries() if e.env == "prod" and e.event == "override"]
    assert [(e.artifact, e.result) for e in overrides] == [(v2, "interrupted")]
    actor = settler.audit.actor
    assert overrides[0].reason == f"requires staging bypassed: staging decommissioned (started by {actor})"


def test_an_override_that_lowers_the_live_gate_is_not_told_the_gate_still_applies(world: World) -> None:
    """The warning about a dropped gate said "that still applies (lowering the gate takes
    --override-policy ...)" to the very deployment that passed --override-policy and lowered it."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    v2 = world.version(2, _lax(2))
    said: list[str] = []
    # without the override, the warning says the gate still applies (and the policy refuses)
    with pytest.raises(PolicyError, match="which prod requires"):
        deploy(world.ctx(ProgressRecorder(said)), v2, "prod", world.options())
    assert any("still applies" in line for line in said), said
    said.clear()
    options = world.options(override=True, reason="staging decommissioned")
    result = deploy(world.ctx(ProgressRecorder(said)), v2, "prod", options)
    assert result.ok and result.overridden == ("staging",)
    gate = [line for line in said if "does not make prod require staging" in line]
    assert gate, said
    assert all("still applies" not in line for line in gate), gate
    assert "--override-policy lowers it" in gate[0], gate


def test_a_rollback_to_a_release_from_before_the_gate_does_not_lower_it(world: World) -> None:
    """A rollback checks no ``requires`` (it returns to a known digest); taken as the live gate, a
    rollback of prod to a release whose graven.toml had no gate, then an unhold, let the next commit
    that drops ``requires`` go straight to prod, with no override. The gate is a deployment's or a
    promotion's, not a rollback's."""
    v0 = world.version(2, _lax(0))
    assert world.deploy(v0, "prod").ok  # before prod had a gate
    v1 = world.version(3, env_toml("app", staging_prod()) + "# 3\n")  # prod requires staging
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    assert rollback(world.ctx(), "prod", world.options(), to=v0).ok
    environments.unhold(world.ctx(), "prod", "rolled back for the night")
    v2 = world.version(4, _lax(4))
    with pytest.raises(PolicyError, match="which prod requires"):
        world.deploy(v2, "prod")
    assert world.live("prod") == v0
