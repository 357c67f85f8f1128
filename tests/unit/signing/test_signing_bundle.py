"""Sigstore bundles: shape, reading back, and the independent check with @sigstore/verify (Node)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers_signing import signed_provenance

from graven.errors import InputError
from graven.signing.bundle import (
    BUNDLE_MEDIA_TYPE,
    bundle_bytes,
    envelope_from_bundle,
    load_attestation,
    make_bundle,
    parse_bundle,
    signed_by,
)
from graven.signing.dsse import Envelope, Signature, sign_envelope
from graven.signing.keys import generate_key

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from helpers_services import require_tool, unavailable

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sigstore-verify"
KEY_TYPES = ["ed25519", "ecdsa-p256"]


def test_bundle_shape() -> None:
    key = generate_key()
    envelope = signed_provenance(key)
    bundle = make_bundle(envelope)
    assert bundle == {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": key.keyid}, "tlogEntries": []},
        "dsseEnvelope": envelope.to_dict(),
    }
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE


def test_bundle_round_trip() -> None:
    key = generate_key("ecdsa-p256")
    envelope = signed_provenance(key)
    data = bundle_bytes(envelope)
    parsed = parse_bundle(data)
    assert parsed.media_type == BUNDLE_MEDIA_TYPE
    assert parsed.key_hint == key.keyid
    assert parsed.envelope == envelope
    assert envelope_from_bundle(data) == envelope
    assert load_attestation(data) == envelope
    assert load_attestation(envelope.to_json()) == envelope  # a bare DSSE envelope is read too


def test_bundle_holds_exactly_one_signature() -> None:
    envelope = signed_provenance(generate_key())
    with pytest.raises(InputError, match="exactly one signature, this envelope has 0"):
        make_bundle(Envelope(envelope.payload, envelope.payload_type, ()))
    with pytest.raises(InputError, match="exactly one signature, this envelope has 2"):
        make_bundle(Envelope(envelope.payload, envelope.payload_type, envelope.signatures * 2))


def _bundle_dict() -> dict[str, Any]:
    return make_bundle(sign_envelope(b"{}", "application/vnd.in-toto+json", generate_key()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mediaType": "application/json"}, "not a Sigstore bundle: unsupported mediaType"),
        ({"verificationMaterial": None}, "Sigstore bundle has no verificationMaterial object"),
        ({"verificationMaterial": {"publicKey": "k"}}, "Sigstore bundle: verificationMaterial"),
        ({"dsseEnvelope": None}, "Sigstore bundle has no dsseEnvelope"),
        ({"dsseEnvelope": []}, "Sigstore bundle: dsseEnvelope is not an object"),
        ({"dsseEnvelope": {"payload": "x"}}, "Sigstore bundle dsseEnvelope has no 'payloadType'"),
    ],
)
def test_malformed_bundles_are_refused(change: dict[str, Any], message: str) -> None:
    bundle = {**_bundle_dict(), **change}
    with pytest.raises(InputError) as caught:
        parse_bundle(json.dumps(bundle))
    assert str(caught.value).startswith(message)


def test_message_signature_bundle_is_refused() -> None:
    bundle = _bundle_dict()
    del bundle["dsseEnvelope"]
    bundle["messageSignature"] = {"signature": "AAAA"}
    with pytest.raises(InputError, match="has no dsseEnvelope"):
        load_attestation(json.dumps(bundle))


_KEY_HINT = {"publicKey": {"hint": "0" * 64}}


@pytest.mark.parametrize(
    ("material", "extra", "message"),
    [
        (
            {**_KEY_HINT, "tlogEntries": "x"},
            {},
            "Sigstore bundle: verificationMaterial.tlogEntries is not a list",
        ),
        ({**_KEY_HINT, "tlogEntries": [{"logIndex": "1"}]}, {}, "Sigstore bundle carries transparency-log"),
        (
            {**_KEY_HINT, "tlogEntries": [], "timestampVerificationData": {"rfc3161Timestamps": [{}]}},
            {},
            "Sigstore bundle carries timestamps",
        ),
        ({"certificate": {"rawBytes": "AAAA"}, "tlogEntries": []}, {}, "Sigstore bundle has no public key"),
        (
            {**_KEY_HINT, "x509CertificateChain": {"certificates": []}},
            {},
            "Sigstore bundle has no public key",
        ),
        (
            {**_KEY_HINT, "tlogEntries": []},
            {"messageSignature": {"signature": "AAAA"}},
            "Sigstore bundle has both",
        ),
    ],
)
def test_a_bundle_with_material_graven_does_not_check_is_refused(
    material: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    """A review: the transparency-log entries, timestamps, certificates of a bundle (and a second,
    messageSignature content, which the format forbids) were ignored without a word and the bundle
    verified "ok", as if they had been checked (@sigstore/verify refuses a bundle whose log entry it
    cannot verify, or reads the messageSignature instead). graven writes and checks bundles of a bare
    public key only: anything more is refused as input it does not read, never passed over."""
    bundle = {**_bundle_dict(), **extra, "verificationMaterial": material}
    with pytest.raises(InputError) as caught:
        load_attestation(json.dumps(bundle))
    assert str(caught.value).startswith(message), caught.value
    # what graven writes, and a bundle without the (optional) empty list or the hint, still read
    plain_materials: list[dict[str, Any]] = [{**_KEY_HINT, "tlogEntries": []}, _KEY_HINT, {"publicKey": {}}]
    for plain in plain_materials:
        load_attestation(json.dumps({**_bundle_dict(), "verificationMaterial": plain}))


def test_truncated_bundle_is_refused() -> None:
    data = bundle_bytes(signed_provenance(generate_key()))
    with pytest.raises(InputError, match=r"^attestation is not valid JSON"):
        load_attestation(data[:-10])
    with pytest.raises(InputError, match=r"^Sigstore bundle is not valid JSON"):
        parse_bundle(data[:40])


# --- independent check: @sigstore/verify on Node.js ---------------------------------------------


@pytest.fixture(scope="module")
def sigstore_verify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of tests/assets/sigstore-verify with its npm dependencies installed."""
    require_tool("node")
    require_tool("npm")
    workdir = tmp_path_factory.mktemp("sigstore-verify")
    for name in ("package.json", "package-lock.json", "verify.mjs"):
        shutil.copy2(ASSETS / name, workdir / name)
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"npm ci of @sigstore/verify failed: {result.stderr.strip()[-500:]}")
    return workdir


def _node_verify(workdir: Path, bundle: bytes, public_pem: bytes) -> subprocess.CompletedProcess[str]:
    (workdir / "bundle.json").write_bytes(bundle)
    (workdir / "key.pem").write_bytes(public_pem)
    return subprocess.run(
        ["node", "verify.mjs", "bundle.json", "key.pem"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_bundle_verifies_with_sigstore_js(sigstore_verify: Path, key_type: str) -> None:
    key = generate_key(key_type)
    envelope = signed_provenance(key)
    good = _node_verify(sigstore_verify, bundle_bytes(envelope), key.public_pem())
    assert good.returncode == 0, good.stderr
    assert f"verified: signed by {key.keyid}" in good.stdout  # same key id definition as graven

    tampered = make_bundle(envelope)
    payload = bytearray(envelope.payload)
    payload[-2] ^= 0x01
    tampered["dsseEnvelope"]["payload"] = Envelope(bytes(payload), "", ()).to_dict()["payload"]
    bad = _node_verify(sigstore_verify, json.dumps(tampered).encode(), key.public_pem())
    assert bad.returncode == 1
    assert "signature verification failed" in bad.stderr

    wrong_type = make_bundle(envelope)
    wrong_type["dsseEnvelope"]["payloadType"] = "application/json"
    assert _node_verify(sigstore_verify, json.dumps(wrong_type).encode(), key.public_pem()).returncode == 1

    other = generate_key(key_type)
    untrusted = _node_verify(sigstore_verify, bundle_bytes(envelope), other.public_pem())
    assert untrusted.returncode == 1
    assert "key not found" in untrusted.stderr


def test_signed_by_chooses_the_signature_that_verifies_never_the_hint() -> None:
    key, stranger = generate_key(), generate_key()
    genuine = sign_envelope(b"{}", "application/vnd.in-toto+json", key).signatures[0]
    foreign = sign_envelope(b"{}", "application/vnd.in-toto+json", stranger).signatures[0]
    junk = Signature(key.keyid, b"\x01" * 64)  # names the key, made by nobody
    mixed = Envelope(b"{}", "application/vnd.in-toto+json", (junk, foreign, Signature("", genuine.sig)))
    single = signed_by(mixed, key.public)
    assert single.signatures == (Signature("", genuine.sig),)
    assert make_bundle(single, key.keyid)["verificationMaterial"]["publicKey"]["hint"] == key.keyid
    with pytest.raises(InputError, match="no signature of the envelope verifies"):
        signed_by(Envelope(b"{}", "application/vnd.in-toto+json", (junk, foreign)), key.public)


@pytest.mark.services
@pytest.mark.slow
def test_a_bundle_of_an_envelope_without_hints_verifies_with_sigstore_js(sigstore_verify: Path) -> None:
    """An envelope signed elsewhere (securesystemslib writes its own key ids; DSSE makes them optional):
    @sigstore/verify finds the key by the bundle's hint, which must be the verifying key's id."""
    key = generate_key()
    envelope = signed_provenance(key)
    hintless = Envelope(envelope.payload, envelope.payload_type, (Signature("", envelope.signatures[0].sig),))
    assert _node_verify(sigstore_verify, bundle_bytes(hintless), key.public_pem()).returncode == 1
    single = signed_by(hintless, key.public)
    result = _node_verify(sigstore_verify, bundle_bytes(single, key.keyid), key.public_pem())
    assert result.returncode == 0, result.stderr


def _two_signature_bundle(key: Any) -> dict[str, Any]:
    """A bundle whose envelope carries a stranger's signature and then ``key``'s."""
    genuine, foreign = signed_provenance(key), signed_provenance(generate_key())
    bundle = make_bundle(genuine)
    bundle["dsseEnvelope"]["signatures"] = [foreign.signatures[0].to_dict(), genuine.signatures[0].to_dict()]
    return bundle


def test_a_bundle_of_several_signatures_is_refused() -> None:
    """A review: graven read any number of signatures from a bundle's dsseEnvelope (and accepted it when
    one verified), where the Sigstore bundle format holds exactly one and @sigstore/verify refuses
    the bundle as invalid: the same file must not be accepted by one and refused by the other."""
    with pytest.raises(InputError, match=r"^Sigstore bundle: its dsseEnvelope has 2 signatures; a bundle"):
        load_attestation(json.dumps(_two_signature_bundle(generate_key())))


@pytest.mark.services
@pytest.mark.slow
def test_sigstore_js_refuses_a_bundle_of_several_signatures_too(sigstore_verify: Path) -> None:
    key = generate_key()
    result = _node_verify(sigstore_verify, json.dumps(_two_signature_bundle(key)).encode(), key.public_pem())
    assert result.returncode == 1 and "invalid bundle" in result.stderr


@pytest.mark.services
@pytest.mark.slow
def test_the_bundle_graven_export_writes_verifies_with_sigstore_js(
    sigstore_verify: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The independent check on what the command writes (`graven export --bundle`: the signature that
    verified, chosen by signed_by, and the hint of its key), not only on bundle_bytes of a test envelope."""
    from helpers_repo import make_repo, run_cli

    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    repo = make_repo(tmp_path / "repo", {"app/main.py": "print('hi')\n"})
    assert run_cli(capsys, "keys", "generate")[0] == 0
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    bundle = tmp_path / "a.sigstore.json"
    code, _, err = run_cli(capsys, "export", digest, "-o", str(tmp_path / "a.tar"), "--bundle", str(bundle))
    assert code == 0, err
    public_pem = run_cli(capsys, "keys", "export", "default")[1].encode()
    result = _node_verify(sigstore_verify, bundle.read_bytes(), public_pem)
    assert result.returncode == 0, result.stderr
    statement = json.loads(load_attestation(bundle.read_bytes()).payload)
    assert statement["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}
    assert run_cli(capsys, "attest", "verify", str(bundle), "--artifact", digest)[0] == 0
