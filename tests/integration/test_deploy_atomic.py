"""Deployments are atomic, crash-safe, serialized, and deploy exactly the artifact's bytes."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from graven.deploy.layout import EnvLayout
from graven.deploy.lock import EnvLock
from graven.errors import PolicyError
from graven.home import Home
from graven.model.digest import Digest
from graven.service import environments
from graven.service.context import Context, NullReporter
from graven.service.deploy import DeployOptions, deploy, promote, rollback
from graven.store.local import LOOSE_THRESHOLD
from helpers_deploy import CONFIG_PARSES, World, env_toml, staging_prod, tree_problems
from helpers_repo import run_cli


def live_tree_problems(world: World, env: str) -> list[str]:
    live = world.live(env)
    assert live is not None, f"nothing is live in {env}"
    return tree_problems(world.env_dir(env) / "current", world.manifest(live))


def all_inodes(root: Path) -> set[int]:
    found: set[int] = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                found.add(os.lstat(full).st_ino)
    return found


# -- exactly the artifact ------------------------------------------------------------------------------


def test_the_deployed_tree_is_the_artifact_in_every_environment(world: World) -> None:
    world.commit({"data/big.bin": os.urandom(LOOSE_THRESHOLD + 1), "app/current.py": "->main.py"})
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    for env in ("staging", "prod"):
        assert live_tree_problems(world, env) == []
        assert os.readlink(world.env_dir(env) / "current" / "app/current.py") == "main.py"
        assert os.access(world.env_dir(env) / "current" / "bin/run", os.X_OK)
    assert (world.env_dir("prod") / "config").read_text() == 'port = 8002\nbanner = "prod"\n'
    store_inodes = all_inodes(world.home / "objects")
    for env in ("staging", "prod"):
        assert not all_inodes(world.env_dir(env) / "releases") & store_inodes
    v2 = world.version(2)
    result = world.deploy(v2, "staging")
    assert result.ok and result.stats["copied"] == 1 and result.stats["linked"] >= 6
    assert live_tree_problems(world, "staging") == []
    assert not all_inodes(world.env_dir("staging") / "releases") & store_inodes


def test_a_tampered_release_never_reaches_the_next_one_or_the_store(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    victim = world.env_dir("staging") / "current" / "app/main.py"
    before = os.lstat(victim)
    victim.chmod(0o644)
    victim.write_bytes(b"print('pwned')\n")
    victim.chmod(0o444)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    assert live_tree_problems(world, "staging") == []  # main.py was copied again, not linked
    from graven.service.artifacts import verify_artifact

    assert verify_artifact(world.ctx(), Digest.parse(v1)).ok
    # rolling back to the tampered release rebuilds it: a verified switch, never the tampered bytes
    result = rollback(world.ctx(), "staging", world.options())
    assert result.ok and not result.reused_release
    assert live_tree_problems(world, "staging") == []
    # and redeploying the live digest over a damaged live tree repairs it in place (one exchange)
    victim = world.env_dir("staging") / "current" / "app/main.py"
    victim.chmod(0o644)
    victim.write_bytes(b"again\n")
    assert world.deploy(v1, "staging").ok
    assert live_tree_problems(world, "staging") == []


def test_plan_changes_nothing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = world.build()
    root = str(world.root)
    code, out, _ = run_cli(capsys, "deploy", v1, "staging", "--plan", "--root", root, "--json")
    assert code == 0 and not (world.root / "staging").exists()
    plan = json.loads(out)
    assert plan["live"] is None and "app/main.py" in plan["changes"]["added"]
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod()).replace("[env.staging]", "[env.staging]\nkeep = 3"))
    world.commit({"config/staging.toml": 'port = 9001\nbanner = "staging"\n', "app/__init__.py": None})
    v3 = world.build()
    code, out, _ = run_cli(capsys, "deploy", v3, "staging", "--plan", "--root", root)
    assert code == 0
    assert "~ config/staging.toml" in out and "- app/__init__.py" in out and "+ app/version.txt" in out
    assert "-port = 8001" in out and "+port = 9001" in out and "nothing was changed" in out
    assert world.live("staging") == v1 and v2 != v3
    # a plan for a refused deploy exits like the deploy would
    code, _, err = run_cli(capsys, "deploy", v3, "prod", "--plan", "--root", root)
    assert code == 1 and "requires" in err


# -- readers never see a missing or half-written release ------------------------------------------------


def test_a_reader_polling_current_during_100_deploys_always_sees_a_complete_release(world: World) -> None:
    toml = env_toml("app", {"staging": {"path": "staging", "keep": 4}})
    digests = [world.version(n, toml) for n in range(6)]
    expected = {d[7:]: world.manifest(d) for d in digests}
    assert world.deploy(digests[0], "staging").ok
    current = world.env_dir("staging") / "current"
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                target = os.readlink(current)
            except FileNotFoundError:
                problems.append("current is missing")
                continue
            name = target.removeprefix("releases/")
            found = tree_problems(current.parent / target, expected[name])
            if found:
                problems.append(f"{name[:12]}: {found[:3]}")
            seen.append(name)

    thread = threading.Thread(target=reader)
    thread.start()
    ctx = world.ctx()
    opts = world.options()
    try:
        for i in range(1, 101):
            assert deploy(ctx, digests[i % len(digests)], "staging", opts).ok
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert len(seen) > 100 and len(set(seen)) >= 3


# -- a deployer killed at any step ----------------------------------------------------------------------


class _KillAt(NullReporter):
    def __init__(self, stage: str, done: int) -> None:
        self.stage, self.done = stage, done

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == self.stage and done >= self.done:
            os.kill(os.getpid(), signal.SIGKILL)


def _deploy_and_die(home: str, digest: str, root: str, kill_at: tuple[str, int]) -> None:
    with Context(home=Home(root=Path(home)), reporter=_KillAt(*kill_at)) as ctx:
        deploy(ctx, digest, "staging", DeployOptions(root=root))


STEPS = [
    ("deploy:locked", 0),
    ("deploy:materialize", 256),
    ("deploy:release-ready", 0),
    ("deploy:pending-recorded", 0),
    ("deploy:switched", 0),
    ("deploy:activated", 0),
    ("deploy:health-checked", 0),
    ("deploy:recorded", 0),
    ("deploy:retention", 0),
]


@pytest.mark.parametrize(("stage", "done"), STEPS, ids=[s for s, _ in STEPS])
def test_a_deploy_killed_at_any_step_leaves_a_complete_release_and_the_next_one_succeeds(
    world: World, capsys: pytest.CaptureFixture[str], stage: str, done: int
) -> None:
    toml = env_toml(
        "app",
        {
            "staging": {
                "path": "staging",
                "config": "config/staging.toml",
                "keep": 1,
                "activate": "true",
                "health": CONFIG_PARSES,
                "health_interval": 0,
            }
        },
    )
    v0 = world.version(0, toml)
    v1 = world.version(1, toml)
    world.commit({f"many/f{i:03d}.txt": f"{i}\n" for i in range(300)})
    v2 = world.build()
    assert world.deploy(v0, "staging").ok and world.deploy(v1, "staging").ok
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_deploy_and_die, args=(str(world.home), v2, str(world.root), (stage, done)))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL, f"the deploy did not reach {stage}"
    live = world.live("staging")
    assert live in (v1, v2)
    assert live_tree_problems(world, "staging") == []
    # the next deployer is not blocked by the dead one's lock, settles its record and succeeds
    result = world.deploy(v2, "staging")
    assert result.ok and world.live("staging") == v2
    assert live_tree_problems(world, "staging") == []
    history = environments.history(world.ctx(), "staging")
    assert all(h["result"] != "pending" for h in history)
    releases = world.env_dir("staging") / "releases"
    assert not [p for p in os.listdir(releases) if p.startswith(".")]  # no leftovers
    status = {s.env: s for s in environments.status(world.ctx())}["staging"]
    assert status.live == v2 and status.on_disk == v2 and status.health == "healthy"
    code, out, _ = run_cli(capsys, "log", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"]


# -- one deployer at a time -----------------------------------------------------------------------------


def test_a_second_deployer_fails_at_once_naming_the_holder_or_waits(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    layout = EnvLayout(world.env_dir("staging"))
    holder = EnvLock(layout.lock, env="staging", actor="alice@box", since="2026-01-01T00:00:00Z")
    holder.acquire(wait=False)
    try:
        with pytest.raises(PolicyError, match=rf"being deployed by alice@box \(pid {os.getpid()}.*--wait"):
            world.deploy(v2, "staging")
        results: list[Any] = []
        waiter = threading.Thread(target=lambda: results.append(world.deploy(v2, "staging", wait=True)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and world.live("staging") == v1  # queued behind the holder
    finally:
        holder.release()
    waiter.join(30)
    assert results and results[0].ok and world.live("staging") == v2


def _deploy_waiting(home: str, digest: str, root: str) -> None:
    with Context(home=Home(root=Path(home))) as ctx:
        result = deploy(ctx, digest, "staging", DeployOptions(root=root, wait=True))
    os._exit(0 if result.ok else 1)


def test_concurrent_deploys_to_one_environment_serialize(world: World) -> None:
    toml = env_toml("app", {"staging": {"path": "staging", "health": "sleep 0.3", "health_interval": 0}})
    digests = [world.version(n, toml) for n in range(3)]
    fork = multiprocessing.get_context("fork")
    children = [
        fork.Process(target=_deploy_waiting, args=(str(world.home), d, str(world.root))) for d in digests
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0]
    history = environments.history(world.ctx(), "staging")
    assert len(history) == 3 and all(h["result"] == "ok" for h in history)
    spans = sorted((h["started_at"], h["finished_at"]) for h in history)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two deployments of one environment overlapped"
    assert world.live("staging") in digests
    assert live_tree_problems(world, "staging") == []


def _save_and_die(home: str, stat_file: str) -> None:
    from graven.deploy.statdb import StatTable

    with Context(home=Home(root=Path(home))) as ctx:
        table = StatTable.load(Path(stat_file), ctx.record_key)

        def killed(fd: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)  # written, not yet renamed over the table

        os.fsync = killed
        table.save(Path(stat_file), ctx.record_key)


def test_a_deployer_killed_while_it_saves_the_stat_table_leaves_nothing_behind(world: World) -> None:
    """The temporary file of a table being saved (as large as the table: ~100 bytes per path) is
    removed by the next deployer, as it removes a killed one's release directories; the table itself
    is the last one saved, whole."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    meta = world.env_dir("staging") / ".graven"
    before = (meta / "stat").read_bytes()
    child = multiprocessing.get_context("fork").Process(
        target=_save_and_die, args=(str(world.home), str(meta / "stat"))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert (meta / "stat").read_bytes() == before
    assert [n for n in os.listdir(meta) if n.startswith(".stat.tmp-")]
    assert world.deploy(world.version(2), "staging").ok
    assert not [n for n in os.listdir(meta) if n.startswith(".stat.tmp-")]
    assert live_tree_problems(world, "staging") == []


def _switch_and_die(link: str) -> None:
    from graven.deploy import switch

    def killed(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # the new link made, not yet renamed over current

    setattr(os, "rename", killed)  # noqa: B010 - in the forked child only, which dies in it
    switch.point_symlink(Path(link), "releases/elsewhere")


def test_a_switch_killed_before_its_rename_leaves_no_link_behind(world: World) -> None:
    """A deployer (or healer) killed between making `.current.tmp-*` and renaming it over `current`
    left that link in the environment directory for good. The next deployer removes it; a file of
    the same name that is no link is not its to remove."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    env_dir = world.env_dir("staging")
    child = multiprocessing.get_context("fork").Process(
        target=_switch_and_die, args=(str(env_dir / "current"),)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    left = [n for n in os.listdir(env_dir) if n.startswith(".current.tmp-")]
    assert len(left) == 1 and (env_dir / left[0]).is_symlink()
    (env_dir / ".config.tmp-not-a-link").write_text("the operator's\n")
    assert world.deploy(world.version(2), "staging").ok
    assert [n for n in os.listdir(env_dir) if n.startswith((".current.tmp-", ".config.tmp-"))] == [
        ".config.tmp-not-a-link"
    ]
    assert live_tree_problems(world, "staging") == []
