"""PATH/.graven/witness: a home restored from an older backup, a copy of a home, or another home must
not change an environment that a newer state of the log changed last (a review restored homes and
deploy roots the way teams do)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graven.deploy.layout import EnvLayout
from graven.errors import IntegrityError
from graven.service.deploy_plan import plan_deploy
from graven.service.drift_heal import heal
from graven.service.witness import Witness, parse_witness, witness_path
from helpers_deploy import World, env_toml, make_world, staging_prod
from helpers_repo import run_cli


def _copy_home(world: World, dest: Path) -> Path:
    world.close()  # every connection closed: the database is whole in graven.db
    shutil.copytree(world.home, dest, symlinks=True)
    return dest


def _witness(world: World, env: str) -> Witness:
    found = parse_witness(witness_path(EnvLayout(world.env_dir(env))).read_bytes())
    assert found is not None
    return found


def test_each_change_leaves_the_log_s_head_as_the_witness(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    first = _witness(world, "staging")
    with world.ctx().db.connect() as conn:
        origin = conn.execute("SELECT value FROM graven_meta WHERE \"key\" = 'log_origin'").scalar_one()
        size, root = conn.execute("SELECT size, root FROM log_checkpoints ORDER BY size DESC LIMIT 1").one()
    assert first == Witness(str(origin), int(size), str(root))
    assert world.deploy(world.version(2), "staging").ok
    assert _witness(world, "staging").size > first.size


def test_a_home_restored_from_an_older_backup_refuses_to_deploy_or_heal(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review: with the whole home restored, the log verified, a digest rejected after the backup
    deployed again, and heal and watch --heal switched the environments back to the backup's state."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    backup = _copy_home(world, tmp_path / "backup")
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    world.close()
    shutil.rmtree(world.home)
    shutil.copytree(backup, world.home, symlinks=True)

    with pytest.raises(IntegrityError, match="restored from an older backup"):
        world.deploy(v1, "staging")
    with pytest.raises(IntegrityError, match="restored from an older backup"):  # --plan says so too
        plan_deploy(world.ctx(), v1, "staging", world.options())
    with pytest.raises(IntegrityError, match="restored from an older backup"):
        heal(world.ctx(), "staging")
    assert world.live("staging") == v2  # nothing was switched back
    code, _, err = run_cli(capsys, "deploy", v1, "staging", "--root", str(world.root))
    assert code == 1 and "restored from an older backup" in err and err.count("\n") == 1, err
    assert "remove " + str(witness_path(EnvLayout(world.env_dir("staging")))) in err

    witness_path(EnvLayout(world.env_dir("staging"))).unlink()  # on purpose: go on from the backup
    assert world.deploy(v1, "staging").ok
    assert world.live("staging") == v1


def test_a_copy_of_a_home_that_ran_on_is_a_fork(world: World, tmp_path: Path) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    other = World(home=_copy_home(world, tmp_path / "copy"), repo=world.repo, root=world.root)
    try:
        v2 = other.version(2)
        assert other.deploy(v2, "staging").ok
        seen = _witness(other, "staging")
    finally:
        other.close()
    n = 3
    while True:  # the original's own log grows past the copy's entry: same origin, other content
        with world.ctx().db.connect() as conn:
            size = conn.execute("SELECT max(size) FROM log_checkpoints").scalar_one()
        if size >= seen.size:
            break
        world.version(n)
        n += 1
    with pytest.raises(IntegrityError, match="a copy of this home ran on elsewhere"):
        world.deploy(v1, "staging")
    assert world.live("staging") == v2


def test_another_home_refuses_an_environment_this_one_changed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    world.close()
    (tmp_path / "other").mkdir()
    other = make_world(tmp_path / "other", monkeypatch)
    try:
        other.root = world.root
        digest = other.build()
        with pytest.raises(IntegrityError, match="last changed by another graven home"):
            other.deploy(digest, "staging")
    finally:
        other.close()
    assert world.live("staging") == v1


def test_a_damaged_witness_is_refused_and_named(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    path = witness_path(EnvLayout(world.env_dir("staging")))
    path.write_text("junk\n")
    with pytest.raises(IntegrityError, match=f"{path} is damaged"):
        world.deploy(world.version(2), "staging")
    assert world.live("staging") == v1


def test_a_witness_past_the_largest_log_size_is_damaged_not_a_traceback(world: World) -> None:
    """A size of 19 digits above 2**63-1 reached the database's query (SQLite: OverflowError)."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    path = witness_path(EnvLayout(world.env_dir("staging")))
    seen = _witness(world, "staging")
    path.write_bytes(Witness(seen.origin, 2**63, seen.root).to_bytes())
    with pytest.raises(IntegrityError, match=f"{path} is damaged"):
        world.deploy(world.version(2), "staging")
    with pytest.raises(IntegrityError, match=f"{path} is damaged"):
        heal(world.ctx(), "staging")
    assert world.live("staging") == v1


def test_a_rolled_back_database_is_refused_before_the_switch_and_the_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review: with only graven.db restored, a deploy switched and ran activate (and a health
    check that runs the release's code) before its record failed, with a "free space" hint."""
    marker = tmp_path / "activated"
    envs = staging_prod()
    envs["staging"]["activate"] = f"touch {marker}"
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    try:
        v1 = world.build()
        world.close()
        saved = (world.home / "graven.db").read_bytes()
        assert world.deploy(v1, "staging").ok
        assert marker.exists()
        marker.unlink()
        world.close()
        for extra in ("graven.db-wal", "graven.db-shm"):
            (world.home / extra).unlink(missing_ok=True)
        (world.home / "graven.db").write_bytes(saved)
        with pytest.raises(IntegrityError, match="was rolled back"):
            world.deploy(v1, "staging")
        assert not marker.exists()
    finally:
        world.close()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"graven.witness/v1\n",
        b"graven.witness/v2\no\n1\n" + b"a" * 64 + b"\n",
        b"graven.witness/v1\no\n-1\n" + b"a" * 64 + b"\n",
        b"graven.witness/v1\no\n1\n" + b"A" * 64 + b"\n",
        b"graven.witness/v1\no\n1\n" + b"a" * 64,
        b"graven.witness/v1\n\n1\n" + b"a" * 64 + b"\n",
        b"graven.witness/v1\no\xff\n1\n" + b"a" * 64 + b"\n",
        b"graven.witness/v1\no\n\xd9\xa1\n" + b"a" * 64 + b"\n",  # a non-ASCII digit
        b"graven.witness/v1\no\n9223372036854775808\n" + b"a" * 64 + b"\n",  # past 2**63-1
        b"graven.witness/v1\no\n0\n" + b"a" * 64 + b"\n",  # no change is recorded by an empty log
        b"graven.witness/v1\no\n012\n" + b"a" * 64 + b"\n",
    ],
)
def test_parse_witness_refuses_what_graven_never_writes(data: bytes) -> None:
    assert parse_witness(data) is None


def test_parse_witness_round_trips() -> None:
    witness = Witness("graven.invalid/log/x", 12, "ab" * 32)
    assert parse_witness(witness.to_bytes()) == witness
