"""Two reviewed deployment bugs: a rollback to a release on disk whose root directory lost its mode, and
``deploy --plan`` agreeing with the deployment (object hashes, link and copy counts)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from graven.deploy.materialize import DIR_MODE
from graven.errors import IntegrityError
from graven.model.digest import sha256_digest
from graven.service.deploy_plan import DeployPlan, plan_deploy
from graven.store.local import LOOSE_THRESHOLD, LocalStore
from helpers_deploy import World, tree_problems
from helpers_repo import run_cli


def plan(world: World, digest: str, env: str = "staging") -> DeployPlan:
    """``deploy --plan`` in-process."""
    return plan_deploy(world.ctx(), digest, env, world.options())


def release_dir(world: World, digest: str, env: str = "staging") -> Path:
    return world.env_dir(env) / "releases" / digest.removeprefix("sha256:")


def flip(path: Path, offset: int) -> None:
    """Damage one byte of a (read-only) store file."""
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))


def drift(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = run_cli(capsys, "drift", "--json", *args)
    return code, json.loads(out)


# -- 1. a release on disk whose root directory changed mode ---------------------------------------------


def test_rollback_rebuilds_a_release_whose_root_directory_is_writable(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(world.root)
    f1 = world.build()
    assert run_cli(capsys, "deploy", f1, "staging", "--root", root)[0] == 0
    f2 = world.version(2)
    assert run_cli(capsys, "deploy", f2, "staging", "--root", root)[0] == 0
    old = release_dir(world, f1)
    old.chmod(0o777)
    code, out, err = run_cli(capsys, "rollback", "staging", "--root", root, "--reason", "r")
    assert code == 0, err
    assert "release already on disk, checked" not in out
    assert "differs from the artifact" in err and "mode 0777" in err
    assert world.live("staging") == f1
    assert stat.S_IMODE(os.lstat(old).st_mode) == DIR_MODE
    assert tree_problems(old, world.manifest(f1)) == []
    code, doc = drift(capsys, "staging")
    assert code == 0, doc
    code, doc = drift(capsys, "staging", "--full")
    assert code == 0, doc


def test_rollback_to_an_untouched_release_on_disk_still_reuses_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(world.root)
    f1 = world.build()
    assert run_cli(capsys, "deploy", f1, "staging", "--root", root)[0] == 0
    f2 = world.version(2)
    assert run_cli(capsys, "deploy", f2, "staging", "--root", root)[0] == 0
    code, out, err = run_cli(capsys, "rollback", "staging", "--root", root, "--reason", "r")
    assert code == 0, err
    assert "release already on disk, checked" in out and "differs" not in err
    assert drift(capsys, "staging")[0] == 0


# -- 2a. --plan verifies what the deployment would copy ---------------------------------------------------


def test_plan_fails_like_the_deploy_on_a_corrupt_loose_object(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(world.root)
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    big = os.urandom(LOOSE_THRESHOLD + 100)
    world.commit({"data/big.bin": big})
    v2 = world.build()
    flip(LocalStore.at(world.home / "objects").loose_path(sha256_digest(big)), len(big) // 2)
    code, out, err = run_cli(capsys, "deploy", v2, "staging", "--plan", "--root", root)
    assert code == 1 and "nothing was changed" not in out, out
    assert err.startswith("graven: error: ") and len(err.splitlines()) == 1, err
    assert sha256_digest(big).hex in err and v2.removeprefix("sha256:") in err
    code, _, deploy_err = run_cli(capsys, "deploy", v2, "staging", "--root", root)
    assert code == 1 and sha256_digest(big).hex in deploy_err
    assert world.live("staging") == v1


def test_plan_fails_like_the_deploy_on_a_corrupt_packed_object(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(world.root)
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    packs_before = set((world.home / "objects" / "pack").glob("*.pack"))
    data = os.urandom(4096)  # incompressible: stored raw in the pack
    world.commit({"data/random.bin": data})
    v2 = world.build()
    pack = next(p for p in (world.home / "objects" / "pack").glob("*.pack") if p not in packs_before)
    where = pack.read_bytes().find(data)
    assert where > 0
    flip(pack, where + len(data) // 2)
    with pytest.raises(IntegrityError, match=sha256_digest(data).hex):
        plan(world, v2)
    code, _, err = run_cli(capsys, "deploy", v2, "staging", "--plan", "--root", root)
    assert code == 1 and sha256_digest(data).hex in err
    code, _, err = run_cli(capsys, "deploy", v2, "staging", "--root", root)
    assert code == 1 and sha256_digest(data).hex in err


def test_plan_succeeds_like_the_deploy_when_the_corrupt_object_would_be_linked(world: World) -> None:
    data = os.urandom(4096)
    world.commit({"data/random.bin": data})
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    pack = next(p for p in (world.home / "objects" / "pack").glob("*.pack") if data in p.read_bytes())
    flip(pack, pack.read_bytes().find(data) + 10)  # data/random.bin is unchanged: linked, never read
    planned = plan(world, v2)
    result = world.deploy(v2, "staging")
    assert result.ok
    assert (planned.would_link, planned.would_copy) == (result.stats["linked"], result.stats["copied"])


# -- 2b. --plan counts what the deployment links and copies -----------------------------------------------

LIB = {f"lib/mod{i:03d}.py": f"value = {i}\n" for i in range(40)}


def assert_plan_matches_deploy(world: World, digest: str) -> tuple[int, int]:
    planned = plan(world, digest)
    result = world.deploy(digest, "staging")
    assert result.ok and not result.reused_release
    counts = (result.stats["linked"], result.stats["copied"])
    assert (planned.would_link, planned.would_copy) == counts
    assert planned.would_link + planned.would_copy == result.stats["files"]
    return counts


def test_plan_counts_match_the_deploy_when_every_file_is_renamed(world: World) -> None:
    world.commit(dict(LIB))
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    renamed: dict[str, bytes | str | None] = dict.fromkeys(LIB)
    renamed.update({path.replace("lib/", "pkg/"): text for path, text in LIB.items()})
    for path in ("app/main.py", "app/__init__.py", "bin/run"):
        renamed[path] = None
        renamed[path.replace("app/", "app2/").replace("bin/", "bin2/")] = (world.repo / path).read_bytes()
    world.commit(renamed)
    v2 = world.build()
    _linked, copied = assert_plan_matches_deploy(world, v2)
    assert copied > len(LIB)  # renamed files are copied, not linked from another path


def test_plan_counts_match_the_deploy_when_one_file_changes(world: World) -> None:
    world.commit(dict(LIB))
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    world.commit({"lib/mod007.py": "value = 'seven'\n"})
    v2 = world.build()
    assert assert_plan_matches_deploy(world, v2)[1] == 1


def test_plan_counts_a_live_file_changed_since_it_was_deployed_as_a_copy(world: World) -> None:
    world.commit(dict(LIB))
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    victim = release_dir(world, v1) / "lib/mod003.py"
    victim.chmod(0o444)  # same mode, new ctime: the stat no longer matches the record
    v2 = world.version(2)
    _linked, copied = assert_plan_matches_deploy(world, v2)
    assert copied == 2  # app/version.txt and the re-copied lib/mod003.py


def test_plan_of_a_release_on_disk_counts_nothing_to_write(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    planned = plan(world, v1)
    assert planned.release_on_disk and (planned.would_link, planned.would_copy) == (0, 0)
    release_dir(world, v1).chmod(0o777)  # the deploy would rebuild it, linking from itself
    planned = plan(world, v1)
    result = world.deploy(v1, "staging")
    assert result.ok and not result.reused_release
    assert (planned.would_link, planned.would_copy) == (result.stats["linked"], result.stats["copied"])
    assert stat.S_IMODE(os.lstat(release_dir(world, v1)).st_mode) == DIR_MODE


def test_files_are_copied_in_overlapping_batches_and_a_corrupt_one_mid_way_fails_cleanly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy reads one batch while the pool writes the one before: with a batch per file, every
    file still lands whole, and a corrupt object after some batches are in flight fails the deploy
    with nothing half-built left."""
    monkeypatch.setattr("graven.deploy.materialize._BATCH_BYTES", 1)
    files = {f"data/f{i:02d}.bin": os.urandom(4096) for i in range(24)}
    world.commit(files)
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert tree_problems(release_dir(world, v1), world.manifest(v1)) == []
    packs_before = set((world.home / "objects" / "pack").glob("*.pack"))
    more = {f"more/g{i:02d}.bin": os.urandom(4096) for i in range(24)}
    world.commit(more)
    v2 = world.build()
    pack = next(p for p in (world.home / "objects" / "pack").glob("*.pack") if p not in packs_before)
    victim = more["more/g20.bin"]  # read after several batches were handed to the pool
    where = pack.read_bytes().find(victim)
    assert where > 0
    flip(pack, where + 100)
    with pytest.raises(IntegrityError, match=sha256_digest(victim).hex):
        world.deploy(v2, "prod", override=True, reason="a test of the copy")
    assert world.live("prod") is None
    assert (
        not (world.env_dir("prod") / "releases").exists()
        or [p.name for p in (world.env_dir("prod") / "releases").iterdir()] == []
    )


def test_plan_shows_the_hooks_it_would_run_and_how_they_changed(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hooks come from the artifact's graven.toml and run as the operator: a review found them
    only in --plan --json (under settings), never in what an operator reads."""
    from helpers_deploy import env_toml, staging_prod

    root = str(world.root)
    v1 = world.build()
    code, out, _ = run_cli(capsys, "deploy", v1, "staging", "--plan", "--root", root)
    assert code == 0 and "health: `python3 -c" in out and "(unchanged)" not in out, out
    assert "activate:" not in out  # none on either side
    assert world.deploy(v1, "staging").ok
    envs = staging_prod(activate="kill -HUP $(cat /run/app.pid)")
    v2 = world.version(2, env_toml("app", envs))
    code, out, _ = run_cli(capsys, "deploy", v2, "staging", "--plan", "--root", root)
    assert code == 0, out
    assert "activate: `kill -HUP $(cat /run/app.pid)` (new: the live release has none)" in out
    assert "health: `python3 -c" in out and "(unchanged)" in out
    code, out, _ = run_cli(capsys, "deploy", v2, "staging", "--plan", "--root", root, "--json")
    plan_json = json.loads(out)
    assert plan_json["settings"]["activate"] == "kill -HUP $(cat /run/app.pid)"
    assert plan_json["live_settings"]["activate"] is None
