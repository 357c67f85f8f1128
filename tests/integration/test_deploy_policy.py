"""Deployment policy: trust, requires, holds, rejection, health checks, retention, settings from the
verified provenance only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from graven.errors import ConfigError, InputError, IntegrityError, NotFoundError, PolicyError
from graven.model.digest import Digest
from graven.service import environments
from graven.service.deploy import deploy, promote, rollback
from helpers_deploy import BASE_FILES, World, env_toml, staging_prod, tree_problems
from helpers_repo import run_cli


def log_events(world: World) -> list[dict[str, object]]:
    return [e.to_json() for e, _ in world.ctx().audit.entries()]


def test_a_digest_never_healthy_in_staging_is_refused_for_prod(world: World) -> None:
    digest = world.build()
    with pytest.raises(PolicyError, match="never deployed healthy to staging, which prod requires"):
        world.deploy(digest, "prod")
    assert world.live("prod") is None
    # a failed health check in staging does not count either
    bad = world.version(2, env_toml("app", staging_prod(health="false")))
    assert not world.deploy(bad, "staging").ok
    with pytest.raises(PolicyError, match="never deployed healthy"):
        world.deploy(bad, "prod")
    good = world.deploy(digest, "staging")
    assert good.ok and good.health == "healthy"
    assert world.deploy(digest, "prod").ok


def test_promote_deploys_exactly_what_is_live_and_healthy(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)  # built, never deployed: promote must not pick it up
    result = promote(world.ctx(), "staging", "prod", world.options())
    assert result.ok and result.digest == v1 and result.kind == "promote"
    assert world.live("prod") == v1
    assert v2 != v1
    with pytest.raises(NotFoundError):
        promote(world.ctx(), "qa", "prod", world.options())


def test_override_bypasses_requires_and_is_recorded(world: World) -> None:
    digest = world.build()
    with pytest.raises(InputError, match="needs --reason"):
        world.deploy(digest, "prod", override=True)
    result = world.deploy(digest, "prod", override=True, reason="staging is down, hotfix")
    assert result.ok and result.overridden == ("staging",)
    events = [(e["event"], e["env"], e["reason"]) for e in log_events(world)]
    assert ("override", "prod", "requires staging bypassed: staging is down, hotfix") in events
    history = environments.history(world.ctx(), "prod")
    assert history[-1]["override"] is True


def test_unsigned_artifacts_are_refused(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    archive = tmp_path / "a.tar"
    assert run_cli(capsys, "export", digest, "-o", str(archive))[0] == 0
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "other-home"))
    assert run_cli(capsys, "import", str(archive))[0] == 0
    code, _, err = run_cli(capsys, "deploy", digest, "staging", "--root", str(world.root))
    assert code == 1
    assert "unsigned" in err and err.count("\n") == 1
    assert not (world.root / "staging").exists()
    _, out, _ = run_cli(capsys, "log", "--json")
    assert [e["event"] for e in json.loads(out)][-1] == "verify-failure"


def test_untrusted_keys_are_refused_per_environment(world: World, tmp_path: Path) -> None:
    digest = world.build()
    from graven.signing.keys import KeyStore

    other = KeyStore(tmp_path / "other-keys")
    other.generate("release", "ed25519")
    (tmp_path / "release.pub").write_bytes(other.export_public("release"))
    policy = tmp_path / "policy.toml"
    policy.write_text('[env.prod]\nkeys = ["release.pub"]\n')
    assert world.deploy(digest, "staging", policy_file=policy).ok  # staging trusts the default keys
    with pytest.raises(PolicyError, match="cannot be deployed to prod"):
        world.deploy(digest, "prod", policy_file=policy)
    for path in (world.home / "trust").iterdir():  # nobody trusted at all
        path.unlink()
    with pytest.raises(PolicyError, match="no trusted keys"):
        world.deploy(digest, "staging")


def test_a_refusal_for_an_environment_with_its_own_keys_names_its_section(
    world: World, tmp_path: Path
) -> None:
    """prod trusts only the keys of its [env.prod] section: a deploy refused there said "trust the
    signing key for prod (graven keys trust)", which trusts it everywhere but prod (and added that
    wrong remedy after the right one when the section had no key left)."""
    digest = world.build()
    from graven.signing.keys import KeyStore

    other = KeyStore(tmp_path / "other-keys")
    other.generate("release", "ed25519")
    (tmp_path / "release.pub").write_bytes(other.export_public("release"))
    policy = tmp_path / "policy.toml"
    policy.write_text('[env.prod]\nkeys = ["release.pub"]\n')
    with pytest.raises(PolicyError) as refused:
        world.deploy(digest, "prod", policy_file=policy)
    message = str(refused.value)
    assert f"[env.prod] keys of {policy}" in message and "graven keys trust" not in message
    policy.write_text("[env.prod]\nkeys = []\n")
    with pytest.raises(PolicyError) as refused:
        world.deploy(digest, "prod", policy_file=policy)
    message = str(refused.value)
    assert "no trusted keys for environment prod" in message and "graven keys trust" not in message
    for path in (world.home / "trust").iterdir():  # an environment without a section: the home's trust
        path.unlink()
    with pytest.raises(PolicyError, match=r"graven keys trust") as refused:
        world.deploy(digest, "staging", policy_file=policy)
    assert str(refused.value).count("graven keys trust") == 1


def test_settings_come_from_the_graven_toml_named_by_verified_provenance(world: World) -> None:
    digest = world.build()
    # Someone rewrites the database's idea of the pipeline: it must not matter.
    elsewhere, marker = world.root.parent / "evil-target", world.root.parent / "pwned"
    evil = world.ctx().store.put(
        env_toml("app", {"staging": {"path": str(elsewhere), "activate": f"touch {marker}"}}).encode()
    )
    db = sqlite3.connect(world.home / "graven.db")
    with db:
        db.execute("UPDATE artifacts SET pipeline_digest = ?", (str(evil),))
    db.close()
    result = world.deploy(digest, "staging")
    assert result.ok and result.path == str(world.root / "staging")
    assert not elsewhere.exists() and not marker.exists()  # a regression here stays in the test's tmp dir


def test_a_missing_pipeline_object_is_an_integrity_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graven.service.provenance import latest_envelope
    from graven.signing.bundle import load_attestation
    from graven.signing.provenance import parse_statement

    digest = world.build()
    ctx = world.ctx()
    envelope = load_attestation(latest_envelope(ctx, Digest.parse(digest)))
    pipeline = parse_statement(envelope.payload).pipeline_digest
    assert pipeline is not None
    real_read = ctx.store.read

    def read(wanted: Digest) -> bytes:
        if str(wanted) == pipeline:
            raise IntegrityError(f"object {wanted} is missing from the store")
        return real_read(wanted)

    monkeypatch.setattr(ctx.store, "read", read)
    with pytest.raises(IntegrityError, match=r"graven\.toml its provenance names"):
        deploy(ctx, digest, "staging", world.options())
    assert world.live("staging") is None


def test_bad_input_exits_2_and_says_what_to_do(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    digest = world.build()
    code, _, err = run_cli(capsys, "deploy", digest, "qa", "--root", str(world.root))
    assert code == 2 and "'qa' is not defined" in err and "[env.qa]" in err
    code, _, err = run_cli(capsys, "deploy", "ffff0000", "staging", "--root", str(world.root))
    assert code == 2 and "no artifact matches" in err
    code, _, err = run_cli(capsys, "deploy", digest, "staging")
    assert code == 2 and "GRAVEN_DEPLOY_ROOT" in err
    code, _, err = run_cli(capsys, "deploy", digest, "Bad/Name", "--root", str(world.root))
    assert code == 2 and "invalid environment name" in err
    code, _, err = run_cli(
        capsys, "deploy", digest, "staging", "--override-policy", "--root", str(world.root)
    )
    assert code == 2 and "--reason" in err
    code, _, err = run_cli(capsys, "rollback", "staging")
    assert code == 2 and "never been deployed" in err
    bad_config = world.version(3, env_toml("app", {"staging": {"path": "staging", "config": "nope.toml"}}))
    with pytest.raises(ConfigError, match="not a file or directory of the artifact"):
        world.deploy(bad_config, "staging")


def test_a_failing_health_check_rolls_back_by_itself(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod(health="exit 7")))
    result = world.deploy(v2, "staging")
    assert not result.ok and result.health == "failed" and result.rolled_back_to == v1
    assert "exit 7" in result.message and "switched back" in result.message
    assert world.live("staging") == v1
    assert (world.env_dir("staging") / "config").read_text().startswith("port = 8001")
    status = {s.env: s for s in environments.status(world.ctx())}["staging"]
    assert status.live == v1 and status.kind == "auto-rollback" and status.health == "healthy"
    history = environments.history(world.ctx(), "staging")
    assert [(h["kind"], h["result"]) for h in history] == [
        ("deploy", "ok"),
        ("deploy", "failed"),
        ("auto-rollback", "ok"),
    ]
    events = [(e["event"], e["result"]) for e in log_events(world) if e["env"] == "staging"]
    assert events[-2:] == [("deploy", "failed"), ("rollback", "ok")]


def test_a_first_deploy_that_fails_health_leaves_nothing_live(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = world.version(2, env_toml("app", staging_prod(health="false")))
    code, out, err = run_cli(capsys, "deploy", bad, "staging", "--root", str(world.root), "--json")
    assert code == 1 and json.loads(out)["ok"] is False
    assert "nothing was live before" in err
    assert world.live("staging") is None


def test_failing_activate_also_rolls_back(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    marker = world.root / "activated"
    v2 = world.version(2, env_toml("app", staging_prod(activate=f"echo $GRAVEN_DIGEST >> {marker}; exit 4")))
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1 and "activate" in result.message
    assert marker.read_text().split() == [v2]


def test_rollback_holds_the_environment_until_unhold(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = world.build()
    v2 = world.version(2)
    assert world.deploy(v1, "staging").ok and world.deploy(v2, "staging").ok
    result = rollback(world.ctx(), "staging", world.options(reason="v2 breaks checkout"))
    assert result.ok and result.digest == v1 and result.held and result.reused_release
    assert world.live("staging") == v1
    v3 = world.version(3)
    with pytest.raises(PolicyError, match=r"held on .*graven unhold staging"):
        world.deploy(v3, "staging")
    with pytest.raises(PolicyError, match="held"):
        world.deploy(v2, "staging")
    assert world.deploy(v1, "staging").ok  # the held digest itself may be redeployed
    code, out, _ = run_cli(capsys, "unhold", "staging", "--json")
    assert code == 0 and json.loads(out)["changed"] is True
    assert world.deploy(v3, "staging").ok
    events = [e["event"] for e in log_events(world) if e["env"] == "staging"]
    assert "rollback" in events and "hold" in events and "unhold" in events
    # roll back to a named digest from the history
    result = rollback(world.ctx(), "staging", world.options(), to=v2[7:20])
    assert result.ok and world.live("staging") == v2
    never = world.version(4)
    with pytest.raises(PolicyError, match="never live in staging"):
        rollback(world.ctx(), "staging", world.options(), to=never)


def test_a_rejected_digest_is_refused_everywhere(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    code, _, err = run_cli(capsys, "reject", v1[7:19], "--reason", "CVE-2026-1234")
    assert code == 0 and "still live in staging" in err
    for env in ("staging", "prod"):
        with pytest.raises(PolicyError, match=r"rejected \(CVE-2026-1234\)"):
            world.deploy(v1, env, override=True, reason="please")
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    with pytest.raises(PolicyError, match="rejected"):
        rollback(world.ctx(), "staging", world.options())
    code, _, err = run_cli(capsys, "reject", v1, "--reason", "again")
    assert code == 0
    assert [e["event"] for e in log_events(world)].count("reject") == 1


def test_hold_refuses_promote(world: World) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok and promote(world.ctx(), "staging", "prod", world.options()).ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    for blank in ("", "  \n"):  # the library refuses it as the CLI does (as retire and reject do)
        with pytest.raises(InputError, match="hold needs --reason TEXT"):
            environments.hold(world.ctx(), "prod", blank)
    environments.hold(world.ctx(), "prod", "release freeze")
    with pytest.raises(PolicyError, match="prod is held"):
        promote(world.ctx(), "staging", "prod", world.options())


def test_retention_keeps_live_previous_and_held_and_drops_failed(world: World) -> None:
    toml = env_toml("app", staging_prod(keep=2))
    digests = [world.version(n, toml) for n in range(1, 5)]
    for digest in digests[:3]:
        assert world.deploy(digest, "staging").ok
    releases = world.env_dir("staging") / "releases"
    on_disk = {p.name for p in releases.iterdir()}
    assert on_disk == {digests[2][7:], digests[1][7:]}  # live and previous; keep = 2
    bad = world.version(5, env_toml("app", staging_prod(keep=2, health="false")))
    assert not world.deploy(bad, "staging").ok
    assert world.deploy(digests[3], "staging").ok
    on_disk = {p.name for p in releases.iterdir()}
    assert on_disk == {digests[3][7:], digests[2][7:]}  # the failed release is gone
    # a rollback holds: the held release survives later retention with keep = 1
    assert rollback(world.ctx(), "staging", world.options()).ok
    assert world.live("staging") == digests[2]
    for path in releases.iterdir():
        manifest = world.manifest("sha256:" + path.name)
        assert tree_problems(path, manifest) == []


def test_every_change_is_in_the_audit_log_and_the_log_verifies(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = world.build()
    root = str(world.root)
    assert run_cli(capsys, "deploy", v1, "staging", "--root", root)[0] == 0
    assert run_cli(capsys, "promote", "staging", "prod", "--root", root)[0] == 0
    v2 = world.version(2)
    assert run_cli(capsys, "deploy", v2, "staging", "--root", root, "--reason", "feature x")[0] == 0
    assert run_cli(capsys, "rollback", "staging", "--root", root, "--reason", "slow")[0] == 0
    assert run_cli(capsys, "unhold", "staging")[0] == 0
    assert run_cli(capsys, "hold", "prod", "--reason", "freeze")[0] == 0
    assert run_cli(capsys, "reject", v2, "--reason", "slow")[0] == 0
    events = [(e["event"], e["env"]) for e in log_events(world) if e["event"] not in ("build", "sign")]
    assert events == [
        ("deploy", "staging"),
        ("promote", "prod"),
        ("deploy", "staging"),
        ("rollback", "staging"),
        ("hold", "staging"),
        ("unhold", "staging"),
        ("hold", "prod"),
        ("reject", None),
    ]
    code, out, _ = run_cli(capsys, "log", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"]
    assert BASE_FILES  # the world was built from the base files


def _hooks_toml(marker: Path, tag: str) -> str:
    """staging and prod whose activate appends ``tag`` to ``marker``; graven.toml outside the artifact
    (so a commit that changes only it gives the same digest, with one more provenance)."""
    envs = staging_prod(activate=f"echo {tag}-$GRAVEN_ENV >> {marker}")
    return env_toml("app", envs).replace(
        'name = "app"\n', 'name = "app"\ninclude = ["app/**", "bin/**", "config/**"]\n', 1
    )


def test_promote_keeps_the_graven_toml_that_ran_in_the_source_environment(
    world: World, tmp_path: Path
) -> None:
    """A review changed only graven.toml after staging was healthy: same digest, a newer provenance
    with other hooks, and promote ran those in prod, never tested anywhere. It runs what staging ran."""
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "tested"))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    world.commit({}, _hooks_toml(marker, "untested"))
    assert world.build() == digest
    result = promote(world.ctx(), "staging", "prod", world.options())
    assert result.ok, result.message
    assert marker.read_text().split() == ["tested-staging", "tested-prod"]
    # deployed by name into prod, which requires staging: what ran in staging too (a review of the
    # promote fix went round it this way), unless the policy is overridden
    assert world.deploy(digest, "prod").ok
    assert marker.read_text().split()[-1] == "tested-prod"
    assert world.deploy(digest, "prod", override=True, reason="the new hooks, on purpose").ok
    assert marker.read_text().split()[-1] == "untested-prod"
    assert world.deploy(digest, "staging").ok  # staging requires nothing: the newest
    assert marker.read_text().split()[-1] == "untested-staging"
    assert world.deploy(digest, "prod").ok  # ... and now that ran healthy there
    assert marker.read_text().split()[-1] == "untested-prod"


def test_a_rollback_keeps_the_graven_toml_that_ran_when_the_digest_was_live(
    world: World, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "first"))
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    world.commit({"app/version.txt": None}, _hooks_toml(marker, "later"))  # v1's files again
    assert world.build() == v1
    result = rollback(world.ctx(), "staging", world.options())
    assert result.ok and world.live("staging") == v1
    assert marker.read_text().split() == ["first-staging"] * 3


def test_a_promote_refuses_when_the_graven_toml_that_ran_is_not_trusted_for_the_target(
    world: World, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "tested"))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    with world.ctx().db.begin() as conn:  # as if staging ran a graven.toml no prod-trusted build named
        conn.execute("UPDATE deployments SET pipeline_digest = :p", {"p": "sha256:" + "0" * 64})
    with pytest.raises(PolicyError, match=r"ran in staging with the graven.toml 000000000000, which no"):
        promote(world.ctx(), "staging", "prod", world.options())
    assert world.live("prod") is None


def _envs_toml(marker: Path, tag: str, envs: dict[str, dict[str, object]]) -> str:
    """graven.toml outside the artifact whose environments' activate append ``tag-ENV`` to ``marker``."""
    full = {name: {"path": name, "activate": f"echo {tag}-$GRAVEN_ENV >> {marker}", **extra}
            for name, extra in envs.items()}  # fmt: skip
    return env_toml("app", full).replace('name = "app"\n', 'name = "app"\ninclude = ["app/**"]\n', 1)


def test_a_new_environment_needs_its_graven_toml_to_have_run_in_what_it_requires(
    world: World, tmp_path: Path
) -> None:
    """The graven.toml tested in staging has no [env.canary]; a graven.toml-only commit adds it (a
    review saw the deploy refused naming a section that exists). Its hooks never ran in staging: the
    refusal says to deploy there first, and then it goes."""
    marker = tmp_path / "ran"
    world.commit({}, _envs_toml(marker, "a", {"staging": {}}))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    world.commit({}, _envs_toml(marker, "b", {"staging": {}, "canary": {"requires": ["staging"]}}))
    assert world.build() == digest
    with pytest.raises(
        PolicyError, match=r"never ran healthy in staging .* deploy the digest to staging first"
    ):
        world.deploy(digest, "canary")
    assert world.deploy(digest, "staging").ok  # with b now
    assert world.deploy(digest, "canary").ok
    assert marker.read_text().split() == ["a-staging", "b-staging", "b-canary"]


def test_graven_tomls_healthy_in_different_required_environments_are_refused(
    world: World, tmp_path: Path
) -> None:
    """A review: a healthy in qa only, b in staging only, prod requires both: b's prod hooks ran."""
    marker = tmp_path / "ran"
    envs: dict[str, dict[str, object]] = {"staging": {}, "qa": {}, "prod": {"requires": ["staging", "qa"]}}
    world.commit({}, _envs_toml(marker, "a", envs))
    digest = world.build()
    assert world.deploy(digest, "qa").ok
    world.commit({}, _envs_toml(marker, "b", envs))
    assert world.build() == digest
    assert world.deploy(digest, "staging").ok
    with pytest.raises(
        PolicyError, match=r"never ran healthy in qa \(prod requires it\): deploy the digest to qa"
    ):
        world.deploy(digest, "prod")
    with pytest.raises(PolicyError, match=r"never ran healthy in qa .* \(`graven promote staging qa`\)"):
        promote(world.ctx(), "staging", "prod", world.options())  # the same rule for a promote
    assert world.deploy(digest, "prod", override=True, reason="on purpose").ok
    assert marker.read_text().split()[-1] == "b-prod"


def test_with_several_required_environments_the_graven_toml_must_have_run_in_all(
    world: World, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    envs: dict[str, dict[str, object]] = {"staging": {}, "qa": {}, "prod": {"requires": ["staging", "qa"]}}
    world.commit({}, _envs_toml(marker, "a", envs))
    digest = world.build()
    assert world.deploy(digest, "staging").ok and world.deploy(digest, "qa").ok
    world.commit({}, _envs_toml(marker, "b", envs))
    assert world.build() == digest
    assert world.deploy(digest, "qa").ok  # b healthy in qa only
    assert world.deploy(digest, "prod").ok
    assert marker.read_text().split()[-1] == "a-prod"  # a review saw b's prod hook run


def test_an_old_record_without_its_graven_toml_does_not_switch_the_rule_off(
    world: World, tmp_path: Path
) -> None:
    """A review: one healthy staging record from before pipeline_digest (an upgraded home) made the
    rule give up, although a newer record named the graven.toml that ran."""
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "tested"))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    with world.ctx().db.begin() as conn:
        conn.execute("UPDATE deployments SET pipeline_digest = NULL")
    assert world.deploy(digest, "staging").ok  # recorded with its graven.toml this time
    world.commit({}, _hooks_toml(marker, "untested"))
    assert world.build() == digest
    assert world.deploy(digest, "prod").ok
    assert marker.read_text().split()[-1] == "tested-prod"


def test_an_old_record_counts_for_a_graven_toml_built_before_it(world: World, tmp_path: Path) -> None:
    """A review: a revert to the graven.toml an upgraded home had run (its record older than
    pipeline_digest) was refused in favour of a newer one. An old record may have run what was built
    by then, never what was built later (the test above)."""
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "first"))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    with world.ctx().db.begin() as conn:
        conn.execute("UPDATE deployments SET pipeline_digest = NULL")
    world.commit({}, _hooks_toml(marker, "second"))
    assert world.build() == digest
    assert world.deploy(digest, "staging").ok  # recorded with "second"
    world.commit({}, _hooks_toml(marker, "first"))  # the revert: first's graven.toml again
    assert world.build() == digest
    assert world.deploy(digest, "prod").ok
    assert marker.read_text().split()[-1] == "first-prod"


def test_a_switch_back_record_does_not_make_an_old_record_new(world: World, tmp_path: Path) -> None:
    """A review: staging's old record (no pipeline_digest) was copied, with a new time, by the switch
    back after a failed health check, and then counted for a graven.toml built after the original."""
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "tested"))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    with world.ctx().db.begin() as conn:
        conn.execute("UPDATE deployments SET pipeline_digest = NULL")
    world.commit({}, _hooks_toml(marker, "untested"))
    assert world.build() == digest
    bad = world.version(9, env_toml("app", staging_prod(health="false")))
    assert not world.deploy(bad, "staging").ok  # switched back to digest: a new record, copied
    assert world.live("staging") == digest
    assert world.deploy(digest, "prod").ok
    assert marker.read_text().split()[-1] == "tested-prod"  # not "untested": built after the record


def test_a_promote_refusal_for_its_own_source_says_to_deploy_there_again(
    world: World, tmp_path: Path
) -> None:
    """A review: the hint said `graven promote staging staging` (which refuses) when the environment
    missing the graven.toml was the promote's own source."""
    marker = tmp_path / "ran"
    world.commit({}, _hooks_toml(marker, "x"))
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    with world.ctx().db.begin() as conn:  # an upgraded home, the artifact imported (no build here)
        conn.execute("UPDATE deployments SET pipeline_digest = NULL")
        conn.execute("DELETE FROM builds")
    assert world.build() == digest  # built here only now: after staging's record
    with pytest.raises(PolicyError, match=r"promote it there first \(`graven deploy \w+ staging`\)"):
        promote(world.ctx(), "staging", "prod", world.options())
    assert world.deploy(digest, "staging").ok  # as it says
    assert promote(world.ctx(), "staging", "prod", world.options()).ok


def test_retention_goes_by_the_order_of_deployments_not_the_clock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time review: retention kept the releases with the latest wall-clock finish; after the clock
    was stepped back (an NTP correction) it deleted the newer releases and kept the oldest."""
    from graven.service import deploy_records

    toml = env_toml("app", staging_prod(keep=3))
    digests = [world.version(n, toml) for n in range(1, 6)]
    times = ["2030-06-01T00:00:00.000000Z"] + [f"2030-01-01T00:00:{i:02d}.000000Z" for i in range(60)]
    clock = iter(times)  # the first deployment's record, then the clock stepped back and going on
    monkeypatch.setattr(deploy_records, "utc_now", lambda: next(clock))
    for digest in digests:
        assert world.deploy(digest, "staging").ok
    releases = world.env_dir("staging") / "releases"
    assert {p.name for p in releases.iterdir()} == {d[7:] for d in digests[2:]}
    with world.ctx().db.connect() as conn:  # the first record did get the later time
        first = conn.execute("SELECT finished_at FROM deployments ORDER BY id LIMIT 1").scalar_one()
    assert first == times[0]


@pytest.mark.parametrize("loose", ["policy", "key", "directory"])
def test_a_policy_file_or_key_another_user_could_change_is_refused(
    world: World, tmp_path: Path, loose: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --policy file, and each key file it names, are held to what the trust directory is: whoever
    could rewrite them would choose which keys deploy (a world-writable policy naming a
    world-writable key was accepted)."""
    digest = world.build()
    from graven.signing.keys import KeyStore

    where = tmp_path / "policy"
    where.mkdir(mode=0o755)
    other = KeyStore(tmp_path / "other-keys")
    other.generate("release", "ed25519")
    key = where / "release.pub"
    key.write_bytes(other.export_public("release"))
    policy = where / "policy.toml"
    policy.write_text('keys = ["release.pub"]\n[env.prod]\nkeys = ["release.pub"]\n')
    assert world.deploy(digest, "staging", policy_file=policy).ok  # as strict as it must be: accepted
    loosened = {"policy": policy, "key": key, "directory": where}[loose]
    loosened.chmod(0o777 if loose == "directory" else 0o666)
    with pytest.raises(ConfigError, match=r"another user could change the keys .*policy\.toml trusts"):
        world.deploy(digest, "staging", policy_file=policy)
    code, _, err = run_cli(capsys, "verify", digest, "--policy", str(policy))
    assert code == 2 and err.count("\n") == 1 and f"chmod go-w {loosened}" in err


def test_an_old_release_that_cannot_be_removed_fails_neither_this_deployment_nor_the_next(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention runs once the deployment is live and recorded: an old release it cannot remove (a
    directory in it that the service's user made, say, which a deployer that is not root cannot
    empty) is a warning, not exit 1 (which says that what was live stays live), and what it left
    aside does not stop the next deployment either."""
    from graven.deploy.materialize import remove_tree as real
    from graven.deploy.statdb import StatTable
    from graven.errors import BackendError
    from graven.service import deploy_release

    toml = env_toml("app", staging_prod(keep=1))
    v1, v2, v3, v4 = (world.version(n, toml) for n in range(1, 5))
    for digest in (v1, v2):
        assert world.deploy(digest, "staging").ok

    def stuck(path: Path, table: StatTable | None = None, *, parent_nofollow: bool = False) -> None:
        if path.name.startswith(".trash-"):
            raise BackendError(f"cannot remove {path}: Permission denied")
        real(path, table, parent_nofollow=parent_nofollow)

    monkeypatch.setattr(deploy_release, "remove_tree", stuck)
    root = str(world.root)
    code, out, err = run_cli(capsys, "deploy", v3, "staging", "--root", root)
    assert code == 0, err
    assert world.live("staging") == v3
    assert f"{v1[7:19]} could not be removed" in err and "Permission denied" in err
    assert "removed old releases" not in out
    code, out, err = run_cli(capsys, "deploy", v4, "staging", "--root", root)
    assert code == 0, err
    assert world.live("staging") == v4
    assert "could not be removed" in err
    releases = world.env_dir("staging") / "releases"
    assert {p.name for p in releases.iterdir() if not p.name.startswith(".")} == {v4[7:], v3[7:]}


def test_hold_unhold_retire_and_an_automatic_rollback_name_their_commit_in_the_log(world: World) -> None:
    """A review of the reporting commands: these entries said `"commit": null` although the artifact's
    commit is recorded, so `graven log` could not tell which commit an incident was about."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    bad = world.version(2, env_toml("app", staging_prod(health="false")))
    assert not world.deploy(bad, "staging").ok  # fails its health check: rolled back to v1 by itself
    environments.hold(world.ctx(), "staging", "incident 12")
    environments.unhold(world.ctx(), "staging", "fixed")
    environments.retire(world.ctx(), "staging", "moved")
    with world.ctx().db.connect() as conn:
        commit_of_v1 = environments.commit_of(conn, v1)
    assert commit_of_v1
    events = {str(e["event"]): e for e in log_events(world) if e.get("env") == "staging"}
    for name in ("hold", "unhold", "retire", "rollback"):
        assert events[name]["artifact"] == v1 and events[name]["commit"] == commit_of_v1, events[name]
