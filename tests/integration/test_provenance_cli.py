"""Signed provenance through the CLI: build signs, verify checks trust, export/import carry it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graven.signing.bundle import load_attestation
from helpers_repo import make_repo, run_cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(path))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app/main.py": "print('hi')\n", "run.sh": "#!/bin/sh\n"})


def _build(capsys: pytest.CaptureFixture[str], repo: Path) -> str:
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0, err
    return out.strip().splitlines()[-1]


def test_build_without_a_key_says_how_to_make_one(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 2
    assert err.startswith("graven: error: no signing key")
    assert "graven keys generate" in err
    assert len(err.strip().splitlines()) == 1


def test_signed_build_verifies_and_shows_provenance(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    assert oct((home / "keys" / "default.key").stat().st_mode & 0o777) == "0o600"
    digest = _build(capsys, repo)
    code, out, _ = run_cli(capsys, "verify", digest, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["provenance"]["ok"]
    code, out, _ = run_cli(capsys, "show", digest, "--provenance", "--json")
    statement = json.loads(out)["statement"]
    assert statement["subject"][0]["digest"]["sha256"] == digest.removeprefix("sha256:")
    assert statement["predicate"]["buildDefinition"]["buildType"] == "https://graven.dev/build/v1"


def test_private_key_readable_by_others_is_refused(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "keys", "generate")
    (home / "keys" / "default.key").chmod(0o644)
    code, _, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 2
    assert "chmod 600" in err and "Traceback" not in err


def test_untrusted_and_revoked_keys_are_refused(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "keys", "generate", "--no-trust")
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0 and "warning" not in err  # a builder's home that trusts nothing: no noise
    # a `keys generate` killed between the private key and its trust (a review: builds then signed
    # with the untrusted key without a word, and every artifact failed verify) left no .pub: said
    (home / "keys" / "default.pub").unlink()
    (repo / "more.txt").write_text("more\n")
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0 and "warning: the signing key default has no public key file" in err, err
    assert "graven keys export default > default.pub && graven keys trust default.pub" in err
    (home / "keys" / "default.pub").write_text(run_cli(capsys, "keys", "export", "default")[1])
    digest = out.strip().splitlines()[-1]
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 1 and "no trusted keys" in err
    pub = home.parent / "pub.pem"
    code, out, _ = run_cli(capsys, "keys", "export", "default")
    pub.write_text(out)
    assert run_cli(capsys, "keys", "trust", str(pub))[0] == 0
    assert run_cli(capsys, "verify", digest)[0] == 0
    keyid = json.loads(run_cli(capsys, "keys", "list", "--json")[1])["signing"][0]["keyid"]
    assert run_cli(capsys, "keys", "revoke", keyid)[0] == 0
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 1 and "revoked" in err


def test_tampered_stored_envelope_fails_verify(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "keys", "generate")
    digest = _build(capsys, repo)
    envelope_path = home.parent / "env.json"
    run_cli(capsys, "export", digest, "-o", str(home.parent / "a.tar"), "--attestation", str(envelope_path))
    doc = json.loads(envelope_path.read_text())
    doc["payloadType"] = "application/json"
    bad = home.parent / "bad.json"
    bad.write_text(json.dumps(doc))
    code, _, err = run_cli(capsys, "attest", "verify", str(bad), "--artifact", digest)
    assert code == 1 and "signature" in err.lower()
    bad.write_text("{not json")
    code, _, err = run_cli(capsys, "attest", "verify", str(bad), "--artifact", digest)
    assert code == 2 and err.startswith("graven: error:")


def test_signed_artifact_verifies_after_export_and_import_on_a_second_home(
    home: Path,
    repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_cli(capsys, "keys", "generate", "--name", "ci")
    digest = _build(capsys, repo)
    archive, envelope, bundle = (
        tmp_path / "a.tar.zst",
        tmp_path / "a.intoto.json",
        tmp_path / "a.sigstore.json",
    )
    code, _, err = run_cli(
        capsys, "export", digest, "-o", str(archive), "--attestation", str(envelope), "--bundle", str(bundle)
    )
    assert code == 0, err
    assert load_attestation(bundle.read_bytes()).payload == load_attestation(envelope.read_bytes()).payload
    pub = tmp_path / "ci.pub"
    pub.write_text(run_cli(capsys, "keys", "export", "ci")[1])
    check_independently(envelope, pub, digest)

    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home2"))
    code, out, err = run_cli(capsys, "import", str(archive), "--attestation", str(envelope))
    assert code == 0, err
    assert out.strip() == digest
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 1 and "no trusted keys" in err  # nothing is trusted until the operator says so
    assert run_cli(capsys, "keys", "trust", str(pub))[0] == 0
    code, out, err = run_cli(capsys, "verify", digest)
    assert code == 0, err
    assert run_cli(capsys, "attest", "verify", str(bundle), "--artifact", digest)[0] == 0
    assert (tmp_path / "home2" / "keys").exists() is False  # no private key on the verifying side


def test_import_refuses_an_attestation_for_another_artifact(
    home: Path, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, "keys", "generate")
    first = _build(capsys, repo)
    (repo / "extra.txt").write_text("x")
    from helpers_repo import commit

    commit(repo, "second")
    second = _build(capsys, repo)
    assert first != second
    envelope = tmp_path / "first.json"
    run_cli(capsys, "export", first, "-o", str(tmp_path / "f.tar"), "--attestation", str(envelope))
    run_cli(capsys, "export", second, "-o", str(tmp_path / "s.tar"))
    code, _, err = run_cli(capsys, "import", str(tmp_path / "s.tar"), "--attestation", str(envelope))
    assert code == 1 and "not for" in err


def check_independently(envelope: Path, pub: Path, digest: str) -> None:
    """What `graven export --attestation` wrote, read by libraries that are not graven's: the DSSE
    signature with securesystemslib, the statement and the SLSA predicate with in-toto-attestation
    (strict protobuf parsing: an unknown field fails), every resource descriptor validated."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement
    from securesystemslib.dsse import Envelope as SslibEnvelope
    from securesystemslib.signer import SSlibKey

    from graven.signing.keys import load_public_key

    public = load_public_key(pub)
    sslib = SslibEnvelope.from_dict(json.loads(envelope.read_text()))
    assert list(sslib.verify([SSlibKey.from_crypto(public.key, keyid=public.keyid)], 1)) == [public.keyid]
    payload = sslib.payload.decode("utf-8")
    statement = Statement.copy_from_pb(json_format.Parse(payload, statement_pb2.Statement()))
    statement.validate()
    assert statement.pb.subject[0].digest["sha256"] == digest.removeprefix("sha256:")
    predicate = json_format.Parse(json.dumps(json.loads(payload)["predicate"]), provenance_pb2.Provenance())
    for descriptor in [*predicate.build_definition.resolved_dependencies, *predicate.run_details.byproducts]:
        ResourceDescriptor.copy_from_pb(descriptor).validate()


def test_the_untrusted_key_warning_goes_once_its_own_commands_ran(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review: the warning's commands, run from anywhere, write the .pub into the current directory,
    not the home, and the warning stayed although the key was now trusted."""
    run_cli(capsys, "keys", "generate", "--no-trust")
    (home / "keys" / "default.pub").unlink()  # a keys generate that did not finish
    code, _, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0 and "has no public key file and this home does not trust it" in err
    pub = home.parent / "default.pub"
    pub.write_text(run_cli(capsys, "keys", "export", "default")[1])
    assert run_cli(capsys, "keys", "trust", str(pub))[0] == 0
    (repo / "more.txt").write_text("more\n")
    code, _, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0 and "warning" not in err, err


def test_a_key_trusted_under_another_file_name_is_no_cause_for_a_warning(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review: the trust directory takes any *.pub or *.pem, and a key trusted as trust/ci.pem
    was warned about as untrusted on every build."""
    run_cli(capsys, "keys", "generate", "--no-trust")
    pem = run_cli(capsys, "keys", "export", "default")[1]
    (home / "keys" / "default.pub").unlink()
    (home / "trust").mkdir(exist_ok=True, mode=0o700)
    (home / "trust" / "ci.pem").write_text(pem)
    (home / "trust" / "ci.pem").chmod(0o644)
    code, _, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0 and "warning" not in err, err


def test_verify_of_an_untrusted_signer_says_how_to_trust_it(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a team's deploy host that trusts its own key but not CI's: verify named the key and stopped
    run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")
    digest = _build(capsys, repo)
    assert run_cli(capsys, "keys", "generate", "--name", "mine")[0] == 0
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "signed by untrusted key" in err
    assert err.rstrip().endswith(
        "; if you trust its signer, trust its public key (graven keys trust KEY.pub)"
    )
    # an environment with keys of its own: the policy file is where its signer goes
    mine = home.parent / "mine.pub"
    mine.write_text(run_cli(capsys, "keys", "export", "mine")[1])
    (home / "policy.toml").write_text(f'[env.prod]\nkeys = ["{mine}"]\n')
    code, _, err = run_cli(capsys, "verify", digest, "--env", "prod")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.rstrip().endswith(
        f"if its signer may deploy to prod, name its key in [env.prod] keys of {home / 'policy.toml'}"
    )
    # a revoked signer gets no such advice: it is refused on purpose
    ci = json.loads(run_cli(capsys, "keys", "list", "--json")[1])
    keyid = next(key["keyid"] for key in ci["signing"] if key["name"] == "ci")
    assert run_cli(capsys, "keys", "revoke", keyid)[0] == 0
    code, _, err = run_cli(capsys, "verify", digest)
    assert code == 1 and "revoked" in err and "graven keys trust" not in err, err


@pytest.mark.parametrize("decoy", ["lying-hint", "other-signer"])
def test_export_bundle_carries_the_signature_that_verified_not_the_one_whose_hint_matches(
    home: Path, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], decoy: str
) -> None:
    """A review: export --bundle chose the envelope's signature by its keyid hint, which anyone writes.
    An envelope whose verifying signature has no hint (securesystemslib's own key ids, or none) next
    to a decoy then gave a bundle of the decoy's bad signature (which no verifier accepts) or no
    bundle at all; the bundle's hint must be the id of the key that verified it."""
    import base64

    from graven.signing.keys import generate_key

    run_cli(capsys, "keys", "generate")
    digest = _build(capsys, repo)
    archive, envelope = tmp_path / "a.tar", tmp_path / "a.intoto.json"
    assert run_cli(capsys, "export", digest, "-o", str(archive), "--attestation", str(envelope))[0] == 0
    doc = json.loads(envelope.read_text())
    genuine = doc["signatures"][0]
    keyid = genuine["keyid"]
    if decoy == "lying-hint":  # a junk signature that names the trusted key, first
        junk = {"keyid": keyid, "sig": base64.b64encode(b"\x01" * 64).decode()}
    else:  # a real signature by a key this home does not trust
        stranger = generate_key()
        pae = b"DSSEv1 %d %b %d %b" % (
            len(doc["payloadType"]),
            doc["payloadType"].encode(),
            len(base64.b64decode(doc["payload"])),
            base64.b64decode(doc["payload"]),
        )
        junk = {"keyid": stranger.keyid, "sig": base64.b64encode(stranger.sign(pae)).decode()}
    doc["signatures"] = [junk, {"keyid": "", "sig": genuine["sig"]}]  # the genuine one without its hint
    envelope.write_text(json.dumps(doc))
    code, _, err = run_cli(capsys, "import", str(archive), "--attestation", str(envelope))
    assert code == 0, err
    bundle = tmp_path / "a.sigstore.json"
    code, _, err = run_cli(capsys, "export", digest, "-o", str(tmp_path / "b.tar"), "--bundle", str(bundle))
    assert code == 0, err
    written = json.loads(bundle.read_text())
    assert written["verificationMaterial"]["publicKey"]["hint"] == keyid
    assert [s["sig"] for s in written["dsseEnvelope"]["signatures"]] == [genuine["sig"]]
    assert run_cli(capsys, "attest", "verify", str(bundle), "--artifact", digest)[0] == 0


def test_a_build_says_when_the_signing_key_is_not_the_one_its_public_key_file_holds(
    home: Path, repo: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """keys/default.key replaced by another key, keys/default.pub left: builds were signed by the new
    key without a word while `keys list` and `keys export` named the old one."""
    from graven.signing.keys import generate_key, write_private_key

    assert run_cli(capsys, "keys", "generate")[0] == 0
    (home / "keys" / "default.key").unlink()
    write_private_key(home / "keys" / "default.key", generate_key())
    code, _, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0 and "default.pub" in err and "is not the public half of default.key" in err, err
    code, out, err = run_cli(capsys, "keys", "export", "default")
    assert code == 2 and out == "" and "is not the public half" in err
