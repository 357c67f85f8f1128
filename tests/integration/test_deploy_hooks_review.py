"""Hooks and policy after a review: an override is logged whatever the deployment's outcome and only
when it bypassed something; credentials a hook prints never reach the records; a signal that killed a
hook is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from graven.deploy.hook_result import HookResult, redact_secrets
from graven.service import environments
from helpers_deploy import World, env_toml, fail_switch_to, staging_prod

FAIL = "echo bad; exit 3"


def _log(world: World) -> list[dict[str, object]]:
    return [entry.to_json() for entry, _ in world.ctx().audit.entries()]


def test_an_override_is_logged_when_the_deployment_then_fails(world: World) -> None:
    bad = world.version(2, env_toml("app", staging_prod(health=FAIL)))
    result = world.deploy(bad, "prod", override=True, reason="hotfix")  # never healthy in staging
    assert not result.ok
    overrides = [e for e in _log(world) if e["event"] == "override"]
    assert len(overrides) == 1 and "requires staging bypassed: hotfix" in str(overrides[0]["reason"])


def test_an_override_that_bypassed_nothing_is_no_override(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(v1, "prod", override=True, reason="just in case").ok
    assert [h["override"] for h in environments.history(world.ctx(), "prod")] == [False]
    assert [e for e in _log(world) if e["event"] == "override"] == []


def test_credentials_a_failing_hook_prints_are_not_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "tok-4f9a2c")
    monkeypatch.setenv("SOME_DB_URL", "postgresql://app:s3cretpw@db/app")
    noisy = 'echo "token=$SERVICE_TOKEN url=$SOME_DB_URL pw=s3cretpw"; exit 1'
    digest = world.version(2, env_toml("app", staging_prod(health=noisy)))
    result = world.deploy(digest, "staging")
    assert not result.ok
    recorded = json.dumps(environments.history(world.ctx(), "staging")) + json.dumps(_log(world))
    assert "tok-4f9a2c" not in recorded and "s3cretpw" not in recorded
    assert "token=*** url=*** pw=***" in recorded


def test_redaction_and_signals_in_one_line() -> None:
    env = {"A_PASSWORD": "hunter22", "PATH": "/usr/bin", "X_DB_URL": "postgresql://u:pw1234@h/d"}
    assert redact_secrets("pw hunter22 at /usr/bin, pw1234", env) == "pw *** at /usr/bin, ***"
    assert HookResult("x", -9, "", 1.0).describe() == "killed by signal 9"
    assert HookResult("x", 3, "oops\n", 1.0).describe() == "exit 3: oops"
    hidden = HookResult("x", 1, "DB down\rFAKE: all good\n", 1.0)
    assert hidden.describe() == "exit 1: DB down\rFAKE: all good"


def test_a_signal_while_the_old_release_is_checked_after_a_switch_back_keeps_the_record(
    world: World, tmp_path: Path
) -> None:
    """v2 fails its health check; graven switches back to v1 and runs v1's health check, and SIGTERM
    arrives then: v2's failure and the switch back are recorded before graven exits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    started, hold = tmp_path / "back-health-started", tmp_path / "slow"
    slow_health = f"if [ -f {hold} ]; then touch {started}; sleep 30; fi; exit 0"
    v1 = world.version(1, env_toml("app", staging_prod(health=slow_health)))
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod(health=FAIL)))
    hold.touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "graven.cli.main", "deploy", v2, "staging", "--root", str(world.root)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"switched back to {v1.removeprefix('sha256:')[:12]}" in err.decode(), err  # what is live
    assert world.live("staging") == v1
    rows = [(h["digest"], h["kind"], h["result"]) for h in environments.history(world.ctx(), "staging")]
    assert rows[-2:] == [(v2, "deploy", "failed"), (v1, "auto-rollback", "ok")], rows
    failed = [e for e in _log(world) if e["event"] == "deploy" and e["result"] == "failed"]
    assert len(failed) == 1 and failed[0]["artifact"] == v2


def test_switching_back_to_a_rejected_digest_says_so(world: World) -> None:
    """The failed deployment's only way back is the live digest that was rejected meanwhile: graven
    goes back to it (nothing else is at hand) and says, in the records and as a warning, that it is."""
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, deploy

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    environments.reject(world.ctx(), v1, "leaks memory")
    bad = world.version(2, env_toml("app", staging_prod(health=FAIL)))

    class Warnings:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def warn(self, message: str) -> None:
            self.seen.append(message)

        def progress(self, stage: str, done: int, total: int | None) -> None:
            pass

    warnings = Warnings()
    with Context(home=Home(root=world.home), reporter=warnings) as ctx:
        result = deploy(ctx, bad, "staging", DeployOptions(root=str(world.root)))
    assert not result.ok and world.live("staging") == v1
    assert any("which it is rejected (leaks memory)" in w for w in warnings.seen), warnings.seen
    back = environments.history(world.ctx(), "staging")[-1]
    assert back["kind"] == "auto-rollback" and "rejected (leaks memory)" in str(back["detail"])


def test_a_hook_that_points_current_elsewhere_fails_the_deployment(world: World) -> None:
    """Recording 'v2 is live and healthy' while current names v1 (a hook repointed it) would make
    status and drift disagree: the deployment fails instead, and switches back."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    meddle = 'ln -sfn "releases/${GRAVEN_PREVIOUS#sha256:}" current.x && mv -T current.x current'
    v2 = world.version(2, env_toml("app", staging_prod(activate=meddle)))
    result = world.deploy(v2, "staging")
    assert not result.ok and "was changed while the hooks ran" in result.message, result.message
    assert world.live("staging") == v1
    assert environments.history(world.ctx(), "staging")[-2]["result"] == "failed"


def test_redaction_finds_the_usual_names_and_leaves_paths_and_key_names_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "DATABASE_URL": "postgresql://app:Sup3rS3cretPw@db/app",
        "STRIPE_API_KEY": "sk_live_51Habcdefgh",
        "GRAVEN_SIGNING_KEY": "production",  # a key's name or file, not a secret
        "CREDENTIALS_DIRECTORY": "/run/credentials/x",  # where systemd put them
    }
    line = "db=postgresql://app:Sup3rS3cretPw@db/app key=sk_live_51Habcdefgh;"
    line += " production in /run/credentials/x"
    assert redact_secrets(line, env) == "db=*** key=***; production in /run/credentials/x"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    padded = "x" * 190 + " token=sk_live_51Habcdefgh\n"  # crosses the 200 characters a record keeps
    assert "sk_live" not in HookResult("x", 1, padded, 1.0).describe()


def test_only_a_holder_in_the_same_pid_namespace_and_host_is_an_ancestor() -> None:
    """Two containers sharing a deploy root number their processes apart: a pid alone says nothing."""
    import os

    from graven.deploy.lock import LockHolder, _pid_namespace, holds_from_above

    here = {"pid": os.getppid(), "host": os.uname().nodename, "pidns": _pid_namespace()}
    assert holds_from_above(LockHolder(here))
    assert not holds_from_above(LockHolder({**here, "pidns": "pid:[1]"}))
    assert not holds_from_above(LockHolder({**here, "host": "elsewhere"}))


def test_a_rollback_whose_hook_moves_current_leaves_records_and_disk_agreeing(
    world: World, tmp_path: Path
) -> None:
    """A rollback whose activate moves current fails, and stays (a rollback does not switch back):
    current is put back on what graven rolled back to, which is what the records say is live."""
    from graven.service.deploy import rollback

    marker = tmp_path / "meddle"
    meddle = (
        f'if [ -f {marker} ]; then ln -sfn "releases/${{GRAVEN_PREVIOUS#sha256:}}" current.x && '
        "mv -T current.x current; fi"
    )
    v1 = world.version(1, env_toml("app", staging_prod(activate=meddle)))
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod()))
    assert world.deploy(v2, "staging").ok
    marker.touch()
    result = rollback(world.ctx(), "staging", world.options(), to=v1)
    assert not result.ok and "was changed while the hooks ran" in result.message, result.message
    state = {s.env: s for s in environments.status(world.ctx())}["staging"]
    assert state.live == world.live("staging") == v1


def test_a_password_in_any_url_of_a_hooks_output_is_redacted() -> None:
    """A docs review: the docs promised a database URL's password redacted, but only one held in a
    secret-looking variable was; a health check printing its connection string kept it."""
    env = {"APP_CONN": "postgresql://u:pw@h/db", "HOME": "/root"}
    line = "cannot connect to postgresql://u:pw@h/db (and mysql://root:s3cr@t@10.0.0.1:3306/x)"
    assert redact_secrets(line, env) == (
        "cannot connect to postgresql://u:***@h/db (and mysql://root:***@10.0.0.1:3306/x)"
    )
    # a user name alone, an address in a path, a port: nothing to hide
    kept = "https://git@host/r.git http://h:8080/a@b ssh://me@host"
    assert redact_secrets(kept, env) == kept


@pytest.mark.timeout(60)
def test_url_redaction_is_linear_and_leaves_what_is_no_password() -> None:
    """A review of the URL redaction: a 64 KiB line of letters with a "://" took seconds (quadratic),
    and JSON with a URL and an e-mail address lost text that is no password. No wall-clock bound (a
    busy machine is slow at times): 1 MiB takes some 30 ms, quadratically an hour, which the timeout
    (far from anything the linear redaction needs) ends."""
    line = "x" * (1 << 20) + " see http://" + "y" * (1 << 20)
    assert redact_secrets(line, {}) == line
    text = '{"url":"http://api:8080","email":"ops@example.com"}'
    assert redact_secrets(text, {}) == text
    assert redact_secrets("dsn='postgresql://app:pw@db/x'", {}) == "dsn='postgresql://app:***@db/x'"
    # what userinfo may hold (a review of the bounded pattern saw these leak), and a long token
    for password in ("pa,ss", "p(a)ss", "it's", "ab{c}d", "[secret]", "t" * 300):
        line = f"postgresql://app:{password}@db/x"
        assert redact_secrets(line, {}) == "postgresql://app:***@db/x", line


def test_a_switch_back_runs_the_hooks_of_the_verified_graven_toml_not_the_database_s(
    world: World, tmp_path: Path
) -> None:
    """A red-team review: a switch back ran the previous release's hooks from the deployments row's
    settings column, so whoever could edit the database ran commands as the operator. They come from
    the graven.toml the previous digest's verified provenance names."""
    import sqlite3

    marker, pwned = tmp_path / "activated", tmp_path / "pwned"
    v1 = world.version(1, env_toml("app", staging_prod(activate=f"echo v1 >> {marker}")))
    assert world.deploy(v1, "staging").ok
    with sqlite3.connect(world.home / "graven.db") as db:
        db.execute(
            "UPDATE deployments SET settings = json_set(settings, '$.activate', ?) WHERE digest = ?",
            (f"id > {pwned}", v1),
        )
    bad = world.version(2, env_toml("app", staging_prod(health="false")))
    assert not world.deploy(bad, "staging").ok and world.live("staging") == v1
    assert not pwned.exists()
    assert marker.read_text() == "v1\nv1\n"  # its own activate, read from its graven.toml, ran again


def test_a_switch_that_failed_before_current_changed_switches_nothing_back(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing went live, so the previous release's activate does not run again, no automatic
    rollback is recorded, and the one line says what is still live. Before, the failure was taken for
    a failed health check: the old release's hooks ran again and an auto-rollback row was written
    (and a held drift check of the release still live was thrown away for it)."""
    marker = tmp_path / "activated"
    v1 = world.version(1, env_toml("app", staging_prod(activate=f"echo v1 >> {marker}")))
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod(activate=f"echo v2 >> {marker}")))
    fail_switch_to(monkeypatch, v2)
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to is None
    assert "the switch to" in result.message and "nothing was switched" in result.message
    assert f"{v1[7:19]} is still live in staging" in result.message
    assert "No space left on device" in result.message
    assert world.live("staging") == v1
    assert marker.read_text() == "v1\n"  # no hook ran again
    history = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["kind"], h["result"]) for h in history] == [
        (v1, "deploy", "ok"),
        (v2, "deploy", "failed"),
    ]
    state = environments.status(world.ctx())
    assert [(s.env, s.live) for s in state] == [("staging", v1)]
    monkeypatch.undo()
    assert world.deploy(v2, "staging").ok  # the next deploy goes as any


def test_a_rollback_whose_switch_failed_holds_nothing_and_leaves_what_is_live(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the environment was recorded as rolled back and held on a digest that ``current`` did
    not name."""
    from graven.service.deploy import rollback

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    fail_switch_to(monkeypatch, v1)
    result = rollback(world.ctx(), "staging", world.options(reason="bad v2"))
    assert not result.ok and "nothing was switched" in result.message
    assert f"{v2[7:19]} is still live in staging" in result.message
    assert world.live("staging") == v2
    state = environments.status(world.ctx())
    assert [(s.live, s.held) for s in state] == [(v2, False)]


def test_a_first_deploy_whose_switch_failed_says_nothing_is_live(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    fail_switch_to(monkeypatch, v1)
    result = world.deploy(v1, "staging")
    assert not result.ok and "nothing was switched: nothing is live in staging" in result.message
    assert world.live("staging") is None
    assert [(h["digest"], h["result"]) for h in environments.history(world.ctx(), "staging")] == [
        (v1, "failed")
    ]


def test_a_config_link_not_restored_on_a_switch_back_is_said_even_when_the_old_release_is_healthy(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch back restores ``current`` but not the config link (a full disk): the record and the
    one line say so whatever the old release's health check does. Before, its passing health check
    wiped the note (and a release without a health check kept it)."""
    from graven.deploy.switch import point_symlink as real
    from graven.errors import BackendError
    from graven.service import deploy_records

    v1 = world.build()  # a health check that passes
    assert world.deploy(v1, "staging").ok
    bad = world.version(2, env_toml("app", staging_prod(health=FAIL)))

    def full(link: Path, target: str) -> bool:
        if link.name != "current":
            raise BackendError(f"cannot point {link} at {target}: No space left on device")
        return real(link, target)

    monkeypatch.setattr(deploy_records, "point_symlink", full)
    result = world.deploy(bad, "staging")
    assert not result.ok and world.live("staging") == v1
    assert result.rolled_back_to == v1 and result.rolled_back_health == "healthy"
    assert "config link not restored" in result.message, result.message
    back = environments.history(world.ctx(), "staging")[-1]
    assert back["kind"] == "auto-rollback" and back["health"] == "healthy"
    assert "config link not restored" in str(back["detail"])


def test_a_secret_cut_by_the_kept_tail_of_a_long_output_is_redacted_all_the_same(tmp_path: Path) -> None:
    """Only the last 4 KiB of a hook's output are kept: where that cut falls inside a secret, what is
    left of it (its end) no longer equals the secret, and was recorded as it is, in the audit log."""
    from graven.deploy.hooks import run_hook

    secret = "s3cr3t-" + "abcdefghij" * 4
    env = dict(os.environ, API_TOKEN=secret)
    command = (
        "python3 -c 'import os, sys; "
        'sys.stdout.write("x" * 100 + os.environ["API_TOKEN"] + "y" * 4076); sys.exit(3)\''
    )
    result = run_hook(command, cwd=tmp_path, env=env, timeout=30)
    assert result.returncode == 3
    assert len(result.output) <= 4096
    shown = result.describe()
    assert secret[-20:] not in shown and secret[-20:] not in result.output, shown


def test_a_deploy_whose_activate_leaves_a_daemon_on_its_output_warns(world: World, tmp_path: Path) -> None:
    """`activate = "./server &"`: the server writes into the hook's output, a temp file graven
    removed, for as long as it runs. The deployment succeeds, and says so once, naming the process."""
    import signal

    from graven.service.context import NullReporter
    from graven.service.deploy import deploy

    pids = tmp_path / "daemon.pid"

    class _Warnings(NullReporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def warn(self, message: str) -> None:
            self.lines.append(message)

    digest = world.version(2, env_toml("app", staging_prod(activate=f"sleep 600 & echo $! > {pids}")))
    reporter = _Warnings()
    try:
        result = deploy(world.ctx(reporter), digest, "staging", world.options())
        assert result.ok
    finally:
        if pids.exists():
            os.kill(int(pids.read_text()), signal.SIGKILL)
    leaks = [line for line in reporter.lines if "left 1 process running" in line]
    assert len(leaks) == 1 and f"(pid {pids.read_text().strip()})" in leaks[0], reporter.lines
