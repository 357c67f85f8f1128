"""``graven status`` as an operator reads it during an incident: why an environment is held, and a
deployment recorded pending (at work, or its deployer killed) told as such."""

from __future__ import annotations

from typing import Any

from helpers_deploy import World


def test_status_shows_why_an_environment_is_held(world: World, run_cli: Any) -> None:
    """The hold's reason is what the operator needs before unholding: the table shows it, not only
    --json."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    code, _, err = run_cli("hold", "staging", "--reason", "investigating INC-43")
    assert code == 0, err
    code, out, err = run_cli("status")
    assert code == 0, err
    assert "investigating INC-43" in out, out
    assert f"yes ({v1[7:19]}: investigating INC-43)" in out, out
