"""Keys: generation, key ids, private key files (mode 0600, atomic) and the key store."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from graven.errors import GravenError, InputError, NotFoundError
from graven.signing.keys import (
    KeyEntry,
    KeyStore,
    check_key_name,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    parse_key_type,
    parse_private_key,
    parse_public_key,
    write_private_key,
    write_public_key,
)

KEY_TYPES = ["ed25519", "ecdsa-p256"]


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_generated_key_signs_and_verifies(key_type: str) -> None:
    key = generate_key(key_type)
    assert key.key_type == key_type
    signature = key.sign(b"data")
    assert key.public.verify(signature, b"data")
    assert not key.public.verify(signature, b"datA")
    assert not generate_key(key_type).public.verify(signature, b"data")


def test_default_key_type_is_ed25519() -> None:
    assert generate_key().key_type == "ed25519"


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_key_id_is_sha256_of_spki_der(key_type: str) -> None:
    key = generate_key(key_type)
    der = key.private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.keyid == hashlib.sha256(der).hexdigest()
    assert key_id(key.public.key) == key.keyid
    assert parse_public_key(key.public_pem()).keyid == key.keyid


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_pem_formats(key_type: str) -> None:
    key = generate_key(key_type)
    assert key.private_pem().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert key.public_pem().startswith(b"-----BEGIN PUBLIC KEY-----\n")  # SubjectPublicKeyInfo
    assert parse_private_key(key.private_pem()).keyid == key.keyid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ed25519", "ed25519"),
        ("ECDSA", "ecdsa-p256"),
        ("p256", "ecdsa-p256"),
        (" ecdsa-p256 ", "ecdsa-p256"),
    ],
)
def test_parse_key_type(text: str, expected: str) -> None:
    assert parse_key_type(text) == expected


def test_unknown_key_type_is_refused() -> None:
    with pytest.raises(InputError, match=r"unknown key type 'rsa' \(expected one of: ed25519, ecdsa-p256\)"):
        generate_key("rsa")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_private_key_file_round_trip(tmp_path: Path, key_type: str) -> None:
    key = generate_key(key_type)
    path = tmp_path / "signing.key"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key.private_pem()
    assert load_private_key(path).keyid == key.keyid
    write_public_key(tmp_path / "signing.pub", key)
    assert load_public_key(tmp_path / "signing.pub").keyid == key.keyid
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_private_key_is_0600_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_key())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_private_key_file_is_created_exclusively_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real_open = os.open

    unnamed = getattr(os, "O_TMPFILE", 0)

    def spy(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_CREAT or (unnamed and flags & unnamed == unnamed):
            calls.append((flags, mode))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    write_private_key(tmp_path / "k.key", generate_key())
    assert calls, "the key file was not created with os.open"
    for flags, mode in calls:
        # a named file exclusively; an unnamed one (O_TMPFILE) is new by nature, and O_EXCL would
        # forbid giving it a name
        assert flags & os.O_EXCL if flags & os.O_CREAT else not flags & os.O_EXCL
        assert mode == 0o600


def test_a_key_writer_killed_midway_leaves_no_key_material_behind(tmp_path: Path) -> None:
    """keys generate killed between writing the key and naming it left a hidden .NAME.key.tmp-* file
    holding the private key, which nothing removed: the key is now written to an unnamed file
    (O_TMPFILE) that only gets a name, the key's, once complete."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from graven.signing.keys import generate_key, write_private_key\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed once the bytes are written\n"
        "write_private_key(sys.argv[1], generate_key())\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k.key")], check=False)
    assert result.returncode == -9
    assert list(tmp_path.iterdir()) == []


def test_private_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, first := generate_key())
    with pytest.raises(InputError, match="already exists; refusing to overwrite it"):
        write_private_key(path, generate_key())
    assert load_private_key(path).keyid == first.keyid


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_key())
    path.chmod(0o644)
    with pytest.raises(InputError) as caught:
        load_private_key(path)
    assert str(caught.value) == (
        f"private key {path} is readable by others (mode 0644); run chmod 600 {path}"
    )
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_a_public_key_given_as_the_private_key_is_named_as_one(tmp_path: Path, mode: int) -> None:
    """GRAVEN_SIGNING_KEY naming the .pub file (0644, as it is written) said to `chmod 600` it, which
    then said it is no private key: the first answer is what it is."""
    path = tmp_path / "k.pub"
    write_public_key(path, generate_key())
    path.chmod(mode)
    with pytest.raises(InputError) as caught:
        load_private_key(path, named_by="GRAVEN_SIGNING_KEY")
    assert str(caught.value) == (
        f"GRAVEN_SIGNING_KEY file {path} is a public key, which cannot sign: name the private key file "
        "(GRAVEN_HOME/keys/NAME.key) or the key's name"
    )


@pytest.mark.parametrize(("mode", "word"), [(0o640, "readable"), (0o604, "readable"), (0o620, "writable")])
def test_private_key_open_to_group_or_others_is_refused(tmp_path: Path, mode: int, word: str) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_key())
    path.chmod(mode)
    with pytest.raises(InputError, match=rf"is {word} by others \(mode {mode:04o}\); run chmod 600 "):
        load_private_key(path)


def test_private_key_0400_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, key := generate_key())
    path.chmod(0o400)
    assert load_private_key(path).keyid == key.keyid


def test_missing_private_key(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_private_key(tmp_path / "nope.key")


def test_garbage_private_key(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(InputError, match="not a PEM private key"):
        load_private_key(path)


def test_encrypted_private_key_is_refused() -> None:
    pem = generate_key().private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InputError, match="is encrypted"):
        parse_private_key(pem)


def test_public_key_parsing_refusals() -> None:
    with pytest.raises(InputError, match="not a PEM public key"):
        parse_public_key(b"hello")
    with pytest.raises(InputError, match="is a private key; give the public key"):
        parse_public_key(generate_key().private_pem())
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InputError, match="unsupported key type"):
        parse_public_key(rsa_pem)
    p384 = ec.generate_private_key(ec.SECP384R1())
    p384_pem = p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InputError, match="unsupported elliptic curve secp384r1"):
        parse_public_key(p384_pem)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_file_of_several_public_keys_is_refused_not_read_as_its_first(key_type: str) -> None:
    # `graven keys trust` takes one key (README): a second one was silently left untrusted
    first, second = generate_key(key_type).public_pem(), generate_key().public_pem()
    with pytest.raises(InputError, match="2 PEM blocks; give one public key"):
        parse_public_key(first + second, "keys.pem")
    with pytest.raises(InputError, match="2 PEM blocks"):
        parse_public_key(first + first, "keys.pem")
    assert parse_public_key(first).keyid == parse_public_key(b"comment\n" + first).keyid


def test_key_store_generate_list_export(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    assert store.list() == []
    ci = store.generate("ci")
    release = store.generate("release.v2", "ecdsa-p256")
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys" / "ci.key").stat().st_mode) == 0o600
    assert store.list() == [
        KeyEntry("ci", ci.keyid, "ed25519"),
        KeyEntry("release.v2", release.keyid, "ecdsa-p256"),
    ]
    exported = store.export_public("release.v2")
    assert exported.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert parse_public_key(exported).keyid == release.keyid
    with pytest.raises(InputError, match="key ci already exists"):
        store.generate("ci")
    with pytest.raises(NotFoundError, match="no key named nope"):
        store.export_public("nope")


def test_key_store_list_refuses_open_private_key_without_public(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.generate("a")
    (tmp_path / "a.pub").unlink()
    assert store.list()[0].name == "a"
    (tmp_path / "a.key").chmod(0o644)
    with pytest.raises(InputError, match="run chmod 600"):
        store.list()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "with space", "x" * 65, "é", "a\nb", "key:1"])
def test_invalid_key_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="invalid key name"):
        KeyStore(tmp_path).generate(name)
    with pytest.raises(InputError, match="invalid key name"):
        check_key_name(name)


@pytest.mark.parametrize("name", ["-", "-x", "--json", ".hidden", "_x"])
def test_a_new_key_s_name_starts_with_a_letter_or_digit(tmp_path: Path, name: str) -> None:
    # `keys generate --name -x` made keys/-x.key, which `keys export -x` then took for an option
    with pytest.raises(InputError, match="start it with a letter or digit"):
        KeyStore(tmp_path).generate(name)
    assert not list(tmp_path.iterdir())
    assert check_key_name(name) == name  # a key an older version named so is still found


@pytest.mark.parametrize("name", ["a", "ci-2024", "Release_1.0", "x" * 64, "0.x"])
def test_valid_key_names(name: str) -> None:
    assert check_key_name(name) == name


def test_resolve_by_name_and_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(tmp_path / "keys")
    entry = store.generate("ci")
    assert store.resolve("ci").keyid == entry.keyid
    path = tmp_path / "elsewhere.key"
    write_private_key(path, other := generate_key("ecdsa-p256"))
    assert store.resolve(str(path)).keyid == other.keyid
    monkeypatch.chdir(tmp_path)
    assert store.resolve("elsewhere.key").keyid == other.keyid  # a relative path to a file
    with pytest.raises(NotFoundError, match=r"no signing key 'nope': not a file, and no key nope.key"):
        store.resolve("nope")
    with pytest.raises(NotFoundError, match=r"signing key file /no/such/file.key does not exist"):
        store.resolve("/no/such/file.key")
    with pytest.raises(InputError, match=r"is a directory; GRAVEN_SIGNING_KEY names a key file"):
        store.resolve(str(tmp_path))
    with pytest.raises(InputError, match="no signing key given"):
        store.resolve("  ")
    # the key's text where its path belongs (a CI secret pasted as is): refused, never echoed (a
    # review saw it whole in `graven -v build`'s traceback)
    pem = path.read_text()
    for text in (pem, pem.replace("\n", " ")):
        with pytest.raises(InputError, match="holds key text") as refused:
            store.resolve(text)
        assert "BEGIN" not in str(refused.value) and pem.splitlines()[1][:20] not in str(refused.value)
    path.chmod(0o644)
    with pytest.raises(InputError, match="run chmod 600"):
        store.resolve(str(path))


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_resolve_never_echoes_the_base64_of_a_key(tmp_path: Path, key_type: str) -> None:
    """The base64 body of a private key where its path belongs (a CI secret stored without its PEM
    lines): refused as key text, never quoted (it reads as a key name or a path otherwise)."""
    store = KeyStore(tmp_path / "keys")
    pem = generate_key(key_type).private_pem().decode()
    body = "".join(pem.splitlines()[1:-1])
    for text in (body, body.rstrip("="), " ".join(pem.splitlines()[1:-1])):
        with pytest.raises(InputError, match="holds key text") as refused:
            store.resolve(text)
        assert body[8:40] not in str(refused.value)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_resolve_never_echoes_a_key_encoded_for_a_ci_secret(tmp_path: Path, key_type: str) -> None:
    """A CI secret is often the key file's base64 (`base64 -w0 key.pem`) or a raw Ed25519 seed (hex
    or base64): set as GRAVEN_SIGNING_KEY without being decoded, it names no file and no key, and
    the error line (and --json) printed it whole."""
    store = KeyStore(tmp_path / "keys")
    key = generate_key(key_type)
    pem = key.private_pem()
    whole = base64.b64encode(pem).decode()
    with pytest.raises(InputError, match="holds key text") as refused:
        store.resolve(whole)
    assert whole[20:60] not in str(refused.value)
    seed = hashlib.sha256(pem).digest()  # 32 bytes, as a raw Ed25519 seed (and 64: libsodium's key)
    for text in (
        seed.hex(),
        (seed + seed).hex(),
        base64.b64encode(seed).decode(),
        base64.urlsafe_b64encode(seed + seed).decode().rstrip("="),
    ):
        with pytest.raises(GravenError) as missing:
            store.resolve(text)
        assert text[4:40] not in str(missing.value), text
        assert "GRAVEN_SIGNING_KEY" in str(missing.value)


def test_resolve_names_a_fifo_or_dangling_link_as_such(tmp_path: Path) -> None:
    """GRAVEN_SIGNING_KEY naming a FIFO or a dangling link said the file "does not exist"."""
    store = KeyStore(tmp_path / "keys")
    os.mkfifo(tmp_path / "fifo.key")
    (tmp_path / "gone.key").symlink_to(tmp_path / "nothing")
    for name in ("fifo.key", "gone.key"):
        with pytest.raises(InputError, match="is not a regular file"):
            store.resolve(str(tmp_path / name))


def test_a_stale_public_key_file_is_never_exported_nor_listed_as_the_signing_key(tmp_path: Path) -> None:
    """keys/NAME.key replaced (a restore, a key copied over) beside the old NAME.pub: `keys list` showed
    the old key's id for NAME and `keys export NAME` handed out the old public key, which verifies
    nothing that NAME now signs."""
    store = KeyStore(tmp_path / "keys")
    old = store.generate("ci")
    store.private_path("ci").unlink()
    write_private_key(store.private_path("ci"), new := generate_key())
    with pytest.raises(InputError, match=r"ci.pub .* is not the public half of ci.key") as refused:
        store.export_public("ci")
    assert old.keyid[:16] in str(refused.value) and new.keyid[:16] in str(refused.value)
    skipped: list[str] = []
    assert store.list(lambda name, exc: skipped.append(name)) == []
    assert skipped == ["ci"]
    store.public_path("ci").unlink()  # the remedy: NAME.pub derived from NAME.key again
    assert parse_public_key(store.export_public("ci")).keyid == new.keyid
    # a private key that cannot be read (mode 0644 here) leaves NAME.pub what it is: exported as before
    write_public_key(store.public_path("ci"), new)
    store.private_path("ci").chmod(0o644)
    assert parse_public_key(store.export_public("ci")).keyid == new.keyid


@pytest.mark.timeout(20)
def test_a_private_key_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """keys/NAME.key as a FIFO (nobody writing): `keys list`, `keys export` and every build blocked in
    open() for ever before the regular-file check could refuse it."""
    store = KeyStore(tmp_path / "keys")
    store.directory.mkdir()
    os.mkfifo(store.private_path("ci"), 0o600)
    with pytest.raises(InputError, match="is not a regular file"):
        store.load("ci")
    skipped: list[str] = []
    assert store.list(lambda name, exc: skipped.append(name)) == [] and skipped == ["ci"]
