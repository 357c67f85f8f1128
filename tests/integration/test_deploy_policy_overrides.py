"""Break glass, reviewed: every rule ``--override-policy`` bypasses is recorded as an override (the
deployment's ``override`` flag and an ``override`` audit entry naming who and why)."""

from __future__ import annotations

from pathlib import Path

import pytest

from graven.errors import PolicyError
from graven.service import environments
from helpers_deploy import World, env_toml


def _toml(marker: Path, tag: str, envs: dict[str, dict[str, object]]) -> str:
    """graven.toml outside the artifact whose activate appends ``tag-ENV`` to ``marker``."""
    full = {name: {"path": name, "activate": f"echo {tag}-$GRAVEN_ENV >> {marker}", **extra}
            for name, extra in envs.items()}  # fmt: skip
    return env_toml("app", full).replace('name = "app"\n', 'name = "app"\ninclude = ["app/**"]\n', 1)


def test_an_override_of_the_untested_graven_toml_rule_is_recorded(world: World, tmp_path: Path) -> None:
    """The digest went healthy to staging with graven.toml a; b (same digest, other prod hooks) never
    ran there. Without the override prod refuses b; with it, b's hooks run in prod: that bypass is an
    override like any other, not a plain deploy."""
    marker = tmp_path / "ran"
    envs: dict[str, dict[str, object]] = {"staging": {}, "qa": {}, "prod": {"requires": ["staging", "qa"]}}
    world.commit({}, _toml(marker, "a", envs))
    digest = world.build()
    assert world.deploy(digest, "qa").ok
    world.commit({}, _toml(marker, "b", envs))
    assert world.build() == digest
    assert world.deploy(digest, "staging").ok  # b ran in staging only, a in qa only
    with pytest.raises(PolicyError, match="never ran healthy in qa"):
        world.deploy(digest, "prod")
    result = world.deploy(digest, "prod", override=True, reason="the new hooks, on purpose")
    assert result.ok and marker.read_text().split()[-1] == "b-prod"
    assert result.overridden == ("qa",)
    assert environments.history(world.ctx(), "prod")[-1]["override"] is True
    overrides = [e.to_json() for e, _ in world.ctx().audit.entries() if e.event == "override"]
    assert len(overrides) == 1
    assert overrides[0]["env"] == "prod" and "the new hooks, on purpose" in str(overrides[0]["reason"])
    assert "qa" in str(overrides[0]["reason"])
