"""The home's trust policy, ``GRAVEN_HOME/policy.toml``: read by every command that checks provenance
(deploy, promote, rollback, verify, drift), so that an operator who trusts a key for one environment
says it once. Before it, such a policy was a ``--policy`` file given to deploy and verify only: drift
then checked the provenance with the default keys and applied no ignore globs, and ``verify --env``
without the file said that no key was trusted for the environment."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_drift_cli import drift
from test_drift_snapshot import settled, snapshot_path

from conftest import assert_cli_error
from graven.errors import PolicyError
from graven.signing.keys import KeyStore, load_public_key
from helpers_deploy import World
from helpers_repo import run_cli


def _release_key(tmp_path: Path) -> tuple[Path, Path]:
    """A signing key this home does not trust (its trust/ has only the home's own key): the private
    key file and the public key's PEM file."""
    store = KeyStore(tmp_path / "release-keys")
    store.generate("release", "ed25519")
    public = tmp_path / "release.pub"
    public.write_bytes(store.export_public("release"))
    return tmp_path / "release-keys" / "release.key", public


def _policy(world: World, text: str) -> Path:
    path = world.home / "policy.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_home_policy_decides_what_an_environment_trusts(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()  # signed by the home's own key, trusted in trust/
    _, public = _release_key(tmp_path)
    _policy(world, f'[env.prod]\nkeys = ["{public}"]\n')
    assert world.deploy(digest, "staging").ok  # staging: the default keys
    with pytest.raises(PolicyError, match="cannot be deployed to prod"):
        world.deploy(digest, "prod")
    code, _, err = run_cli(capsys, "verify", digest, "--env", "prod")
    assert code == 1 and err.count("\n") == 1
    code, _, _ = run_cli(capsys, "verify", digest, "--env", "staging")
    assert code == 0
    # --policy FILE is used instead of the home's policy, for that command only
    instead = tmp_path / "instead.toml"
    instead.write_text("")
    instead.chmod(0o600)
    assert world.deploy(digest, "prod", policy_file=instead).ok
    code, _, _ = run_cli(capsys, "verify", digest, "--env", "prod", "--policy", str(instead))
    assert code == 0


def test_a_key_only_the_home_policy_trusts_needs_no_flag_anywhere(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = _release_key(tmp_path)
    monkeypatch.setenv("GRAVEN_SIGNING_KEY", str(private))
    digest = world.build()  # signed by a key that is not in trust/
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 1 and "trusted" in err  # no policy yet: refused
    _policy(world, f'keys = ["{public}"]\n[env.prod]\nkeys = ["{public}"]\n')
    assert world.deploy(digest, "staging").ok
    assert world.deploy(digest, "prod").ok
    code, out, err = run_cli(capsys, "verify", digest, "--env", "prod", "--json")
    assert code == 0, err
    assert json.loads(out)["provenance"]["ok"] is True
    code, out, err = run_cli(capsys, "drift", "--full")
    assert code == 0, out + err
    assert "does not verify" not in out + err  # the ignore globs come from the verified graven.toml
    # the live digest: nothing before it
    assert_cli_error(
        run_cli(capsys, "rollback", "prod", "--to", digest), 2, "already live in prod; nothing to roll back"
    )
    (world.home / "policy.toml").unlink()
    code, out, err = run_cli(capsys, "drift", "--full")
    assert "does not verify" in out + err  # what the policy changed


def test_a_home_policy_another_user_could_change_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    policy = _policy(world, "")
    policy.chmod(0o666)
    code, _, err = run_cli(capsys, "deploy", digest, "staging", "--root", str(world.root))
    assert code == 2 and err.count("\n") == 1
    assert f"chmod go-w {policy}" in err
    assert world.live("staging") is None


def test_an_invalid_home_policy_is_named(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    digest = world.build()
    policy = _policy(world, "[env.prod]\nkeys = []\nrevoked = []\n")
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 2
    assert err == f"graven: error: {policy}: [env.prod]: unknown setting 'revoked' (expected: keys)\n"


def test_keys_list_shows_the_home_policy(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, public = _release_key(tmp_path)
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    assert code == 0 and json.loads(out)["policy"] is None
    policy = _policy(
        world, f'revoked = ["{"a" * 64}"]\n[env.prod]\nkeys = ["{public}"]\n[env.qa]\nkeys = []\n'
    )
    code, out, _ = run_cli(capsys, "keys", "list")
    assert code == 0
    assert "trusted for prod (policy.toml)" in out
    assert f"no key is trusted for qa ({policy}): nothing can be deployed there" in out
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    listed = json.loads(out)
    assert listed["policy"]["path"] == str(policy)
    assert [e["name"] for e in listed["policy"]["environments"]] == ["prod", "qa"]
    assert listed["policy"]["environments"][1]["keys"] == []
    assert "a" * 64 in listed["revoked"]


def test_a_policy_that_is_no_regular_file_is_refused_without_blocking(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO at policy.toml (or given as --policy) blocked every command in open(), for ever."""
    import os
    import subprocess
    import sys

    digest = world.build()
    policy = world.home / "policy.toml"
    os.mkfifo(policy, 0o600)
    run = subprocess.run(
        [sys.executable, "-m", "graven", "verify", digest],
        env={**os.environ, "GRAVEN_HOME": str(world.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr == f"graven: error: policy file {policy} is not a regular file\n"
    policy.unlink()
    _policy(world, "# " + "x" * (2 << 20) + "\n")
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 2 and "is larger than 1048576 bytes" in err and err.count("\n") == 1


def test_a_changed_policy_is_seen_by_the_next_drift_check(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The steady-state drift check answers from the last clean check's snapshot, bound to the trust
    policy's files: policy.toml (and the key files it names) were not among them, so a policy that no
    longer trusted the deployment's signer still had its ignore globs applied, unverified."""
    private, public = _release_key(tmp_path)
    monkeypatch.setenv("GRAVEN_SIGNING_KEY", str(private))
    digest = world.build()
    _policy(world, f'keys = ["{public}"]\n')
    assert world.deploy(digest, "staging").ok
    code, out, err = run_cli(capsys, "drift", "staging")
    assert code == 0 and "does not verify" not in out + err, out + err
    code, out, err = run_cli(capsys, "drift", "staging")  # from the snapshot
    assert code == 0 and "does not verify" not in out + err, out + err
    # the key file the policy names is replaced by another key: no longer trusted
    release = public.read_bytes()
    other = KeyStore(tmp_path / "other-keys")
    other.generate("other", "ed25519")
    public.write_bytes(other.export_public("other"))
    code, out, err = run_cli(capsys, "drift", "staging")
    assert "does not verify" in out + err, out + err
    public.write_bytes(release)  # trusted again
    code, out, err = run_cli(capsys, "drift", "staging")
    assert code == 0 and "does not verify" not in out + err, out + err
    code, out, err = run_cli(capsys, "drift", "staging")  # a snapshot again
    assert code == 0 and "does not verify" not in out + err, out + err
    # the policy itself: without the key
    _policy(world, "")
    code, out, err = run_cli(capsys, "drift", "staging")
    assert "does not verify" in out + err, out + err


def test_the_trust_fingerprint_covers_the_policy_and_its_key_files(tmp_path: Path) -> None:
    import os

    from graven.drift.clean import trust_fingerprint

    trust = tmp_path / "trust"
    trust.mkdir()
    policy = tmp_path / "policy.toml"
    alone = trust_fingerprint(trust, policy)
    assert alone == trust_fingerprint(trust) != ""  # no policy: the trust directory's alone
    _, public = _release_key(tmp_path)
    policy.write_text('keys = ["release.pub"]\n[env.prod]\nkeys = ["' + "a" * 64 + '"]\n')
    with_policy = trust_fingerprint(trust, policy)
    assert with_policy not in (alone, "")
    assert trust_fingerprint(trust, policy) == with_policy
    public.write_bytes(public.read_bytes() + b"\n")
    changed = trust_fingerprint(trust, policy)
    assert changed not in (with_policy, "")
    public.unlink()
    assert trust_fingerprint(trust, policy) not in (changed, with_policy)  # missing: marked as such
    policy.unlink()
    os.mkfifo(policy)
    assert trust_fingerprint(trust, policy) not in (alone, with_policy)  # never blocks on a FIFO


def test_a_changed_home_policy_is_seen_by_the_next_drift_check(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The snapshot of a clean check (and a watcher's verified ignore globs) were bound to trust/
    alone: after policy.toml stopped trusting the key for staging, or a key file it names was
    replaced, `graven drift` and `graven watch` still said clean, without the note a full check
    gives."""
    from graven.service.drift import check
    from graven.service.drift_targets import DriftSession

    settled(world, capsys)
    _, public = _release_key(tmp_path)
    named = tmp_path / "named.pub"
    named.write_bytes(next((world.home / "trust").glob("*.pub")).read_bytes())  # the home's own key
    _policy(world, f'[env.staging]\nkeys = ["{named}"]\n')
    session = DriftSession(world.ctx())  # as a watcher keeps one
    try:
        [report] = check(world.ctx(), ["staging"], full=True, record=False, session=session)
        assert report.clean and report.note is None
        for _ in range(50):  # the snapshot under this policy (records of this clock tick are racy)
            code, doc = drift(capsys, "staging")
            assert code == 0 and doc["environments"][0]["note"] is None
            if snapshot_path(world).exists():
                break
            time.sleep(0.02)
        assert snapshot_path(world).exists()
        named.write_bytes(public.read_bytes())  # the file the policy names: another key now
        code, doc = drift(capsys, "staging")
        assert code == 0 and "does not verify" in (doc["environments"][0]["note"] or ""), doc
        [report] = check(world.ctx(), ["staging"], full=True, record=False, session=session)
        assert "does not verify" in (report.note or "")
    finally:
        session.close()
    _policy(world, "")
    code, doc = drift(capsys, "staging")
    assert doc["environments"][0]["note"] is None
    (world.home / "policy.toml").write_text("[env.staging]\nkeys = []\n")  # the policy itself changed
    code, doc = drift(capsys, "staging")
    assert "does not verify" in (doc["environments"][0]["note"] or ""), doc
    (world.home / "policy.toml").write_text("keys = 1\n")  # a broken one stops the check (exit 2)
    code, _, err = run_cli(capsys, "drift", "staging")
    assert (
        code == 2 and err == f"graven: error: {world.home / 'policy.toml'}: keys must be a list of strings\n"
    )


def test_key_files_a_policy_names_are_read_where_it_says_and_never_block(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Key files were taken relative to the link when policy.toml was a link to a policy kept
    elsewhere (GRAVEN_HOME/keys/release.pub, a signing key of the home, for ../etc's keys/release.pub);
    a FIFO named as a key file blocked every command for ever; ~nosuchuser/ was a traceback."""
    import os
    import subprocess
    import sys

    digest = world.build()  # signed by the home's own key
    own = next((world.home / "trust").glob("*.pub")).read_bytes()
    _, public = _release_key(tmp_path)
    etc = tmp_path / "etc"
    (etc / "keys").mkdir(parents=True)
    (etc / "keys" / "release.pub").write_bytes(own)
    (world.home / "keys" / "release.pub").write_bytes(public.read_bytes())  # not the policy's key
    (etc / "policy.toml").write_text('[env.prod]\nkeys = ["keys/release.pub"]\n')
    (world.home / "policy.toml").symlink_to(etc / "policy.toml")
    code, _, err = run_cli(capsys, "verify", digest, "--env", "prod")
    assert code == 0, err
    (world.home / "policy.toml").unlink()
    os.mkfifo(tmp_path / "fifo.pub", 0o600)
    _policy(world, f'keys = ["{tmp_path / "fifo.pub"}"]\n')
    run = subprocess.run(
        [sys.executable, "-m", "graven", "verify", digest],
        env={**os.environ, "GRAVEN_HOME": str(world.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr == (
        f"graven: error: {world.home / 'policy.toml'}: keys: key file {tmp_path / 'fifo.pub'} "
        "is not a regular file\n"
    )
    _policy(world, 'keys = ["~graven-no-such-user/ci.pub"]\n')
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 2
    assert err == (
        f"graven: error: {world.home / 'policy.toml'}: keys: ~graven-no-such-user/ci.pub names the "
        "home directory of an unknown user\n"
    )


def test_keys_list_shows_an_environment_that_names_a_trusted_key_by_its_id(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[env.prod] keys = ["<keyid of a key in trust/>"]`, which deploy and verify accept, made
    `graven keys list` exit 2: it read the policy without the trust directory."""
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    [own] = json.loads(out)["trusted"]
    _policy(world, f'[env.prod]\nkeys = ["sha256:{own["keyid"]}"]\n')
    code, out, err = run_cli(capsys, "keys", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["trusted"] == [own]
    assert listed["policy"]["keys"] == []  # besides trusted: none
    assert listed["policy"]["environments"] == [{"name": "prod", "keys": [own]}]
    code, out, _ = run_cli(capsys, "keys", "list")
    assert code == 0 and "trusted for prod (policy.toml)" in out


def test_a_key_id_in_the_policy_is_read_in_either_case(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upper-case key id (copied from a tool that prints them so) was taken for a key file's path:
    "key file .../ABC... does not exist". revoked entries were already read in either case."""
    digest = world.build()
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    keyid = json.loads(out)["signing"][0]["keyid"]
    _policy(world, f'[env.prod]\nkeys = ["sha256:{keyid.upper()}"]\n')
    code, out, err = run_cli(capsys, "verify", digest, "--env", "prod")
    assert code == 0, err
    code, out, err = run_cli(capsys, "keys", "list")
    assert code == 0 and "trusted for prod (policy.toml)" in out, out + err


def test_keys_list_shows_what_verify_decides_for_an_environment_of_revoked_keys(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An [env.NAME] whose keys are all revoked (here in policy.toml, by an upper-case key id, the key
    named by a path relative to the policy) trusts no key: verify --env and deploy refuse everything
    there. `graven keys list` said so only of a section that names no key at all."""
    digest = world.build()
    _, public = _release_key(tmp_path)
    (world.home / "release.pub").write_bytes(public.read_bytes())
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    own = json.loads(out)["signing"][0]["keyid"]
    release = load_public_key(public).keyid
    _policy(world, f'revoked = ["SHA256:{own.upper()}"]\n[env.prod]\nkeys = ["release.pub", "{own}"]\n')
    (world.home / "trust" / "revoked").write_text(f"{release}\n")
    # no unrevoked key is trusted for prod
    assert_cli_error(run_cli(capsys, "verify", digest, "--env", "prod"), 1, f"signed by revoked key {own}")
    code, out, err = run_cli(capsys, "keys", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["revoked"] == sorted([own, release])
    [prod] = listed["policy"]["environments"]
    assert prod["name"] == "prod" and all(k["revoked"] for k in prod["keys"]) and len(prod["keys"]) == 2
    code, out, err = run_cli(capsys, "keys", "list")
    assert code == 0, err
    assert "no key is trusted for prod" in out and "nothing can be deployed there" in out


def test_keys_list_says_when_every_default_key_is_revoked(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every key trusted by default revoked: verify refuses every artifact; `keys list` only marked
    each key "(revoked)"."""
    digest = world.build()
    code, out, _ = run_cli(capsys, "keys", "list", "--json")
    own = json.loads(out)["signing"][0]["keyid"]
    code, out, _ = run_cli(capsys, "keys", "list")
    assert code == 0 and "revoked: verify refuses" not in out
    _policy(world, f'revoked = ["{own}"]\n')
    assert run_cli(capsys, "verify", digest)[0] == 1
    code, out, err = run_cli(capsys, "keys", "list")
    assert code == 0, err
    assert out.rstrip().splitlines()[-1] == (
        "every key trusted by default is revoked: verify refuses every artifact, and deploy does outside "
        "the environments the policy gives keys of their own"
    )
    (world.home / "policy.toml").unlink()
    (world.home / "trust" / "revoked").write_text(f"{own}\n")
    code, out, _ = run_cli(capsys, "keys", "list")
    assert (
        out.rstrip().splitlines()[-1]
        == "every key trusted by default is revoked: verify refuses every artifact"
    )


def test_keys_list_skips_a_key_it_cannot_read_and_lists_the_others(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """An RSA key (or a damaged file) dropped in keys/ stopped `keys list` with its error: every other
    key was hidden with it, the one verify and build use among them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keys = world.home / "keys"
    (keys / "old-rsa.key").write_bytes(pem)
    (keys / "old-rsa.key").chmod(0o600)
    good = [e.name for e in KeyStore(keys).list(lambda name, exc: None)]
    assert good and "old-rsa" not in good
    code, out, err = run_cli(capsys, "keys", "list", "--json")
    assert code == 0, err
    assert [e["name"] for e in json.loads(out)["signing"]] == good
    assert err.count("\n") == 1 and "key old-rsa not listed: " in err, err


def test_a_key_the_home_policy_revokes_stays_revoked_under_another_policy_file(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`revoked` in the home's policy.toml: key ids never accepted, wherever they appear (as
    trust/revoked). `--policy FILE` replaced the whole home policy, its revocations too: a key the
    operator revoked there (a stolen key) verified and deployed again with any other policy file."""
    digest = world.build()
    _, out, _ = run_cli(capsys, "keys", "list", "--json")
    own = json.loads(out)["signing"][0]["keyid"]
    _policy(world, f'revoked = ["{own}"]\n')
    instead = tmp_path / "instead.toml"
    instead.write_text("")
    instead.chmod(0o600)
    expected = f"signed by revoked key {own}"
    assert_cli_error(run_cli(capsys, "verify", digest, "--policy", str(instead)), 1, expected)
    with pytest.raises(PolicyError, match="revoked"):
        world.deploy(digest, "staging", policy_file=instead)
    assert world.live("staging") is None
