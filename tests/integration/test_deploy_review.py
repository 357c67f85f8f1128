"""Deployments after a review: nothing half-switched is ever left live, rollbacks walk back through
history and settle what a killed deployer left, environments cannot share a directory, and policy
cannot be weakened by rebuilding an old commit."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from conftest import process_alive as _alive
from graven.deploy.plan import short
from graven.errors import BackendError, ConfigError, InputError, IntegrityError, PolicyError
from graven.service import deploy_release, environments
from graven.service.deploy import rollback
from graven.service.drift import check
from graven.service.drift_heal import heal
from helpers_deploy import World, make_world


def kinds(world: World, env: str = "staging") -> list[tuple[str, str]]:
    return [(h["kind"], h["result"]) for h in environments.history(world.ctx(), env)]


def test_something_in_the_way_of_the_config_link_is_refused_before_anything_changes(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    config = world.env_dir("staging") / "config"
    config.unlink()
    config.mkdir()
    (config / "x").write_text("runtime data\n")
    v2 = world.version(2)
    with pytest.raises(InputError, match="not the symlink graven manages"):
        world.deploy(v2, "staging")
    assert world.live("staging") == v1
    assert kinds(world) == [("deploy", "ok")]  # nothing pending, nothing half-done
    assert (config / "x").read_text() == "runtime data\n"


def test_a_first_deploy_refused_for_what_stands_at_current_makes_nothing_there(world: World) -> None:
    v1 = world.build()
    staging = world.env_dir("staging")
    (staging / "current").mkdir(parents=True)  # someone's directory where graven puts its link
    with pytest.raises(ConfigError, match=r"already holds files graven did not make \(current\)"):
        world.deploy(v1, "staging")
    assert sorted(os.listdir(staging)) == ["current"]  # no .graven, no releases


def test_a_symlinked_releases_directory_is_refused_and_nothing_is_written_or_removed_through_it(
    world: World, tmp_path: Path
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(world.version(2), "staging").ok
    releases = world.env_dir("staging") / "releases"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".trash-precious").mkdir()
    (outside / ".trash-precious" / "data").write_text("someone else's\n")
    os.rename(releases, tmp_path / "releases-moved")
    releases.symlink_to(outside)
    with pytest.raises(InputError, match="releases is a symbolic link"):
        world.deploy(world.version(3), "staging")
    with pytest.raises(InputError, match="releases is a symbolic link"):
        rollback(world.ctx(), "staging", world.options(), to=v1)
    with pytest.raises(InputError, match="releases is a symbolic link"):
        heal(world.ctx(), "staging")
    assert sorted(os.listdir(outside)) == [".trash-precious"]
    assert (outside / ".trash-precious" / "data").read_text() == "someone else's\n"


def test_a_store_integrity_error_is_reported_even_when_the_half_built_release_cannot_be_removed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = world.build()
    monkeypatch.setattr(
        "graven.service.deploy_release.build_release", _raise(IntegrityError("object sha256:ab.. is corrupt"))
    )
    monkeypatch.setattr("graven.service.deploy_release.remove_tree", _raise(BackendError("cannot remove x")))
    with pytest.raises(IntegrityError, match="is corrupt"):
        world.deploy(digest, "staging")
    events = [e.to_json()["event"] for e, _ in world.ctx().audit.entries()]
    assert events[-1] == "verify-failure"


def _raise(exc: BaseException) -> Any:
    def run(*_args: object, **_kwargs: object) -> None:
        raise exc

    return run


def test_an_error_after_the_switch_switches_back(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    monkeypatch.setattr("graven.service.deploy.run_health", _raise(OSError("no such health checker")))
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1, result
    assert "no such health checker" in result.message and "switched back" in result.message
    assert world.live("staging") == v1
    assert (world.env_dir("staging") / "config").read_text().startswith("port = 8001")
    assert kinds(world) == [("deploy", "ok"), ("deploy", "failed"), ("auto-rollback", "ok")]


def test_ctrl_c_during_the_health_check_switches_back_then_stops(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    monkeypatch.setattr("graven.service.deploy.run_health", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        world.deploy(v2, "staging")
    assert world.live("staging") == v1
    history = environments.history(world.ctx(), "staging")
    assert [(h["kind"], h["result"]) for h in history] == [
        ("deploy", "ok"),
        ("deploy", "failed"),
        ("auto-rollback", "ok"),
    ]
    assert "interrupted" in str(history[1]["detail"])


def test_a_second_rollback_goes_further_back_through_history(world: World) -> None:
    from graven.service.deploy import rollback

    f1 = world.build()
    f2 = world.version(2)
    f3 = world.version(3)
    for digest in (f1, f2, f3):
        assert world.deploy(digest, "staging").ok
    assert rollback(world.ctx(), "staging", world.options()).digest == f2
    assert rollback(world.ctx(), "staging", world.options()).digest == f1
    assert world.live("staging") == f1
    with pytest.raises(InputError, match="no earlier release to roll back to"):
        rollback(world.ctx(), "staging", world.options())
    # a deploy after unhold starts from what is live then
    environments.unhold(world.ctx(), "staging")
    assert world.deploy(f3, "staging").ok
    assert rollback(world.ctx(), "staging", world.options()).digest == f1


def test_a_rollback_with_nothing_older_names_what_it_considered_and_the_candidates(world: World) -> None:
    """Deploy D1, D2, roll back (to D1), unhold, deploy D3, roll back (to D1 again): a third rollback
    has nothing older than D1 (it went live first), by design (it never returns to a release a
    rollback left). It said only "no earlier release", though D2 and D3 were live: it now says why and
    names them for --to, newest first."""
    d1, d2, d3 = world.build(), world.version(2), world.version(3)
    assert world.deploy(d1, "staging").ok
    assert world.deploy(d2, "staging").ok
    assert rollback(world.ctx(), "staging", world.options()).digest == d1
    environments.unhold(world.ctx(), "staging")
    assert world.deploy(d3, "staging").ok
    assert rollback(world.ctx(), "staging", world.options()).digest == d1
    environments.unhold(world.ctx(), "staging")
    with pytest.raises(InputError, match="no earlier release to roll back to") as caught:
        rollback(world.ctx(), "staging", world.options())
    message = str(caught.value)
    assert f"{short(d1)} went live in staging with nothing live before it" in message, message
    assert f"with --to DIGEST: {short(d3)}, {short(d2)} (`graven history staging`)" in message, message
    assert rollback(world.ctx(), "staging", world.options(), to=short(d3)).digest == d3


def test_a_rollback_of_the_only_release_says_it_is_the_only_one(world: World) -> None:
    d1 = world.build()
    assert world.deploy(d1, "staging").ok
    with pytest.raises(InputError, match="no earlier release to roll back to") as caught:
        rollback(world.ctx(), "staging", world.options())
    assert f"{short(d1)} is the only release that went live in staging" in str(caught.value)


class _KillAt:
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def warn(self, message: str) -> None:
        pass

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == self.stage:
            os.kill(os.getpid(), signal.SIGKILL)


def _deploy_and_die(home: str, digest: str, root: str) -> None:
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, deploy

    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:switched")) as ctx:
        deploy(ctx, digest, "staging", DeployOptions(root=root))


def test_a_rollback_first_settles_what_a_killed_deployer_left(world: World) -> None:
    from graven.service.deploy import rollback

    f1 = world.build()
    f2 = world.version(2)
    f3 = world.version(3)
    for digest in (f2, f3):
        assert world.deploy(digest, "staging").ok
    child = multiprocessing.get_context("fork").Process(
        target=_deploy_and_die, args=(str(world.home), f1, str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert world.live("staging") == f1  # switched, then killed: the record says pending
    result = rollback(world.ctx(), "staging", world.options())
    assert result.ok and result.digest == f3, result  # the last release before the unfinished one
    assert world.live("staging") == f3
    history = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["result"]) for h in history][-2:] == [(f1, "interrupted"), (f3, "ok")]


def test_a_release_a_killed_deployer_left_live_can_be_rolled_back_to(world: World) -> None:
    """f2 went live (its deployer was killed after the switch; the next command settled it as
    ``interrupted``, live), then f3 replaced it: f2 is what was live before, and a rollback to it (by
    default or --to) is a rollback to a release this environment ran, not a digest it never did."""
    f1 = world.build()
    f2 = world.version(2)
    f3 = world.version(3)
    f4 = world.version(4)
    assert world.deploy(f1, "staging").ok
    child = multiprocessing.get_context("fork").Process(
        target=_deploy_and_die, args=(str(world.home), f2, str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert world.live("staging") == f2
    assert world.deploy(f3, "staging").ok
    result = rollback(world.ctx(), "staging", world.options())
    assert result.ok and result.digest == f2, result
    assert world.live("staging") == f2
    environments.unhold(world.ctx(), "staging")
    assert world.deploy(f3, "staging").ok
    assert rollback(world.ctx(), "staging", world.options(), to=f2).digest == f2
    # a deployment killed before its switch never went live: still no rollback target
    environments.unhold(world.ctx(), "staging")
    assert world.deploy(f3, "staging").ok
    child = multiprocessing.get_context("fork").Process(
        target=_deploy_before_switch_and_die, args=(str(world.home), f4, str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert world.live("staging") == f3
    with pytest.raises(PolicyError, match="never live in staging"):
        rollback(world.ctx(), "staging", world.options(), to=f4)
    assert world.live("staging") == f3


def _deploy_before_switch_and_die(home: str, digest: str, root: str) -> None:
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, deploy

    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:pending-recorded")) as ctx:
        deploy(ctx, digest, "staging", DeployOptions(root=root))


def test_two_environments_never_share_a_directory(world: World) -> None:
    from graven.errors import ConfigError
    from helpers_deploy import env_toml

    same = {"path": "shared", "health_interval": 0}
    with pytest.raises(ConfigError, match=r"\[env.two\] path 'shared' is the path of \[env.one\]"):
        world.version(2, env_toml("app", {"one": dict(same), "two": dict(same)}))  # refused at build
    with pytest.raises(ConfigError, match="is inside the files graven keeps in the path of"):
        world.version(3, env_toml("app", {"one": {"path": "srv"}, "two": {"path": "srv/releases/x"}}))
    # one environment inside another's directory, beside what graven keeps there, is fine
    nested = world.version(4, env_toml("app", {"one": {"path": "app"}, "two": {"path": "app/canary"}}))
    assert world.deploy(nested, "one").ok and world.deploy(nested, "two").ok
    assert world.deploy(
        world.version(5, env_toml("app", {"one": {"path": "app"}, "two": {"path": "app/canary"}})), "one"
    ).ok
    # across artifacts: the database knows where every environment lives
    b = world.version(6, env_toml("app", {"three": {"path": "app/current/x"}}))
    with pytest.raises(ConfigError, match="overlap where graven keeps releases and links"):
        world.deploy(b, "three")
    assert not (world.root / "app" / "current" / "x").exists()  # refused before anything was made there


def test_another_environment_cannot_take_over_a_live_environments_directory(world: World) -> None:
    """Deploying as ``b`` into the directory where ``a`` is live would switch a's release without a's
    hold or ``requires`` (and prune a's releases): refused before anything is made. A renamed
    environment gets a directory of its own; one whose old name has nothing live may take it over."""
    from graven.errors import ConfigError
    from helpers_deploy import env_toml

    old = world.version(2, env_toml("app", {"a": {"path": "place"}}))
    assert world.deploy(old, "a").ok
    live = os.readlink(world.root / "place" / "current")
    renamed = world.version(3, env_toml("app", {"b": {"path": "place"}}))
    with pytest.raises(ConfigError, match=r"is the directory of environment a .* is live"):
        world.deploy(renamed, "b")
    assert os.readlink(world.root / "place" / "current") == live
    moved = world.version(4, env_toml("app", {"b": {"path": "place-b"}}))
    assert world.deploy(moved, "b").ok


def test_a_retired_environment_leaves_status_and_drift_and_its_directory_may_be_renamed(
    world: World, run_cli: Any
) -> None:
    """`graven retire` is how an environment is renamed in place: the old name's directory, files and
    history stay; status, drift and watch stop looking at it; the new name adopts the directory."""
    from helpers_deploy import env_toml

    old = world.version(2, env_toml("app", {"stage": {"path": "place"}}))
    assert world.deploy(old, "stage").ok
    live = os.readlink(world.root / "place" / "current")
    code, out, err = run_cli("retire", "stage", "--reason", "renamed to staging", "--json")
    assert code == 0, err
    assert json.loads(out) == {"env": "stage", "path": str(world.root / "place"), "digest": old}
    assert os.readlink(world.root / "place" / "current") == live  # nothing on disk changed
    assert environments.status(world.ctx()) == []
    code, out, _ = run_cli("drift")
    assert code == 0 and "no live environments" in out
    assert [h["kind"] for h in environments.history(world.ctx(), "stage")] == ["deploy"]
    renamed = world.version(3, env_toml("app", {"staging": {"path": "place"}}))
    assert world.deploy(renamed, "staging").ok  # adopts the directory (with a warning)
    assert [e.env for e in environments.status(world.ctx())] == ["staging"]
    code, out, err = run_cli("log", "--json")
    retired = [e for e in json.loads(out) if e["event"] == "retire"]
    assert len(retired) == 1 and retired[0]["env"] == "stage" and "renamed to staging" in retired[0]["reason"]
    code, _, err = run_cli("retire", "stage", "--reason", "again")
    assert code == 2 and "or was retired" in err


def test_a_held_environment_is_not_retired_and_a_killed_deployment_is_settled_first(
    world: World, run_cli: Any
) -> None:
    from graven.core.drift import Alert, Difference
    from graven.home import Home
    from graven.service.context import Context, NullReporter
    from graven.service.deploy import DeployOptions, deploy
    from graven.service.drift_quick import record_clean
    from graven.service.drift_records import record_alert, record_check
    from graven.service.drift_report import DriftReport

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    environments.hold(world.ctx(), "staging", "incident 7")
    code, _, err = run_cli("retire", "staging", "--reason", "x")
    assert code == 1 and "is held on" in err and "incident 7" in err and "graven unhold staging" in err
    environments.unhold(world.ctx(), "staging")
    v2 = world.version(2)
    pid = os.fork()
    if pid == 0:  # a deployer killed right after its switch: a pending record, v2 live on disk
        try:

            class _Die(NullReporter):
                def progress(self, stage: str, done: int, total: int | None) -> None:
                    if stage == "deploy:switched":
                        os.kill(os.getpid(), signal.SIGKILL)

            with Context(home=Home(root=world.home), reporter=_Die()) as ctx:
                deploy(ctx, v2, "staging", DeployOptions(root=str(world.root)))
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert world.live("staging") == v2
    code, out, err = run_cli("retire", "staging", "--reason", "moved", "--json")
    assert code == 0, err
    assert json.loads(out)["digest"] == v2  # what is live, once the killed deployment is settled
    assert "pending" not in [h["result"] for h in environments.history(world.ctx(), "staging")]
    # a drift check that was running when the environment was retired records nothing of it
    report = DriftReport(
        env="staging",
        path=str(world.root / "staging"),
        digest=v2,
        name="app",
        commit=None,
        mode="fast",
        differences=[],
        files=1,
        hashed=0,
        listed=1,
        seconds=0.0,
        checked_at="t",
    )
    assert record_check(world.ctx(), report) is None
    assert record_clean(world.ctx(), report)  # nothing due, nothing written
    alert = Alert("drift", "staging", str(world.root), v2, None, "app", "t", (Difference("a", "modified"),))
    record_alert(world.ctx(), alert, ok=True, channels={"command": "ok"})  # sent while it was retired
    with world.ctx().db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM drift_state WHERE env = 'staging'").scalar() == 0
        assert conn.execute("SELECT count(*) FROM drift_events WHERE env = 'staging'").scalar() == 0


def test_an_artifact_built_before_stricter_checks_stays_deployable(world: World) -> None:
    """A rollback is the emergency path: a graven.toml stored with an artifact is not refused for a
    build-only rule added later ([build] outputs without steps is refused for new builds)."""
    from graven.errors import ConfigError
    from graven.model.pipeline import parse_pipeline, parse_stored_pipeline
    from helpers_deploy import env_toml, staging_prod

    toml = env_toml("app", staging_prod()) + '[build]\noutputs = ["app/"]\n'
    with pytest.raises(ConfigError, match="outputs"):
        parse_pipeline(toml.encode())
    stored = parse_stored_pipeline(toml.encode())
    assert stored.env["staging"].path == "staging" and not stored.build.outputs


def test_a_path_that_is_a_file_or_another_root_is_refused_before_anything_is_made(world: World) -> None:
    from graven.errors import ConfigError
    from graven.service.deploy import DeployOptions, deploy

    v1 = world.build()
    world.root.mkdir(parents=True, exist_ok=True)
    (world.root / "staging").write_text("not a directory\n")
    with pytest.raises(InputError, match="exists and is not a directory"):
        world.deploy(v1, "staging")
    (world.root / "staging").unlink()
    assert world.deploy(v1, "staging").ok
    elsewhere = world.root.parent / "elsewhere"
    with pytest.raises(ConfigError, match="is live at") as info:
        deploy(world.ctx(), v1, "staging", DeployOptions(root=str(elsewhere)))
    assert "(pass DeployOptions(root=DIR))" in str(info.value)  # words a library caller can use
    assert "--root" not in str(info.value) and "GRAVEN_DEPLOY_ROOT" not in str(info.value)
    assert not elsewhere.exists()  # no lock directory made in the wrong place


def _outside_files(toml: str) -> str:
    """graven.toml whose artifact leaves graven.toml out: commits that change only it build the same
    digest (each build adds a signed provenance naming its own graven.toml)."""
    return toml.replace("[artifact]\n", '[artifact]\ninclude = ["app/**", "bin/**", "config/**"]\n', 1)


def test_rebuilding_an_older_commit_cannot_drop_a_requirement(world: World) -> None:
    from graven.errors import PolicyError
    from helpers_deploy import env_toml, staging_prod

    strict = _outside_files(env_toml("app", staging_prod()))
    world.commit({}, strict)
    digest = world.build()
    lax_envs = staging_prod()
    del lax_envs["prod"]["requires"]
    world.commit({}, _outside_files(env_toml("app", lax_envs)))
    assert world.build() == digest  # the same files: the newest provenance now names the lax graven.toml
    with pytest.raises(PolicyError, match="never deployed healthy to staging"):
        world.deploy(digest, "prod")
    assert world.deploy(digest, "staging").ok
    assert world.deploy(digest, "prod").ok


def test_drift_reads_the_ignore_globs_of_the_deployed_graven_toml(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from helpers_deploy import env_toml, staging_prod
    from helpers_repo import run_cli

    world.commit({}, _outside_files(env_toml("app", staging_prod(ignore=["var/**"]))))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    # a later commit widens the globs; its build has the same digest, nothing new is deployed
    world.commit({}, _outside_files(env_toml("app", staging_prod(ignore=["var/**", "app/**"]))))
    assert world.build() == digest
    release = (world.env_dir("staging") / "current").resolve()
    (release / "app").chmod(0o755)
    (release / "app" / "backdoor.py").write_text("import os\n")
    (release / "app").chmod(0o555)
    for mode in ((), ("--full",)):
        code, out, _ = run_cli(capsys, "drift", "staging", "--json", *mode)
        found = {(d["path"], d["kind"]) for e in json.loads(out)["environments"] for d in e["differences"]}
        assert code == 1 and found == {("app/backdoor.py", "added")}, (mode, out)


def test_hold_waits_for_a_deployment_at_work_and_holds_what_it_made_live(world: World) -> None:
    import threading

    from helpers_deploy import env_toml, staging_prod

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    marker = world.root.parent / "in-health-check"
    slow = world.version(2, env_toml("app", staging_prod(health=f"touch {marker}; sleep 1")))
    done: list[Any] = []
    deployer = threading.Thread(target=lambda: done.append(world.deploy(slow, "staging")))
    deployer.start()
    _wait_for(marker)  # the deployer holds the lock, in its health check
    held = environments.hold(world.ctx(), "staging", "freeze")
    deployer.join()
    assert done[0].ok and world.live("staging") == slow
    assert held.changed and held.digest == slow  # not the digest the deployment replaced
    with world.ctx().db.connect() as conn:
        state = environments.load_state(conn, "staging")
    assert state is not None and state.held_digest == slow == state.live_digest


def test_hold_waits_for_the_first_deployment_at_work_too(world: World) -> None:
    """Nothing is recorded for the environment until its first deployment ends: its pending record
    says where it lives, so the hold waits for it instead of calling the environment never deployed."""
    import threading

    from helpers_deploy import env_toml, staging_prod

    marker = world.root.parent / "in-health-check"
    slow = world.version(2, env_toml("app", staging_prod(health=f"touch {marker}; sleep 1")))
    done: list[Any] = []
    deployer = threading.Thread(target=lambda: done.append(world.deploy(slow, "staging")))
    deployer.start()
    _wait_for(marker)
    held = environments.hold(world.ctx(), "staging", "freeze")
    deployer.join()
    assert done[0].ok and held.changed and held.digest == slow == world.live("staging")


def test_a_digest_rejected_while_it_is_being_deployed_is_not_left_live(world: World) -> None:
    import threading

    from helpers_deploy import env_toml, staging_prod

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    marker = world.root.parent / "in-health-check"
    slow = world.version(2, env_toml("app", staging_prod(health=f"touch {marker}; sleep 1")))
    done: list[Any] = []
    deployer = threading.Thread(target=lambda: done.append(world.deploy(slow, "staging")))
    deployer.start()
    _wait_for(marker)  # in its health check
    result = environments.reject(world.ctx(), slow, "found a bug")
    deployer.join()
    assert result.live_in == ("staging",)  # reject warns: it is being deployed there
    assert not done[0].ok and done[0].rolled_back_to == v1, done[0]
    assert "rejected during the deployment (found a bug)" in done[0].message
    assert world.live("staging") == v1


def _wait_for(path: Path, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_hold_from_a_hook_of_the_deployment_fails_at_once_instead_of_waiting_for_itself(
    world: World,
) -> None:
    import shlex
    import sys

    from helpers_deploy import env_toml, staging_prod

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    log = world.root.parent / "hold.log"
    hold = f"{shlex.quote(sys.executable)} -m graven.cli.main hold staging --reason from-hook"
    v2 = world.version(
        2, env_toml("app", staging_prod(activate=f"{hold} 2> {log}; true", activate_timeout=10))
    )
    result = world.deploy(v2, "staging")  # without the check: waits until the hook's timeout
    assert result.ok, result
    assert "runs inside a hook of the deployment" in log.read_text(), log.read_text()
    with world.ctx().db.connect() as conn:
        state = environments.load_state(conn, "staging")
    assert state is not None and not state.held


def test_deploy_wait_from_a_hook_of_the_deployment_fails_at_once_instead_of_waiting_for_itself(
    world: World,
) -> None:
    import shlex
    import sys
    import time

    from helpers_deploy import env_toml, staging_prod

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    log = world.root.parent / "deploy.log"
    again = (
        f"{shlex.quote(sys.executable)} -m graven.cli.main deploy {v1} staging --wait "
        f"--root {shlex.quote(str(world.root))}"
    )
    v2 = world.version(
        2, env_toml("app", staging_prod(activate=f"{again} 2> {log}; true", activate_timeout=30))
    )
    started = time.monotonic()
    result = world.deploy(v2, "staging")
    assert result.ok and time.monotonic() - started < 20, result  # not the hook's timeout
    assert "runs this command from one of its hooks: it would wait for itself" in log.read_text()


def test_a_hook_dies_with_a_killed_deployer(tmp_path: Path) -> None:
    """SIGKILL runs no clean-up: the watchdog kills the command's process group when graven dies."""
    import time

    from graven.deploy.hooks import run_hook

    pids = tmp_path / "pids"
    pid = os.fork()
    if pid == 0:
        try:
            run_hook(f"sleep 1000 & echo $! > {pids}; wait", cwd=tmp_path, env=dict(os.environ), timeout=600)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    sleeper = int(pids.read_text())
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(sleeper)


def test_after_a_deployer_is_killed_having_linked_the_live_files_the_next_deploy_links_them_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.commit({f"lib/m{i}.py": f"x = {i}\n" for i in range(50)})
    v1 = world.version(1)
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    pid = os.fork()
    if pid == 0:  # a deployer killed right after building its release (live files linked into it)
        code = 3
        try:
            from graven.deploy.materialize import build_release as real  # what deploy_release calls

            def build_then_die(*args: Any, **kwargs: Any) -> Any:
                real(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)

            monkeypatch.setattr(deploy_release, "build_release", build_then_die)  # in the child only
            world.deploy(v2, "staging")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    result = world.deploy(v2, "staging")
    assert result.ok
    # everything but what v2 changed is linked from the live release, as without the kill
    assert result.stats["linked"] >= 50 and result.stats["copied"] <= 2, result.stats
    (report,) = check(world.ctx(), ["staging"])
    assert report.clean


def test_a_first_deploy_into_a_directory_holding_someone_elses_files_is_refused(
    world: World, tmp_path: Path
) -> None:
    """The path comes from the artifact's graven.toml: a review pointed an environment at a ~/.ssh,
    and the deploy made ~/.ssh/config a link to a file of the release. A directory graven did not
    make must be new or empty; once graven deployed there, its own files are no obstacle."""
    from helpers_deploy import env_toml

    ssh = tmp_path / "dot-ssh"
    ssh.mkdir()
    (ssh / "id_ed25519").write_text("private\n")
    (ssh / "known_hosts").write_text("h\n")
    v1 = world.version(1, env_toml("app", {"staging": {"path": str(ssh), "config": "config/staging.toml"}}))
    with pytest.raises(
        ConfigError, match=r"already holds files graven did not make \(id_ed25519, known_hosts\)"
    ):
        world.deploy(v1, "staging")
    assert sorted(os.listdir(ssh)) == ["id_ed25519", "known_hosts"]
    empty = tmp_path / "empty"
    (empty / "lost+found").mkdir(parents=True)  # a fresh file system mounted there: still empty
    v2 = world.version(2, env_toml("app", {"staging": {"path": str(empty)}}))
    assert world.deploy(v2, "staging").ok  # new or empty: fine
    assert world.deploy(world.version(3), "staging").ok  # and graven's own files are no obstacle


def test_a_first_deploy_is_not_refused_for_another_deployers_probe_of_the_same_directory(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first deployments of one environment at once (two CI jobs, two threads of a library
    caller): the first tries what the file system can hold in a `.graven-probe-*` directory of PATH
    before it takes the lock, and the second, checking that PATH is new or empty, was refused (exit 2,
    "already holds files graven did not make (.graven-probe-...)") instead of taking its turn."""
    from graven.deploy import fscheck

    v1 = world.build()
    real = fscheck._try_release_kinds
    second: list[bool] = []

    def another_deployer_meanwhile(probe: Path) -> str | None:
        if not second:  # the first deployer's probe is there: the second deploys now
            second.append(False)
            second[0] = world.deploy(v1, "staging").ok
        return real(probe)

    monkeypatch.setattr(fscheck, "_try_release_kinds", another_deployer_meanwhile)
    assert world.deploy(v1, "staging").ok
    assert second == [True]
    assert world.live("staging") == v1
    assert not [name for name in os.listdir(world.env_dir("staging")) if name.startswith(".graven-probe")]


def test_a_failed_check_switches_back_even_when_the_database_fails_to_say_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch back read the previous deployment's row (for its hooks) first: with the database gone
    at that moment (PostgreSQL stopped during the health check), the error left the release that had
    just failed its check live. The old release is now switched back without its hooks, and says so."""
    from graven.errors import BackendError
    from graven.service import deploy_records

    world = make_world(tmp_path, monkeypatch)
    try:
        v1 = world.build()
        assert world.deploy(v1, "staging").ok
        world.commit({"config/staging.toml": b"port = = broken\n"})
        v2 = world.build()

        def gone(*args: object, **kwargs: object) -> None:
            raise BackendError("database error: server closed the connection unexpectedly")

        with monkeypatch.context() as patch:
            patch.setattr(deploy_records, "deployment_row", gone)
            result = world.deploy(v2, "staging")
        assert not result.ok
        assert world.live("staging") == v1
        assert (
            "its activate and health not run: database error: server closed the connection" in result.message
        )
    finally:
        world.close()


def _deploy_and_die_after_switching_back(home: str, digest: str, root: str) -> None:
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, deploy

    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:switched-back")) as ctx:
        deploy(ctx, digest, "staging", DeployOptions(root=root))


def test_a_deployer_killed_after_switching_back_is_not_said_to_have_stopped_before_the_switch(
    world: World,
) -> None:
    """Its record was settled as "stopped before the switch", though the release had gone live, failed
    its check and been switched back (a fault-injection review)."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    world.commit({"config/staging.toml": b"port = = broken\n"})
    v2 = world.build()
    child = multiprocessing.get_context("fork").Process(
        target=_deploy_and_die_after_switching_back, args=(str(world.home), v2, str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert world.live("staging") == v1
    assert world.deploy(v1, "staging").ok  # settles the pending record first
    (settled,) = [h for h in environments.history(world.ctx(), "staging") if h["digest"] == v2]
    assert settled["result"] == "interrupted"
    assert "before the switch, or after switching back: this release is not live" in str(settled["detail"])


@pytest.mark.parametrize("how", ["revoked", "untrusted"])
def test_a_key_revoked_while_a_deployment_waits_for_its_lock_switches_nothing(world: World, how: str) -> None:
    """Trust is decided again under the lock, right before the switch: a deployment that queued behind
    another (--wait) or built its release while the key was revoked or no longer trusted went live with
    the signature its operator had just withdrawn."""
    from graven.home import Home
    from graven.service.context import Context, NullReporter
    from graven.service.deploy import DeployOptions, deploy
    from graven.service.keys import revoke_key

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    home = Home(root=world.home)
    keyids = [p.stem for p in home.trust.glob("*.pub")]
    assert len(keyids) == 1

    class _WithdrawAt(NullReporter):
        def progress(self, stage: str, done: int, total: int | None) -> None:
            if stage == "deploy:release-ready":  # after the checks made before the lock
                if how == "revoked":
                    revoke_key(home, keyids[0])
                else:
                    (home.trust / f"{keyids[0]}.pub").unlink()

    with Context(home=home, reporter=_WithdrawAt()) as ctx, pytest.raises(PolicyError) as caught:
        deploy(ctx, v2, "staging", DeployOptions(root=str(world.root)))
    assert "cannot be deployed to staging" in str(caught.value)
    assert world.live("staging") == v1  # nothing switched
    history = environments.history(world.ctx(), "staging")
    assert [h["digest"] for h in history] == [v1]  # no pending or failed row either
    events = [(e.event, e.artifact) for e, _ in world.ctx().audit.entries()]
    assert ("verify-failure", v2) in events


def _first_deploy_and_die(home: str, digest: str, env: str, root: str) -> None:
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, deploy

    with Context(home=Home(root=Path(home)), reporter=_KillAt("deploy:switched")) as ctx:
        deploy(ctx, digest, env, DeployOptions(root=root))


def test_a_killed_first_deployment_of_one_environment_keeps_its_directory_from_another(world: World) -> None:
    """``a``'s first deployment into ``shared`` was killed after its switch: its release is live there,
    yet nothing but its ``pending`` row records ``a``. ``b`` (another artifact's graven.toml names the
    same directory) must not take the directory over as if it were free: under the directory's lock,
    which no deployer of it then holds, ``a``'s record is settled and ``b`` is refused, naming ``a``."""
    from helpers_deploy import env_toml

    da = world.version(1, env_toml("app", {"a": {"path": "shared"}}))
    db = world.version(2, env_toml("app", {"b": {"path": "shared"}}))
    child = multiprocessing.get_context("fork").Process(
        target=_first_deploy_and_die, args=(str(world.home), da, "a", str(world.root))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert world.live("shared") == da
    with pytest.raises(ConfigError, match=r"is the directory of environment a .* is live"):
        world.deploy(db, "b")
    assert world.live("shared") == da
    with world.ctx().db.connect() as conn:
        assert environments.load_state(conn, "b") is None
        state = environments.load_state(conn, "a")
    assert state is not None and state.live_digest == da
    assert [h["result"] for h in environments.history(world.ctx(), "a")] == ["interrupted"]


def test_hold_from_a_hook_names_the_environment_whose_deployment_holds_the_shared_lock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environments at one PATH share its lock: a hold of b from a hook of a's deployment said "runs
    inside a hook of the deployment that holds b", naming the wrong environment (as deploy did)."""
    from graven.deploy import lock as deploy_lock
    from graven.deploy.layout import EnvLayout
    from graven.deploy.lock import EnvLock

    assert world.deploy(world.build(), "staging").ok
    monkeypatch.setattr(deploy_lock, "holds_from_above", lambda holder: True)  # as from a's hook
    with EnvLock(EnvLayout(world.root / "staging").lock, env="a", actor="holder@test", since="now") as held:
        held.acquire(wait=False)
        with pytest.raises(PolicyError) as info:
            environments.hold(world.ctx(), "staging", "from a hook")
    said = str(info.value)
    assert "the deployment that holds environment a (at the same path as staging) (pid" in said, said
