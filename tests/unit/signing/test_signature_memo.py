"""The memo of verified signatures (GRAVEN_HOME/cache/signatures) and the cryptography-free key path.

The memo stands only for "signature S over message M verified with key K": every decision of the trust
policy (trust, revocation, environments, payload type, statement, subject) is still made each time, a
forged or foreign entry never makes a bad signature pass, and a command with a warm memo never imports
cryptography. Trusted keys in canonical PEM are read without cryptography and give the same key id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_signing import ARTIFACT, signed_provenance
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import BackendError, InputError, PolicyError, VerificationError
from graven.home import Home
from graven.model.digest import Digest
from graven.service.context import Context
from graven.service.provenance import (
    check_attestation_file,
    check_provenance,
    load_policy,
    record_attestation,
    signature_memo,
    verified_provenances,
)
from graven.signing import memo as memo_module
from graven.signing.dsse import Envelope, Signature
from graven.signing.keys import (
    ED25519_SPKI_PREFIX,
    P256_SPKI_PREFIX,
    SigningKey,
    VerifyingKey,
    canonical_key_type,
    generate_key,
    key_id,
    parse_public_key,
)
from graven.signing.memo import DOMAIN, FileSignatureMemo, entry_name
from graven.signing.trust import TrustPolicy, store_trusted_key

KEY_TYPES = ["ed25519", "ecdsa-p256"]
RECORD_KEY = bytes(range(32))
SRC = Path(__file__).resolve().parents[3] / "src"
P256_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# -- helpers -----------------------------------------------------------------------------------------


def _crypto_der(public: VerifyingKey | SigningKey) -> bytes:
    """The SPKI DER as cryptography serializes the key (today's key id input)."""
    key = public.public.key if isinstance(public, SigningKey) else public.key
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem(der: bytes, width: int = 64) -> bytes:
    text = base64.b64encode(der)
    lines = b"".join(text[i : i + width] + b"\n" for i in range(0, len(text), width))
    return b"-----BEGIN PUBLIC KEY-----\n" + lines + b"-----END PUBLIC KEY-----\n"


def _no_cryptography_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make cryptography's PEM/DER public key loaders fail: only the fast path can still parse."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("cryptography was asked to parse a canonical public key")

    monkeypatch.setattr(serialization, "load_pem_public_key", refuse)
    monkeypatch.setattr(serialization, "load_der_public_key", refuse)


def _count_cryptographic_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count real signature checks (and still do them)."""
    calls: list[str] = []
    real = VerifyingKey.verify

    def counting(self: VerifyingKey, signature: bytes, data: bytes) -> bool:
        calls.append(self.keyid)
        return real(self, signature, data)

    monkeypatch.setattr(VerifyingKey, "verify", counting)
    return calls


def _memo(tmp_path: Path, key: bytes = RECORD_KEY) -> FileSignatureMemo:
    return FileSignatureMemo(tmp_path / "cache" / "signatures", lambda: key)


def _trust(tmp_path: Path, *keys: SigningKey) -> Path:
    directory = tmp_path / "trust"
    for key in keys:
        store_trusted_key(directory, key.public_pem())
    return directory


def _policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def _entries(memo: FileSignatureMemo) -> list[str]:
    return sorted(os.listdir(memo.directory)) if memo.directory.is_dir() else []


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Context]:
    """A context on an empty home (SQLite, whatever GRAVEN_DB_URL says)."""
    ctx = Context(home=Home(root=tmp_path / "home"))
    yield ctx
    ctx.close()


def _attest(ctx: Context, envelope: bytes, artifact: str = ARTIFACT) -> None:
    digest = ctx.store.put(envelope)
    with ctx.db.begin() as conn:
        record_attestation(conn, artifact, str(digest), "")


# -- keys without cryptography -------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_canonical_pem_is_read_without_cryptography_and_gives_todays_key_id(
    key_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = generate_key(key_type)
    pem = signer.public_pem()
    der = _crypto_der(signer)
    with monkeypatch.context() as patched:
        _no_cryptography_parsing(patched)
        fast = parse_public_key(pem)
        assert fast.keyid == hashlib.sha256(der).hexdigest() == key_id(signer.public.key) == signer.keyid
        assert fast.key_type == key_type
        assert fast.der() == der
        assert fast.pem() == pem  # byte for byte what cryptography writes
    # The cryptography key is made on first real use, and is the same key.
    assert fast.key == signer.public.key
    assert fast.verify(signer.sign(b"data"), b"data")
    assert not fast.verify(signer.sign(b"data"), b"datA")
    assert fast == signer.public
    assert hash(fast) == hash(signer.public)


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), scalar=st.integers(min_value=1, max_value=P256_N - 1))
def test_fast_path_and_cryptography_agree_for_generated_keys(seed: bytes, scalar: int) -> None:
    for private in (
        Ed25519PrivateKey.from_private_bytes(seed),
        ec.derive_private_key(scalar, ec.SECP256R1()),
    ):
        public = private.public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        slow = VerifyingKey.from_public_key(public)
        with pytest.MonkeyPatch.context() as patched:
            _no_cryptography_parsing(patched)
            fast = parse_public_key(pem)
        assert (fast.keyid, fast.key_type, fast.der(), fast.pem()) == (
            slow.keyid,
            slow.key_type,
            slow.der(),
            slow.pem(),
        )
        assert fast.keyid == key_id(public)
        assert fast.pem() == pem


def _point_on_p256_with_small_x() -> tuple[int, int]:
    x = 0
    while True:
        rhs = (x**3 - 3 * x + P256_B) % P256_P
        y = pow(rhs, (P256_P + 1) // 4, P256_P)
        if y * y % P256_P == rhs:
            return x, y
        x += 1


def _cryptography_accepts(der: bytes) -> bool:
    try:
        serialization.load_der_public_key(der)
    except ValueError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(point=st.binary(min_size=64, max_size=64), first=st.sampled_from([0x04, 0x04, 0x02, 0x03, 0x00]))
def test_p256_fast_path_accepts_exactly_the_points_cryptography_accepts(point: bytes, first: int) -> None:
    der = P256_SPKI_PREFIX + bytes([first]) + point
    assert (canonical_key_type(der) is not None) == _cryptography_accepts(der)


def test_p256_coordinates_out_of_range_are_not_taken_by_the_fast_path() -> None:
    x, y = _point_on_p256_with_small_x()
    good = P256_SPKI_PREFIX + b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    assert canonical_key_type(good) == "ecdsa-p256"
    assert _cryptography_accepts(good)
    for bad_x, bad_y in ((x + P256_P, y), (x, y + P256_P) if y + P256_P < 2**256 else (x + P256_P, y)):
        bad = P256_SPKI_PREFIX + b"\x04" + bad_x.to_bytes(32, "big") + bad_y.to_bytes(32, "big")
        assert canonical_key_type(bad) is None  # same curve equation mod p, but not a canonical point
        assert not _cryptography_accepts(bad)
        with pytest.raises(InputError, match="not a PEM public key"):
            parse_public_key(_pem(bad))


def test_off_curve_key_gets_todays_error() -> None:
    der = _crypto_der(generate_key("ecdsa-p256"))
    bad = der[:-1] + bytes([der[-1] ^ 1])
    with pytest.raises(InputError, match=r"^public key: not a PEM public key \(-----BEGIN PUBLIC KEY-----"):
        parse_public_key(_pem(bad))


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_other_pem_forms_take_the_cryptography_path(key_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    signer = generate_key(key_type)
    der = _crypto_der(signer)
    pem = signer.public_pem()
    variants = {
        "crlf": pem.replace(b"\n", b"\r\n"),
        "many short lines": _pem(der, width=8),
        "text before": b"# release key\n" + pem,
        "text after": pem + b"# release key\n",
    }
    if key_type == "ecdsa-p256":
        variants["one long line"] = _pem(der, width=200)
        point = signer.public.key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        compressed = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + point
        variants["compressed point"] = _pem(compressed)
    calls: list[bytes] = []
    real = serialization.load_pem_public_key

    def spy(data: bytes, *args: object, **kwargs: object) -> object:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(serialization, "load_pem_public_key", spy)
    for name, text in variants.items():
        parsed = parse_public_key(text)
        assert calls[-1:] == [text], name
        # The key id hashes the re-serialized canonical DER, as it always did.
        assert (parsed.keyid, parsed.key_type, parsed.der()) == (signer.keyid, key_type, der), name


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_canonical_pem_with_extra_bytes_in_the_der_is_refused(key_type: str) -> None:
    der = _crypto_der(generate_key(key_type))
    for bad in (der + b"\x00", der[:-1]):
        with pytest.raises(InputError, match="not a PEM public key"):
            parse_public_key(_pem(bad))


def test_prefixes_are_the_canonical_layouts() -> None:
    assert _crypto_der(generate_key("ed25519")).startswith(ED25519_SPKI_PREFIX)
    assert _crypto_der(generate_key("ecdsa-p256")).startswith(P256_SPKI_PREFIX + b"\x04")


def test_signing_modules_import_without_cryptography(tmp_path: Path) -> None:
    pems = [generate_key(kind).public_pem().decode() for kind in KEY_TYPES]
    script = f"""
import sys
import graven.signing, graven.signing.keys, graven.signing.dsse, graven.signing.trust
import graven.signing.bundle, graven.signing.provenance, graven.signing.memo
import graven.service.provenance, graven.service.deploy_verify
from graven.signing.keys import parse_public_key
keys = [parse_public_key(pem.encode()) for pem in {pems!r}]
assert [k.key_type for k in keys] == ["ed25519", "ecdsa-p256"]
assert [k.pem().decode() for k in keys] == {pems!r}
print("cryptography" in sys.modules)
from graven.signing.keys import PublicKey  # the alias still exists, made on first use
print("cryptography" in sys.modules)
"""
    out = _run_python(script)
    assert out.split() == ["False", "True"]


# -- the memo itself -----------------------------------------------------------------------------------


def test_entry_name_is_a_keyed_mac_of_key_message_and_signature() -> None:
    keyid = "ab" * 32
    name = entry_name(RECORD_KEY, keyid, b"message", b"sig")
    assert name is not None
    assert len(name) == 64
    assert name == entry_name(RECORD_KEY, keyid, b"message", b"sig")
    assert DOMAIN == b"graven.sigmemo/v1\0"
    others = {
        entry_name(bytes(32), keyid, b"message", b"sig"),
        entry_name(RECORD_KEY, "cd" * 32, b"message", b"sig"),
        entry_name(RECORD_KEY, keyid, b"messagE", b"sig"),
        entry_name(RECORD_KEY, keyid, b"message", b"siG"),
        entry_name(RECORD_KEY, keyid, b"message", b"sig\0"),
        hashlib.sha256(
            DOMAIN + keyid.encode() + b"\0" + hashlib.sha256(b"message").digest() + b"sig"
        ).hexdigest(),
    }
    assert name not in others
    assert len(others) == 6
    assert entry_name(RECORD_KEY, "not a key id", b"message", b"sig") is None


def test_add_creates_an_empty_private_file(tmp_path: Path) -> None:
    memo = _memo(tmp_path)
    keyid = "ab" * 32
    assert not memo.seen(keyid, b"m", b"s")
    memo.add(keyid, b"m", b"s")
    memo.add(keyid, b"m", b"s")  # already there: fine
    assert memo.seen(keyid, b"m", b"s")
    assert not memo.seen(keyid, b"m", b"t")
    (entry,) = _entries(memo)
    assert entry == entry_name(RECORD_KEY, keyid, b"m", b"s")
    info = (memo.directory / entry).lstat()
    assert (info.st_size, info.st_mode & 0o777) == (0, 0o600)
    assert memo.directory.stat().st_mode & 0o777 == 0o700
    assert memo.directory.parent.stat().st_mode & 0o777 == 0o700


def test_the_oldest_entries_are_removed_beyond_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memo_module, "KEEP", 8)
    memo = _memo(tmp_path)
    keyid = "ab" * 32
    for i in range(8):
        memo.add(keyid, b"m%d" % i, b"s")
        name = entry_name(RECORD_KEY, keyid, b"m%d" % i, b"s")
        os.utime(memo.directory / str(name), ns=(10**18 + i, 10**18 + i))
    (memo.directory / "not-an-entry").write_bytes(b"")  # left alone, not counted
    assert len(_entries(memo)) == 9
    memo.add(keyid, b"m8", b"s")  # the ninth entry: down to 6, the newest kept
    kept = [i for i in range(9) if memo.seen(keyid, b"m%d" % i, b"s")]
    assert kept == [3, 4, 5, 6, 7, 8]
    assert (memo.directory / "not-an-entry").exists()


def test_entries_are_never_followed_through_symlinks(tmp_path: Path) -> None:
    memo = _memo(tmp_path)
    keyid = "ab" * 32
    name = entry_name(RECORD_KEY, keyid, b"m", b"s")
    assert name is not None
    memo.directory.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (memo.directory / name).symlink_to(target)
    assert not memo.seen(keyid, b"m", b"s")  # a symlink is no entry, even to a regular file
    (memo.directory / name).unlink()
    (memo.directory / name).mkdir()
    assert not memo.seen(keyid, b"m", b"s")  # nor is a directory
    (memo.directory / name).rmdir()
    dangling = tmp_path / "created-through-the-link"
    (memo.directory / name).symlink_to(dangling)
    memo.add(keyid, b"m", b"s")
    assert not dangling.exists()
    assert not memo.seen(keyid, b"m", b"s")


def test_memo_failures_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "cache").write_bytes(b"not a directory")
    memo = _memo(tmp_path)
    memo.add("ab" * 32, b"m", b"s")
    assert not memo.seen("ab" * 32, b"m", b"s")

    def no_key() -> bytes:
        raise BackendError("the record key is damaged")

    keyless = FileSignatureMemo(tmp_path / "other", no_key)
    keyless.add("ab" * 32, b"m", b"s")
    assert not keyless.seen("ab" * 32, b"m", b"s")
    assert not (tmp_path / "other").exists()


# -- the memo never changes what the policy accepts ----------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_memo_hit_skips_only_the_cryptographic_check(
    tmp_path: Path, key_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = generate_key(key_type)
    memo = _memo(tmp_path)
    policy = TrustPolicy.load(_trust(tmp_path, generate_key(), signer)).with_memo(memo)
    data = signed_provenance(signer).to_json()
    calls = _count_cryptographic_checks(monkeypatch)
    first = policy.verify_attestation(data, ARTIFACT)
    assert calls and len(_entries(memo)) == 1
    calls.clear()
    again = policy.verify_attestation(data, ARTIFACT)
    assert calls == []
    assert (again.keyid, again.statement, again.payload) == (first.keyid, first.statement, first.payload)
    # The statement is still checked: the same signed provenance is not one for another artifact.
    with pytest.raises(VerificationError, match="provenance is for"):
        policy.verify_attestation(data, "sha256:" + "00" * 32)
    assert calls == []


def test_a_remembered_signature_needs_no_check_when_another_key_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer, other = generate_key(), generate_key("ecdsa-p256")
    memo = _memo(tmp_path)
    genuine = signed_provenance(signer)
    unhinted = Envelope(genuine.payload, genuine.payload_type, (Signature("", genuine.signatures[0].sig),))
    policy = TrustPolicy(keys=(other.public, signer.public), memo=memo)  # the signer is tried second
    calls = _count_cryptographic_checks(monkeypatch)
    assert policy.verify_attestation(unhinted.to_json(), ARTIFACT).keyid == signer.keyid
    assert calls == [other.keyid, signer.keyid]
    calls.clear()
    assert policy.verify_attestation(unhinted.to_json(), ARTIFACT).keyid == signer.keyid
    assert calls == []


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_tampered_envelope_fails_with_the_genuine_ones_memo(tmp_path: Path, key_type: str) -> None:
    signer = generate_key(key_type)
    memo = _memo(tmp_path)
    policy = TrustPolicy.load(_trust(tmp_path, signer)).with_memo(memo)
    genuine = signed_provenance(signer)
    policy.verify_attestation(genuine.to_json(), ARTIFACT)
    assert len(_entries(memo)) == 1
    sig = genuine.signatures[0]
    flipped = bytes([sig.sig[0] ^ 1]) + sig.sig[1:]
    tampered = [
        Envelope(genuine.payload.replace(b"web-frontend", b"web-frontenD"), genuine.payload_type, (sig,)),
        Envelope(genuine.payload, genuine.payload_type + " ", (sig,)),
        Envelope(genuine.payload, genuine.payload_type, (Signature(sig.keyid, flipped),)),
        Envelope(genuine.payload, genuine.payload_type, (Signature(sig.keyid, sig.sig + b"\0"),)),
    ]
    for envelope in tampered:
        with pytest.raises(VerificationError, match=r"^bad signature: "):
            policy.verify_attestation(envelope.to_json(), ARTIFACT)
    assert len(_entries(memo)) == 1  # a failed check writes nothing


def test_forged_entries_never_make_a_bad_signature_pass(tmp_path: Path) -> None:
    signer = generate_key()
    memo = _memo(tmp_path)
    policy = TrustPolicy.load(_trust(tmp_path, signer)).with_memo(memo)
    genuine = signed_provenance(signer)
    payload = genuine.payload.replace(b"web-frontend", b"web-frontenD")
    forged = Envelope(payload, genuine.payload_type, genuine.signatures)
    message, sig = forged.pae(), forged.signatures[0].sig
    memo.directory.mkdir(parents=True)
    names = {os.urandom(32).hex() for _ in range(200)}
    for other_key in (bytes(32), os.urandom(32), b"\xff" * 32):
        names.add(str(entry_name(other_key, signer.keyid, message, sig)))
    encoding = DOMAIN + signer.keyid.encode() + b"\0" + hashlib.sha256(message).digest()
    names.add(hashlib.sha256(encoding + len(sig).to_bytes(4, "big") + sig).hexdigest())
    names.add(hashlib.sha256(encoding + sig).hexdigest())
    for name in names:
        (memo.directory / name).write_bytes(b"")
    with pytest.raises(VerificationError, match=r"^bad signature: "):
        policy.verify_attestation(forged.to_json(), ARTIFACT)


def test_a_revoked_key_is_refused_with_a_memo_entry(tmp_path: Path) -> None:
    signer = generate_key()
    memo = _memo(tmp_path)
    trust_dir = _trust(tmp_path, signer, generate_key())
    data = signed_provenance(signer).to_json()
    TrustPolicy.load(trust_dir).with_memo(memo).verify_attestation(data, ARTIFACT)
    assert len(_entries(memo)) == 1
    revoked = TrustPolicy.load(trust_dir, _policy_file(tmp_path, f'revoked = ["{signer.keyid}"]\n'))
    with pytest.raises(PolicyError, match=f"^signed by revoked key {signer.keyid}$"):
        revoked.with_memo(memo).verify_attestation(data, ARTIFACT)


def test_an_untrusted_key_is_refused_with_a_memo_entry(tmp_path: Path) -> None:
    signer, other = generate_key(), generate_key()
    memo = _memo(tmp_path)
    data = signed_provenance(signer).to_json()
    TrustPolicy.load(_trust(tmp_path, signer)).with_memo(memo).verify_attestation(data, ARTIFACT)
    assert len(_entries(memo)) == 1
    later = TrustPolicy(keys=(other.public,), memo=memo)  # the key is no longer trusted
    with pytest.raises(PolicyError, match=f"^signed by untrusted key {signer.keyid}"):
        later.verify_attestation(data, ARTIFACT)


def test_an_environment_key_set_is_applied_with_a_memo_entry(tmp_path: Path) -> None:
    ci, release = generate_key(), generate_key()
    memo = _memo(tmp_path)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "release.pub").write_bytes(release.public_pem())
    policy_file = _policy_file(tmp_path, '[env.prod]\nkeys = ["keys/release.pub"]\n')
    policy = TrustPolicy.load(_trust(tmp_path, ci), policy_file).with_memo(memo)
    data = signed_provenance(ci).to_json()
    assert policy.verify_attestation(data, ARTIFACT, "staging").keyid == ci.keyid
    assert len(_entries(memo)) == 1
    with pytest.raises(PolicyError, match=f"^signed by untrusted key {ci.keyid}"):
        policy.verify_attestation(data, ARTIFACT, "prod")


# -- the service: load_policy, deploy-style checks and the explicit verify commands ---------------------


def test_load_policy_uses_the_homes_memo_and_explicit_checks_do_not(
    home: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = generate_key()
    store_trusted_key(home.home.trust, signer.public_pem())
    data = signed_provenance(signer).to_json()
    _attest(home, data)
    policy = load_policy(home)
    assert isinstance(policy.memo, FileSignatureMemo)
    assert policy.memo.directory == home.home.root / "cache" / "signatures"
    assert load_policy(home, memo=False).memo is None
    assert policy == load_policy(home, memo=False)  # the memo is not part of what the policy says

    calls = _count_cryptographic_checks(monkeypatch)
    verified_provenances(home, Digest.parse(ARTIFACT), policy=policy, env="staging")
    assert len(calls) == 1
    assert len(os.listdir(home.home.root / "cache" / "signatures")) == 1
    verified_provenances(home, Digest.parse(ARTIFACT), policy=policy, env="staging")
    assert len(calls) == 1  # remembered
    # graven verify and graven attest verify check the signature for real, whatever the policy.
    assert check_provenance(home, Digest.parse(ARTIFACT), policy=policy).ok
    assert len(calls) == 2
    assert check_attestation_file(data, Digest.parse(ARTIFACT), policy=policy).ok
    assert len(calls) == 3


def test_a_home_whose_memo_cannot_be_written_still_verifies(home: Context) -> None:
    signer = generate_key()
    store_trusted_key(home.home.trust, signer.public_pem())
    _attest(home, signed_provenance(signer).to_json())
    (home.home.root / "cache").write_bytes(b"a file where the cache directory would be")
    for _ in range(2):
        (found, _digest), *_ = verified_provenances(home, Digest.parse(ARTIFACT), policy=load_policy(home))
        assert found.keyid == signer.keyid


def test_a_damaged_record_key_turns_the_memo_off(tmp_path: Path) -> None:
    signer = generate_key()
    root = tmp_path / "home"
    store_trusted_key(root / "trust", signer.public_pem())
    (root / "keys").mkdir(mode=0o700)
    (root / "keys" / "records.hmac").write_bytes(b"short")
    with Context(home=Home(root=root)) as ctx:
        _attest(ctx, signed_provenance(signer).to_json())
        (found, _digest), *_ = verified_provenances(ctx, Digest.parse(ARTIFACT), policy=load_policy(ctx))
        assert found.keyid == signer.keyid
        memo = signature_memo(ctx)
        assert not memo.seen(signer.keyid, b"m", b"s")
    assert not (root / "cache" / "signatures").exists()


def _run_python(script: str, *args: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


_DEPLOY_STYLE_CHECK = """
import sys
from pathlib import Path
from graven.home import Home
from graven.model.digest import Digest
from graven.service.context import Context
from graven.service.provenance import load_policy, verified_provenances
with Context(home=Home(root=Path(sys.argv[1]))) as ctx:
    policy = load_policy(ctx, memo=sys.argv[3] == "memo")
    found = verified_provenances(ctx, Digest.parse(sys.argv[2]), policy=policy, env="prod")
    print(found[0][0].keyid, "cryptography" in sys.modules)
"""


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_warm_memo_verifies_without_importing_cryptography(tmp_path: Path, key_type: str) -> None:
    signer = generate_key(key_type)
    root = tmp_path / "home"
    store_trusted_key(root / "trust", generate_key().public_pem())
    store_trusted_key(root / "trust", signer.public_pem())
    with Context(home=Home(root=root)) as ctx:
        _attest(ctx, signed_provenance(signer).to_json())
    args = (str(root), ARTIFACT)
    assert _run_python(_DEPLOY_STYLE_CHECK, *args, "memo").split() == [signer.keyid, "True"]  # cold
    assert len(os.listdir(root / "cache" / "signatures")) == 1
    assert _run_python(_DEPLOY_STYLE_CHECK, *args, "memo").split() == [signer.keyid, "False"]  # warm
    assert _run_python(_DEPLOY_STYLE_CHECK, *args, "no-memo").split() == [signer.keyid, "True"]
    # The revocation list is read each time: with the entry still there, the key is refused.
    (root / "trust" / "revoked").write_text(signer.keyid + "\n")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    refused = subprocess.run(
        [sys.executable, "-c", _DEPLOY_STYLE_CHECK, *args, "memo"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1
    assert f"RevokedSignerError: signed by revoked key {signer.keyid}" in refused.stderr
    assert len(os.listdir(root / "cache" / "signatures")) == 1


def test_memo_entries_are_bound_to_the_homes_record_key(tmp_path: Path) -> None:
    """An entry copied from another home (another record key) is no entry here."""
    signer = generate_key()
    data = signed_provenance(signer).to_json()
    (tmp_path / "mine").mkdir()
    (tmp_path / "theirs").mkdir()
    mine, theirs = _memo(tmp_path / "mine"), _memo(tmp_path / "theirs", os.urandom(32))
    TrustPolicy.load(_trust(tmp_path, signer)).with_memo(theirs).verify_attestation(data, ARTIFACT)
    mine.directory.mkdir(parents=True)
    for name in _entries(theirs):
        (mine.directory / name).write_bytes(b"")
    envelope = json.loads(data)
    message = Envelope(base64.b64decode(envelope["payload"]), envelope["payloadType"], ()).pae()
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    assert theirs.seen(signer.keyid, message, sig)
    assert not mine.seen(signer.keyid, message, sig)
