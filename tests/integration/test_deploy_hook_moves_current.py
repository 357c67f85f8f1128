"""A failing activate or health hook that also moves ``current`` (``ln -sfn``, a rename): the failure's
switch back (or, for a rollback or a redeploy of the live digest, the release that stays) is where
``current`` ends, whatever the hook did to it, as when the hooks passed; and the message says so."""

from __future__ import annotations

from pathlib import Path

from graven.service import environments
from helpers_deploy import World, env_toml, staging_prod

MOVED = "was changed while the hooks ran"


def _meddle(marker: Path, where: str, then: str = "exit 3") -> str:
    """A hook that, once ``marker`` exists, points current at ``where`` and ends with ``then``."""
    return f'if [ -f {marker} ]; then ln -sfn "{where}" current.x && mv -T current.x current; {then}; fi'


def _recorded_live(world: World, env: str) -> str | None:
    return {s.env: s for s in environments.status(world.ctx())}[env].live


def test_a_failed_deploy_whose_hook_moved_current_is_switched_back_and_says_so(
    world: World, tmp_path: Path
) -> None:
    marker = tmp_path / "meddle"
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod(activate=_meddle(marker, "/nowhere"))))
    marker.touch()
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1, result
    assert "exit 3" in result.message and MOVED in result.message, result.message
    assert world.live("staging") == _recorded_live(world, "staging") == v1
    failed = environments.history(world.ctx(), "staging")[-2]
    assert failed["result"] == "failed" and MOVED in str(failed["detail"]), failed


def test_a_failed_rollback_whose_hook_moved_current_leaves_it_on_the_rollback(
    world: World, tmp_path: Path
) -> None:
    """A failed rollback stays live and held: current is put back on it, not left where the hook
    pointed it (the release rolled away from), so that the records and the disk agree."""
    from graven.service.deploy import rollback

    marker = tmp_path / "meddle"
    v1 = world.version(
        1, env_toml("app", staging_prod(activate=_meddle(marker, "releases/${GRAVEN_PREVIOUS#sha256:}")))
    )
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod()))
    assert world.deploy(v2, "staging").ok
    marker.touch()
    result = rollback(world.ctx(), "staging", world.options(), to=v1)
    assert not result.ok and "exit 3" in result.message and MOVED in result.message, result.message
    assert world.live("staging") == _recorded_live(world, "staging") == v1


def test_a_failed_redeploy_of_the_live_digest_whose_hook_moved_current_leaves_it_live(
    world: World, tmp_path: Path
) -> None:
    marker = tmp_path / "meddle"
    v1 = world.version(
        1, env_toml("app", staging_prod(health=_meddle(marker, "/nowhere", "exit 4") + "; true"))
    )
    assert world.deploy(v1, "staging").ok
    marker.touch()
    result = world.deploy(v1, "staging")
    assert not result.ok and "exit 4" in result.message and MOVED in result.message, result.message
    assert world.live("staging") == _recorded_live(world, "staging") == v1


def test_a_hook_that_made_current_a_file_fails_and_is_switched_back(world: World, tmp_path: Path) -> None:
    """Not a symlink any more: the deployment fails (it used to stop with its pending row, current a
    file) and the switch back makes current a link to the previous release again."""
    marker = tmp_path / "meddle"
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    activate = f"if [ -f {marker} ]; then rm current && echo x > current; fi"
    v2 = world.version(2, env_toml("app", staging_prod(activate=activate, health="true")))
    marker.touch()
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1 and MOVED in result.message, result.message
    assert world.live("staging") == _recorded_live(world, "staging") == v1
