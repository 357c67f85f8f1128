"""heal, hold, unhold and retire refuse an environment directory another user could change, as deploy
does, before the lock makes anything there. A review handed the parent of ``PATH`` to a service user,
who replaced ``PATH`` with a link to a directory of root's: deploy refused, hold, unhold and retire
went ahead, and heal refused only after its lock had made ``.graven/lock`` in root's directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graven.errors import InputError
from graven.service import environments
from graven.service.drift_heal import heal
from helpers_deploy import NOBODY, World

REFUSED = r"belongs to another user \(uid 65534; you are 0\): another user could change the environment"


def _hijack(world: World, tmp_path: Path) -> Path:
    """Give the deploy root to another user, who swaps ``staging`` for a link to ``target`` (root's)."""
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    os.chown(world.root, NOBODY, NOBODY)
    staging = world.env_dir("staging")
    staging.rename(staging.with_name("staging.real"))
    staging.symlink_to(target)
    os.lchown(staging, NOBODY, NOBODY)
    return target


@pytest.mark.needs_root("hands a directory to another user")
def test_heal_hold_and_retire_refuse_before_the_lock_makes_anything(world: World, tmp_path: Path) -> None:
    assert world.deploy(world.build(), "staging").ok
    target = _hijack(world, tmp_path)
    with pytest.raises(InputError, match=REFUSED):
        heal(world.ctx(), "staging")
    assert list(target.iterdir()) == []  # no lock files of root's where the link points
    with pytest.raises(InputError, match=REFUSED):
        environments.hold(world.ctx(), "staging", "x")
    with pytest.raises(InputError, match=REFUSED):
        environments.retire(world.ctx(), "staging", "x")
    assert list(target.iterdir()) == []
    with world.ctx().db.connect() as conn:
        state = environments.load_state(conn, "staging")
    assert state is not None and not state.held  # neither held nor retired


@pytest.mark.needs_root("hands a directory to another user")
def test_unhold_refuses_as_hold_does(world: World, tmp_path: Path) -> None:
    assert world.deploy(world.build(), "staging").ok
    assert environments.hold(world.ctx(), "staging", "x").changed
    _hijack(world, tmp_path)
    with pytest.raises(InputError, match=REFUSED):
        environments.unhold(world.ctx(), "staging", "x")
    with world.ctx().db.connect() as conn:
        state = environments.load_state(conn, "staging")
    assert state is not None and state.held
