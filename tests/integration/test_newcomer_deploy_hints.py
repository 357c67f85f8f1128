"""What a newcomer gets wrong in a deployment's hooks, found by adopting graven for a small WSGI app:
a hook committed without its executable bit, a release file named from the wrong directory and a
health check that hangs each say how to fix them."""

from __future__ import annotations

from helpers_deploy import World, env_toml, staging_prod


def _hooked(**settings: object) -> str:
    return env_toml("app", staging_prod(**settings))


def test_a_hook_committed_without_its_executable_bit_says_how_to_fix_it(world: World) -> None:
    world.commit({"app/start.sh": "#!/bin/sh\nexit 0\n"})  # 0644: not under bin/
    result = world.deploy(world.version(1, _hooked(activate="current/app/start.sh")), "staging")
    assert not result.ok
    assert "exit 126" in result.message and "git update-index --chmod=+x" in result.message


def test_a_hook_that_names_a_release_file_from_the_wrong_directory_says_where_it_runs(world: World) -> None:
    result = world.deploy(world.version(1, _hooked(activate="bin/run")), "staging")
    assert not result.ok
    assert "exit 127" in result.message
    assert f"activate runs in {world.root / 'staging'}" in result.message
    assert "below current/" in result.message


def test_a_health_check_that_hangs_names_its_attempts_and_its_timeout_setting(world: World) -> None:
    hangs = _hooked(health="sleep 5", health_timeout=0.3, health_retries=1)
    result = world.deploy(world.version(1, hangs), "staging")
    assert not result.ok
    assert "timed out after 0.3s, the last of 2 attempts" in result.message
    assert "health_timeout in [env.staging]" in result.message
