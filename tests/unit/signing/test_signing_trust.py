"""The trust policy: trusted keys, revocation, environments, and every refusal of verify_attestation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_signing import ARTIFACT, OTHER_ARTIFACT, make_inputs, signed_provenance

from graven.errors import ConfigError, InputError, NotFoundError, PolicyError, VerificationError
from graven.signing.bundle import bundle_bytes
from graven.signing.dsse import Envelope, sign_envelope
from graven.signing.keys import SigningKey, generate_key, write_public_key
from graven.signing.provenance import PAYLOAD_TYPE, statement_bytes
from graven.signing.trust import (
    TrustPolicy,
    load_trust_dir,
    store_trusted_key,
    trust_key,
)

KEY_TYPES = ["ed25519", "ecdsa-p256"]


def _trust(tmp_path: Path, *keys: SigningKey) -> Path:
    directory = tmp_path / "trust"
    for key in keys:
        store_trusted_key(directory, key.public_pem())
    return directory


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_verify_attestation_envelope_and_bundle(tmp_path: Path, key_type: str) -> None:
    key = generate_key(key_type)
    policy = TrustPolicy.load(_trust(tmp_path, generate_key(), key))
    envelope = signed_provenance(key)
    for data in (envelope.to_json(), bundle_bytes(envelope)):
        verified = policy.verify_attestation(data, ARTIFACT)
        assert verified.keyid == key.keyid
        assert verified.statement.subject_digests == (ARTIFACT,)
        assert verified.statement.commit == make_inputs().commit
        assert verified.payload == envelope.payload
        assert verified.envelope == envelope


def _expect(
    policy: TrustPolicy,
    data: bytes,
    error: type[Exception],
    message: str,
    *,
    artifact: str = ARTIFACT,
    env: str | None = None,
) -> None:
    with pytest.raises(error) as caught:
        policy.verify_attestation(data, artifact, env)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_refuses_unsigned(tmp_path: Path) -> None:
    key = generate_key()
    envelope = signed_provenance(key)
    unsigned = Envelope(envelope.payload, envelope.payload_type, ())
    _expect(
        TrustPolicy.load(_trust(tmp_path, key)),
        unsigned.to_json(),
        VerificationError,
        "attestation is unsigned: the envelope has no signatures",
    )


def test_refuses_untrusted_key(tmp_path: Path) -> None:
    signer = generate_key()
    _expect(
        TrustPolicy.load(_trust(tmp_path, generate_key())),
        signed_provenance(signer).to_json(),
        PolicyError,
        f"signed by untrusted key {signer.keyid}: no trusted key verifies the signature",
    )


def test_refuses_revoked_key_that_verifies(tmp_path: Path) -> None:
    key = generate_key()
    trust_dir = _trust(tmp_path, key, generate_key())
    policy = TrustPolicy.load(trust_dir, _policy(tmp_path, f'revoked = ["{key.keyid}"]\n'))
    assert key.keyid not in {k.keyid for k in policy.keys_for(None)}
    _expect(policy, signed_provenance(key).to_json(), PolicyError, f"signed by revoked key {key.keyid}")


def test_refuses_revoked_key_listed_as_sha256(tmp_path: Path) -> None:
    key = generate_key("ecdsa-p256")
    policy = TrustPolicy.load(
        _trust(tmp_path, key), _policy(tmp_path, f'revoked = ["sha256:{key.keyid.upper()}"]\n')
    )
    _expect(policy, bundle_bytes(signed_provenance(key)), PolicyError, f"signed by revoked key {key.keyid}")


def test_refuses_bad_signature(tmp_path: Path) -> None:
    key = generate_key()
    envelope = signed_provenance(key).to_dict()
    other = signed_provenance(key, OTHER_ARTIFACT).to_dict()
    envelope["signatures"] = other["signatures"]  # a signature from another envelope
    _expect(
        TrustPolicy.load(_trust(tmp_path, key)),
        json.dumps(envelope).encode(),
        VerificationError,
        f"bad signature: the signature by trusted key {key.keyid} does not match the payload and payloadType",
    )


def test_refuses_changed_payload_byte(tmp_path: Path) -> None:
    key = generate_key()
    envelope = signed_provenance(key)
    payload = envelope.payload.replace(b"web-frontend", b"web-frontenD")
    tampered = Envelope(payload, envelope.payload_type, envelope.signatures)
    with pytest.raises(VerificationError, match=r"^bad signature: "):
        TrustPolicy.load(_trust(tmp_path, key)).verify_attestation(tampered.to_json(), ARTIFACT)


def test_refuses_other_payload_type(tmp_path: Path) -> None:
    key = generate_key()
    envelope = sign_envelope(statement_bytes(make_inputs()), "application/json", key)
    _expect(
        TrustPolicy.load(_trust(tmp_path, key)),
        envelope.to_json(),
        VerificationError,
        "payloadType is 'application/json', expected application/vnd.in-toto+json",
    )


def test_refuses_statement_for_another_digest(tmp_path: Path) -> None:
    key = generate_key()
    _expect(
        TrustPolicy.load(_trust(tmp_path, key)),
        signed_provenance(key, OTHER_ARTIFACT).to_json(),
        VerificationError,
        f"provenance is for {OTHER_ARTIFACT}, not for {ARTIFACT}",
    )


def test_refuses_signed_garbage(tmp_path: Path) -> None:
    key = generate_key()
    envelope = sign_envelope(b"not a statement", PAYLOAD_TYPE, key)
    with pytest.raises(VerificationError, match=r"^signed provenance is malformed: provenance statement"):
        TrustPolicy.load(_trust(tmp_path, key)).verify_attestation(envelope.to_json(), ARTIFACT)


def test_refuses_truncated_and_non_json_input(tmp_path: Path) -> None:
    key = generate_key()
    policy = TrustPolicy.load(_trust(tmp_path, key))
    data = signed_provenance(key).to_json()
    with pytest.raises(InputError, match=r"^attestation is not valid JSON") as caught:
        policy.verify_attestation(data[: len(data) // 2], ARTIFACT)
    assert caught.value.exit_code == 2
    with pytest.raises(InputError, match=r"^attestation is not valid JSON"):
        policy.verify_attestation(b"hello", ARTIFACT)
    with pytest.raises(InputError, match=r"is not a sha256 digest"):
        policy.verify_attestation(data, "latest")


def test_no_trusted_keys(tmp_path: Path) -> None:
    policy = TrustPolicy.load(tmp_path / "trust")  # does not exist: no keys
    _expect(
        policy,
        signed_provenance(generate_key()).to_json(),
        PolicyError,
        f"no trusted keys; add a public key to {tmp_path / 'trust'} (graven keys trust PEM_FILE)",
    )


def test_environment_key_sets(tmp_path: Path) -> None:
    ci, release, extra = generate_key(), generate_key("ecdsa-p256"), generate_key()
    trust_dir = _trust(tmp_path, ci)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    write_public_key(keys_dir / "release.pub", release)
    write_public_key(keys_dir / "extra.pem", extra)
    policy_file = _policy(
        tmp_path,
        f'keys = ["keys/extra.pem"]\n\n[env.prod]\nkeys = ["keys/release.pub"]\n\n'
        f'[env.staging]\nkeys = ["{ci.keyid}", "sha256:{extra.keyid}"]\n',
    )
    policy = TrustPolicy.load(trust_dir, policy_file)

    def ids(env: str | None) -> set[str]:
        return {key.keyid for key in policy.keys_for(env)}

    assert ids(None) == {ci.keyid, extra.keyid}
    assert ids("dev") == {ci.keyid, extra.keyid}  # no section: the default keys
    assert ids("prod") == {release.keyid}
    assert ids("staging") == {ci.keyid, extra.keyid}

    ci_signed = signed_provenance(ci).to_json()
    assert policy.verify_attestation(ci_signed, ARTIFACT).keyid == ci.keyid
    assert policy.verify_attestation(ci_signed, ARTIFACT, env="staging").keyid == ci.keyid
    _expect(
        policy,
        ci_signed,
        PolicyError,
        f"signed by untrusted key {ci.keyid}: no trusted key verifies the signature",
        env="prod",
    )
    release_signed = bundle_bytes(signed_provenance(release))
    assert policy.verify_attestation(release_signed, ARTIFACT, env="prod").keyid == release.keyid
    with pytest.raises(PolicyError, match=r"^signed by untrusted key"):
        policy.verify_attestation(release_signed, ARTIFACT)


def test_a_key_id_in_the_default_keys_names_a_trusted_key(tmp_path: Path) -> None:
    """A black-box review: a key id in the top-level ``keys`` was looked up in an empty set, so a
    policy naming a key of the trust directory by its id was refused as naming no trusted key."""
    ci, extra, stranger = generate_key(), generate_key(), generate_key()
    trust_dir = _trust(tmp_path, ci)
    (tmp_path / "keys").mkdir()
    write_public_key(tmp_path / "keys" / "extra.pub", extra)
    # a key id of the trust directory, and one of a key file listed after it
    text = f'keys = ["{ci.keyid.upper()}", "sha256:{extra.keyid}", "keys/extra.pub"]\n'
    policy = TrustPolicy.load(trust_dir, _policy(tmp_path, text))
    assert {key.keyid for key in policy.keys_for(None)} == {ci.keyid, extra.keyid}
    assert policy.verify_attestation(signed_provenance(ci).to_json(), ARTIFACT).keyid == ci.keyid
    with pytest.raises(ConfigError, match=f"keys: key id {stranger.keyid} is not one of the trusted"):
        TrustPolicy.load(trust_dir, _policy(tmp_path, f'keys = ["{stranger.keyid}"]\n'))


def test_revoked_key_in_an_environment_set(tmp_path: Path) -> None:
    release = generate_key()
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    write_public_key(keys_dir / "release.pub", release)
    policy_file = _policy(
        tmp_path, f'revoked = ["{release.keyid}"]\n[env.prod]\nkeys = ["keys/release.pub"]\n'
    )
    policy = TrustPolicy.load(_trust(tmp_path, generate_key()), policy_file)
    assert policy.keys_for("prod") == ()
    # A signature by the revoked key is refused as revoked, in any environment.
    for env in ("prod", None):
        _expect(
            policy,
            signed_provenance(release).to_json(),
            PolicyError,
            f"signed by revoked key {release.keyid}",
            env=env,
        )
    # Any other signature finds no trusted key for prod.
    _expect(
        policy,
        signed_provenance(generate_key()).to_json(),
        PolicyError,
        f"no trusted keys for environment prod; name a public key in [env.prod] keys of {policy_file}",
        env="prod",
    )


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("keys = [", ConfigError, "is not valid TOML"),
        # int() refuses more than 4,300 digits, and tomllib let that ValueError through: a traceback
        ("x = " + "9" * 4301, ConfigError, "is not valid TOML: an integer of more than 4,300 digits"),
        ("trusted = []", ConfigError, "unknown setting 'trusted' (expected: keys, revoked, [env.NAME])"),
        ("keys = 'a.pub'", ConfigError, "keys must be a list of strings"),
        ("keys = ['missing.pub']", ConfigError, "keys: key file"),
        ("revoked = ['abc']", ConfigError, "revoked entry 'abc' is not a key id (64 hex digits)"),
        ("env = 1", ConfigError, "env must be a table of [env.NAME] sections"),
        ("[env.prod]\nkey = []", ConfigError, "[env.prod]: unknown setting 'key' (expected: keys)"),
        ("[env.prod]\nkeys = ['" + "a" * 64 + "']", ConfigError, "is not one of the trusted keys"),
        # a NUL reached open(): a traceback (ValueError: embedded null byte) and exit 1
        ('keys = ["a\\u0000.pub"]', ConfigError, "a\\x00.pub' holds a NUL character; remove it"),
        # a section no environment can match (environment names are lowercase): that environment
        # then trusted the default keys, not the ones the operator meant to be its only ones
        ("[env.Prod]\nkeys = []", ConfigError, "[env.NAME] section 'Prod' is not an environment name"),
        ('[env."a\\nb"]\nkeys = []', ConfigError, "section 'a\\nb' is not an environment name"),
    ],
)
def test_bad_policy_files(tmp_path: Path, text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        TrustPolicy.load(tmp_path / "trust", _policy(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"policy file .* does not exist"):
        TrustPolicy.load(None, tmp_path / "nope.toml")


def test_bad_key_in_trust_dir(tmp_path: Path) -> None:
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "broken.pub").write_text("garbage")
    (trust_dir / "README.txt").write_text("ignored")
    with pytest.raises(ConfigError, match=r"trusted key file .*broken.pub: public key .*: not a PEM"):
        load_trust_dir(trust_dir)


def test_dot_files_in_the_trust_dir_are_not_trusted(tmp_path: Path) -> None:
    """A key set aside as ``.retired-ci.pub`` is no trusted key, even a valid one; a broken dot-file is
    not read at all."""
    kept, retired = generate_key(), generate_key("ecdsa-p256")
    trust_dir = _trust(tmp_path, kept)
    write_public_key(trust_dir / ".retired-ci.pub", retired)
    write_public_key(trust_dir / ".old.pem", retired)
    assert [k.keyid for k in load_trust_dir(trust_dir)] == [kept.keyid]
    (trust_dir / ".broken.pub").write_text("garbage")
    assert [k.keyid for k in load_trust_dir(trust_dir)] == [kept.keyid]


def test_trust_key_normalizes_and_validates(tmp_path: Path) -> None:
    key = generate_key("ecdsa-p256")
    messy = b"\n\n" + key.public_pem().replace(b"\n", b"\r\n") + b"\n"
    keyid, pem = trust_key(messy)
    assert keyid == key.keyid
    assert pem == key.public_pem()
    with pytest.raises(InputError, match=r"is a private key; give the public key"):
        trust_key(key.private_pem())
    with pytest.raises(InputError, match=r"not a PEM public key"):
        trust_key(b"nope")
    path = store_trusted_key(tmp_path / "trust", messy)
    assert path == tmp_path / "trust" / f"{key.keyid}.pub"
    assert path.read_bytes() == key.public_pem()
    assert store_trusted_key(tmp_path / "trust", key.public_pem()) == path  # idempotent
    assert [k.keyid for k in load_trust_dir(tmp_path / "trust")] == [key.keyid]


def test_policy_environment_names_are_the_ones_deploy_takes() -> None:
    """trust.py keeps its own copy of the pattern (signing imports nothing of deploy)."""
    from graven.deploy.settings import ENV_NAME
    from graven.signing import trust

    assert ENV_NAME.pattern == trust.ENV_NAME_PATTERN
