"""Signing keys: Ed25519 (the default) and ECDSA P-256.

A key id is the lowercase hex sha256 of the public key's SubjectPublicKeyInfo DER encoding, so
the same public key always has the same id, whatever file or name it comes from.

Private keys are written as unencrypted PKCS#8 PEM with mode 0600 from the moment the file exists,
and are only loaded from files that no group or other user can read or write. Public keys are
SubjectPublicKeyInfo PEM.

``cryptography`` (12-17 ms to import) is imported by the functions that need it: signing, generating,
a real signature check, serialization of a private key, and parsing a PEM that is not one of the two
canonical public key layouts. A trusted public key in canonical form (what graven writes, what
``openssl pkey -pubout`` writes) is read without it: its DER is checked byte for byte against the one
layout each key type has (and a P-256 point against the curve equation, as OpenSSL does), and the
``cryptography`` key object is made on first real use. So a command whose signature checks are all
remembered (:mod:`graven.signing.memo`) never imports it.

:class:`KeyStore` manages a directory of named keys (``NAME.key`` + ``NAME.pub``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeAlias

from graven.core.record import Frozen
from graven.errors import BackendError, GravenError, InputError, NotFoundError
from graven.home import make_home_dir

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    PrivateKey: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    PublicKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey

__all__ = [
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "KeyEntry",
    "KeyStore",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "VerifyingKey",
    "canonical_key_type",
    "check_key_name",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_key_type",
    "parse_private_key",
    "parse_public_key",
    "read_public_key_file",
    "write_private_key",
    "write_public_key",
]

KeyType: TypeAlias = Literal["ed25519", "ecdsa-p256"]
KEY_TYPES: Final[tuple[KeyType, ...]] = ("ed25519", "ecdsa-p256")
DEFAULT_KEY_TYPE: Final[KeyType] = "ed25519"

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        """``PrivateKey`` and ``PublicKey`` (type aliases of cryptography classes), made on first use."""
        if name in {"PrivateKey", "PublicKey"}:
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.asymmetric.ed25519 import (
                Ed25519PrivateKey,
                Ed25519PublicKey,
            )

            aliases = {
                "PrivateKey": Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
                "PublicKey": Ed25519PublicKey | ec.EllipticCurvePublicKey,
            }
            globals().update(aliases)
            return aliases[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_KEY_TYPE_ALIASES: Final[dict[str, KeyType]] = {
    "ed25519": "ed25519",
    "ecdsa-p256": "ecdsa-p256",
    "ecdsa": "ecdsa-p256",
    "p256": "ecdsa-p256",
    "p-256": "ecdsa-p256",
    "ecdsa-p-256": "ecdsa-p256",
    "ecdsa-sha2-nistp256": "ecdsa-p256",
}
_KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_KEY_FILE = 64 * 1024

# The SubjectPublicKeyInfo DER of each supported key type has exactly one canonical layout: a fixed
# prefix (SEQUENCE, AlgorithmIdentifier, BIT STRING header) and then the key. Ed25519: OID 1.3.101.112
# and 32 bytes. ECDSA P-256: id-ecPublicKey with the named curve prime256v1 and an uncompressed point
# (0x04, X, Y). These are the bytes the key id hashes.
ED25519_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
P256_SPKI_PREFIX: Final = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_ED25519_SPKI_SIZE: Final = len(ED25519_SPKI_PREFIX) + 32
_P256_SPKI_SIZE: Final = len(P256_SPKI_PREFIX) + 65
# P-256 (SEC 2 / FIPS 186-4): y^2 = x^3 - 3x + b over GF(p).
_P256_P: Final = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_P256_B: Final = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
# PKCS#8 of an Ed25519 private key: SEQUENCE, version 0, AlgorithmIdentifier 1.3.101.112, and the
# OCTET STRING that wraps the 32-byte seed (RFC 8410, section 7).
ED25519_PKCS8_PREFIX: Final = bytes.fromhex("302e020100300506032b657004220420")
_CANONICAL_PRIVATE_PEM = re.compile(
    rb"-----BEGIN PRIVATE KEY-----\n((?:[A-Za-z0-9+/=]{1,64}\n){1,4})-----END PRIVATE KEY-----\n?"
)
# A PEM public key as graven and OpenSSL write it: one block, base64 lines of at most 64 characters.
_CANONICAL_PEM = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\n((?:[A-Za-z0-9+/=]{1,64}\n){1,4})-----END PUBLIC KEY-----\n?"
)


def parse_key_type(text: str) -> KeyType:
    """Parse a key type as typed by a user (``ed25519``, ``ecdsa-p256``, ``ecdsa``, ``p256``)."""
    found = _KEY_TYPE_ALIASES.get(text.strip().lower())
    if found is None:
        raise InputError(f"unknown key type {text!r} (expected one of: {', '.join(KEY_TYPES)})")
    return found


def _key_type_of(key: PublicKey | PrivateKey, source: str) -> KeyType:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return "ed25519"
    from cryptography.hazmat.primitives.asymmetric import ec  # only for ECDSA (start-up)

    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise InputError(
        f"{source}: unsupported elliptic curve {key.curve.name} (graven signs with Ed25519 or ECDSA P-256)"
    )


def _spki_der(public_key: PublicKey) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(public_key, Ed25519PublicKey):  # its one layout, without the serialization module
        return ED25519_SPKI_PREFIX + public_key.public_bytes_raw()
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key: PublicKey) -> str:
    """The key id of ``public_key``: hex sha256 of its SubjectPublicKeyInfo DER encoding."""
    return hashlib.sha256(_spki_der(public_key)).hexdigest()


def _on_p256(point: bytes) -> bool:
    """Whether the 64 bytes ``point`` (X, Y) are coordinates below p of a point on the curve P-256
    (what OpenSSL checks when it loads an uncompressed point; the cofactor is 1, so that is all)."""
    x = int.from_bytes(point[:32], "big")
    y = int.from_bytes(point[32:], "big")
    if x >= _P256_P or y >= _P256_P:
        return False
    return (y * y - (x * x * x - 3 * x + _P256_B)) % _P256_P == 0


def canonical_key_type(der: bytes) -> KeyType | None:
    """The key type of a SubjectPublicKeyInfo DER in the one canonical layout of its type, else None
    (other layouts may still be valid keys: ``cryptography`` decides those)."""
    if len(der) == _ED25519_SPKI_SIZE and der.startswith(ED25519_SPKI_PREFIX):
        return "ed25519"
    if (
        len(der) == _P256_SPKI_SIZE
        and der.startswith(P256_SPKI_PREFIX)
        and der[len(P256_SPKI_PREFIX)] == 0x04
        and _on_p256(der[len(P256_SPKI_PREFIX) + 1 :])
    ):
        return "ecdsa-p256"
    return None


def _canonical_der(pattern: re.Pattern[bytes], pem: bytes) -> bytes | None:
    """The DER of a PEM block that ``pattern`` matches whole (one block, lines of at most 64
    characters) in canonical base64, else None (then cryptography judges the PEM)."""
    match = pattern.fullmatch(pem)
    if match is None:
        return None
    text = match.group(1).replace(b"\n", b"")
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return der if base64.b64encode(der) == text else None  # else non-canonical padding bits


def _canonical_pem_der(pem: bytes) -> bytes | None:
    """The DER of a public key PEM written in canonical form (one block, canonical base64, the DER in
    the canonical layout of a supported key type), else None."""
    der = _canonical_der(_CANONICAL_PEM, pem)
    return der if der is not None and canonical_key_type(der) is not None else None


def _pem_of_der(der: bytes, label: bytes = b"PUBLIC KEY") -> bytes:
    """The PEM block of ``der`` (a SubjectPublicKeyInfo unless ``label`` says otherwise), byte for
    byte as ``cryptography`` writes it."""
    text = base64.b64encode(der)
    lines = b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))
    return b"-----BEGIN " + label + b"-----\n" + lines + b"-----END " + label + b"-----\n"


_P = 2**255 - 19
# The y coordinates of the 8 points of small order of edwards25519 (each y here belongs to small-order
# points only): the neutral point (1), the point of order 2 (-1), those of order 4 (0) and of order 8
# (+-Y8). tests/unit/signing/test_weak_keys.py derives them again from the curve's arithmetic.
_Y8 = 0x5FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y8, _P - _Y8})


def check_ed25519_point(raw: bytes, keyid: str = "") -> None:
    """Refuse an Ed25519 public key that is a point of small order (8 times it is the neutral point),
    or one whose y coordinate is not reduced (a second encoding of a point): OpenSSL accepts the
    signature ``R`` = neutral, ``S`` = 0 of any message under a small-order key, so trusting one would
    make every envelope verify. libsodium refuses them alike."""
    where = f"Ed25519 public key {keyid[:16]}".rstrip()
    if len(raw) != 32:
        raise InputError(f"{where} is not 32 bytes")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise InputError(f"{where} is not canonically encoded (y is not reduced)")
    if y in _SMALL_ORDER_Y:
        raise InputError(
            f"{where} is a weak key (a point of small order): any signature would verify under it; "
            "trust a key made by `graven keys generate` or OpenSSL"
        )


class VerifyingKey(Frozen):
    """A public key that graven can verify signatures with.

    It is its SubjectPublicKeyInfo DER (``spki``), whose sha256 is the key id. The ``cryptography`` key
    object (:attr:`key`) is made on first use; a key parsed from a canonical PEM needs none until a
    signature is really checked.
    """

    __slots__ = ("_loaded", "key_type", "keyid", "spki")
    _fields = ("spki", "keyid", "key_type")  # _loaded: a cache, neither compared nor shown
    spki: bytes
    keyid: str
    key_type: KeyType
    _loaded: list[PublicKey]

    def __init__(self, spki: bytes, keyid: str, key_type: KeyType) -> None:
        if key_type == "ed25519" and spki.startswith(ED25519_SPKI_PREFIX):
            check_ed25519_point(spki[len(ED25519_SPKI_PREFIX) :], keyid)
        _set(self, "spki", spki)
        _set(self, "keyid", keyid)
        _set(self, "key_type", key_type)
        _set(self, "_loaded", [])

    @classmethod
    def from_public_key(cls, public_key: PublicKey, source: str = "public key") -> VerifyingKey:
        """Wrap a ``cryptography`` public key, computing its key id."""
        der = _spki_der(public_key)
        made = cls(der, hashlib.sha256(der).hexdigest(), _key_type_of(public_key, source))
        made._loaded.append(public_key)
        return made

    @classmethod
    def from_canonical_der(cls, der: bytes) -> VerifyingKey | None:
        """The key of a SubjectPublicKeyInfo DER in the canonical layout of its type (without
        ``cryptography``), else None."""
        key_type = canonical_key_type(der)
        if key_type is None:
            return None
        return cls(der, hashlib.sha256(der).hexdigest(), key_type)

    @property
    def key(self) -> PublicKey:
        """The ``cryptography`` public key (loaded on first use)."""
        if not self._loaded:
            self._loaded.append(self._load())
        return self._loaded[0]

    def _load(self) -> PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if self.key_type == "ed25519" and canonical_key_type(self.spki) == "ed25519":
            # the one layout of an Ed25519 key: its raw 32 bytes follow the fixed prefix (the
            # serialization module, ~6 ms to import, is not needed for it)
            return Ed25519PublicKey.from_public_bytes(self.spki[len(ED25519_SPKI_PREFIX) :])
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            loaded = serialization.load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as exc:  # pragma: no cover - checked when parsed
            raise InputError(f"public key {self.keyid[:16]} is not a valid public key ({exc})") from None
        if not isinstance(loaded, Ed25519PublicKey | ec.EllipticCurvePublicKey):  # pragma: no cover
            raise InputError(f"public key {self.keyid[:16]} is not an Ed25519 or ECDSA key")
        return loaded

    def pem(self) -> bytes:
        """The SubjectPublicKeyInfo PEM encoding."""
        return _pem_of_der(self.spki)

    def der(self) -> bytes:
        """The SubjectPublicKeyInfo DER encoding (what the key id hashes)."""
        return self.spki

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``data`` by this key.

        Ed25519 verifies ``data`` itself; ECDSA P-256 verifies a DER signature over SHA-256(data).
        """
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = self.key
        try:
            if isinstance(key, Ed25519PublicKey):
                key.verify(signature, data)
            else:
                from cryptography.hazmat.primitives import hashes
                from cryptography.hazmat.primitives.asymmetric import ec

                key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class SigningKey(Frozen):
    """A private key together with its public half."""

    __slots__ = ("private", "public")
    _fields = ("private", "public")
    private: PrivateKey
    public: VerifyingKey

    def __init__(self, private: PrivateKey, public: VerifyingKey) -> None:
        _set(self, "private", private)
        _set(self, "public", public)

    @classmethod
    def from_private_key(cls, private_key: PrivateKey, source: str = "private key") -> SigningKey:
        """Wrap a ``cryptography`` private key."""
        _key_type_of(private_key, source)
        return cls(private_key, VerifyingKey.from_public_key(private_key.public_key(), source))

    @property
    def keyid(self) -> str:
        """The key id of the public half."""
        return self.public.keyid

    @property
    def key_type(self) -> KeyType:
        """``ed25519`` or ``ecdsa-p256``."""
        return self.public.key_type

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``: Ed25519 signs it directly, ECDSA P-256 signs SHA-256(data) (DER)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if isinstance(self.private, Ed25519PrivateKey):
            return self.private.sign(data)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec  # only for ECDSA (start-up)

        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))

    def private_pem(self) -> bytes:
        """The unencrypted PKCS#8 PEM encoding of the private key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if isinstance(self.private, Ed25519PrivateKey):  # its one layout: the seed after a fixed prefix
            return _pem_of_der(ED25519_PKCS8_PREFIX + self.private.private_bytes_raw(), b"PRIVATE KEY")
        from cryptography.hazmat.primitives import serialization

        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """The SubjectPublicKeyInfo PEM encoding of the public key."""
        return self.public.pem()


def generate_key(key_type: KeyType | str = DEFAULT_KEY_TYPE) -> SigningKey:
    """Generate a new key pair of ``key_type`` (Ed25519 by default)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    kind = parse_key_type(key_type)
    private: PrivateKey
    if kind == "ed25519":
        private = Ed25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey.from_private_key(private)


def parse_public_key(pem: bytes, source: str = "public key") -> VerifyingKey:
    """Parse a SubjectPublicKeyInfo PEM public key; ``source`` names it in error messages.

    A canonical PEM of an Ed25519 or P-256 key is read without ``cryptography`` (same key, same key
    id); anything else goes to ``cryptography``, which accepts or refuses it.
    """
    if b"PRIVATE KEY" in pem:
        raise InputError(f"{source} is a private key; give the public key (NAME.pub) instead")
    blocks = pem.count(b"-----BEGIN ")
    if blocks > 1:  # cryptography would read the first and drop the others without a word
        raise InputError(f"{source} holds {blocks} PEM blocks; give one public key per file")
    der = _canonical_pem_der(pem)
    if der is not None:
        fast = VerifyingKey.from_canonical_der(der)
        if fast is not None:
            return fast
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):  # cryptography's own words name neither file nor fix
        raise InputError(
            f"{source}: not a PEM public key (-----BEGIN PUBLIC KEY-----, Ed25519 or ECDSA P-256); "
            "export one with `graven keys export NAME`"
        ) from None
    if not isinstance(loaded, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InputError(
            f"{source}: unsupported key type {type(loaded).__name__} (graven verifies Ed25519 and"
            " ECDSA P-256 keys)"
        )
    return VerifyingKey.from_public_key(loaded, source)


def _ed25519_seed(pem: bytes) -> bytes | None:
    """The 32-byte seed of an Ed25519 private key PEM in the canonical PKCS#8 form graven and OpenSSL
    write (one block, canonical base64, the 48-byte DER ``ED25519_PKCS8_PREFIX || seed``), else None."""
    der = _canonical_der(_CANONICAL_PRIVATE_PEM, pem)
    if der is None or len(der) != 48 or not der.startswith(ED25519_PKCS8_PREFIX):
        return None
    return der[len(ED25519_PKCS8_PREFIX) :]


def parse_private_key(pem: bytes, source: str = "private key") -> SigningKey:
    """Parse an unencrypted PEM private key; ``source`` names it in error messages. A canonical
    Ed25519 key (graven's default: its own keys, the audit log's) is read without cryptography's
    serialization module (~5 ms of every build and deploy)."""
    seed = _ed25519_seed(pem)
    if seed is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return SigningKey.from_private_key(Ed25519PrivateKey.from_private_bytes(seed), source)
    from cryptography.exceptions import InternalError, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise InputError(f"{source} is encrypted; graven needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm, InternalError):  # InternalError: a malformed key
        # cryptography's own words name neither the file nor the fix (and the key is never quoted)
        raise InputError(
            f"{source}: not a PEM private key (-----BEGIN PRIVATE KEY-----, unencrypted Ed25519 or "
            "ECDSA P-256); make one with `graven keys generate`"
        ) from None
    if not isinstance(loaded, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise InputError(
            f"{source}: unsupported key type {type(loaded).__name__} (graven signs with Ed25519 or"
            " ECDSA P-256)"
        )
    return SigningKey.from_private_key(loaded, source)


def _read_limited(fd: int, path: Path) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > _MAX_KEY_FILE:
            raise InputError(f"{path} is too large to be a key file")
        chunks.append(chunk)


def load_private_key(path: Path | str, *, named_by: str | None = None) -> SigningKey:
    """Load a private key file, refusing one that a group or other user can read or write;
    ``named_by`` (``GRAVEN_SIGNING_KEY``) says where its path came from when it is not refused."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO put there is refused below, never waited on (a regular file reads alike)
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFoundError(f"private key {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"private key {path} is a directory, not a key file") from None
    except PermissionError:
        raise InputError(f"private key {path} is not readable: permission denied") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"private key {path} is not a regular file")
        data = _read_limited(fd, path)
        if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:  # not a secret: said first
            raise InputError(
                f"{named_by + ' file ' if named_by else ''}{path} is a public key, which cannot sign: "
                "name the private key file (GRAVEN_HOME/keys/NAME.key) or the key's name"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            what = "readable" if mode & 0o044 else "writable"
            raise InputError(
                f"private key {path} is {what} by others (mode {mode:04o}); run chmod 600 {path}"
            )
    finally:
        os.close(fd)
    return parse_private_key(data, f"{named_by} file {path}" if named_by else f"private key {path}")


def read_public_key_file(path: Path | str) -> bytes:
    """The bytes of a public key file, read up to the limit and refused past it (``/dev/zero``, a pipe
    or a huge file given by mistake is never read whole)."""
    path = Path(path)
    if "\x00" in str(path):  # a policy file's "\u0000": open() would raise ValueError
        raise InputError(f"public key path {str(path)!r} holds a NUL character; remove it")
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise NotFoundError(f"public key {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"public key {path} is a directory, not a key file") from None
    except PermissionError:
        raise InputError(f"public key {path} is not readable: permission denied") from None
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"{path} is too large to be a key file")
    return data


def load_public_key(path: Path | str) -> VerifyingKey:
    """Load a SubjectPublicKeyInfo PEM public key file."""
    return parse_public_key(read_public_key_file(path), f"public key {path}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` atomically, never replacing an existing file.

    The bytes go to a file without a name (:func:`_write_unnamed`), or where the file system makes none
    to a temporary file created with ``O_CREAT | O_EXCL``, made with ``mode`` (so the file is never more
    open than ``mode``) and fsynced; the file is then hard-linked to ``path``, which fails if ``path``
    exists. A reader sees either no file or the complete file.
    """
    directory = path.parent
    if _write_unnamed(path, data, mode):
        _fsync_dir(directory)
        return
    temp = directory / f".{path.name}.tmp-{os.urandom(8).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(temp, flags, mode)
    except FileNotFoundError:
        raise NotFoundError(f"directory {directory} does not exist") from None
    except PermissionError:
        raise InputError(f"cannot write to {directory}: permission denied") from None
    except OSError as exc:
        raise BackendError(f"cannot create {temp}: {exc.strerror}") from None
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            raise InputError(f"{path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise BackendError(f"cannot create {path}: {exc.strerror}") from None
            # No hard links on this file system: fall back to a rename after an existence check.
            if os.path.lexists(path):
                raise InputError(f"{path} already exists; refusing to overwrite it") from None
            temp.rename(path)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _fsync_dir(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def _write_unnamed(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to a file without a name (``O_TMPFILE``), then give it ``path``: a process killed
    before that leaves nothing behind (a named temporary file would stay, a private key in it). False
    where the file system makes no such file, or cannot name it (the caller writes a named one)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return False
    try:
        fd = os.open(path.parent, flag | os.O_WRONLY | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise NotFoundError(f"directory {path.parent} does not exist") from None
    except PermissionError:
        raise InputError(f"cannot write to {path.parent}: permission denied") from None
    except OSError:  # EOPNOTSUPP, EISDIR (no O_TMPFILE here), ...: a named temporary file then
        return False
    try:
        try:
            _write_all(fd, data)
        except OSError as exc:
            raise BackendError(f"cannot write {path}: {exc.strerror}") from None
        try:
            os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
        except FileExistsError:
            raise InputError(f"{path} already exists; refusing to overwrite it") from None
        except OSError:  # no /proc, or a file system that links no such file: a named one then
            return False
    finally:
        os.close(fd)
    return True


def write_private_key(path: Path | str, key: SigningKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM to a new file with mode 0600.

    The file is created with ``O_CREAT | O_EXCL`` and mode 0600 and is never more open than that;
    an existing file is never overwritten.
    """
    _write_new_file(Path(path), key.private_pem(), 0o600)


def write_public_key(path: Path | str, key: SigningKey | VerifyingKey) -> None:
    """Write the public half of ``key`` as SubjectPublicKeyInfo PEM to a new file (mode 0644)."""
    public = key.public if isinstance(key, SigningKey) else key
    _write_new_file(Path(path), public.pem(), 0o644)


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid key name (``[A-Za-z0-9._-]{1,64}``), else InputError."""
    if not _KEY_NAME.fullmatch(name) or name in {".", ".."}:
        raise InputError(f"invalid key name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return name


_RAW_KEY_HEX = re.compile(r"(?:[0-9A-Fa-f]{64}){1,2}")
_RAW_KEY_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{43,88}={0,2}")


def _may_be_raw_key(text: str) -> bool:
    """Whether ``text`` may be a raw private key: 32 or 64 bytes (an Ed25519 seed, libsodium's seed and
    public key, a P-256 scalar) in hex or base64. A value that names no file and no key is then not
    echoed in an error (a key id is 64 hex digits too: it is not shown either)."""
    if _RAW_KEY_HEX.fullmatch(text):
        return True
    if not _RAW_KEY_BASE64.fullmatch(text):
        return False
    compact = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(
            compact.replace("+", "-").replace("/", "_") + "=" * (-len(compact) % 4)
        )
    except (binascii.Error, ValueError):
        return False
    return len(raw) in {32, 64}


def _is_key_base64(text: str) -> bool:
    """Whether ``text`` is the base64 of a DER structure of key size (a PEM block's lines without
    them): a secret to refuse unquoted, never a file or key name to echo in an error."""
    compact = "".join(text.split())
    if len(compact) < 43 or not compact.isascii():  # 32 bytes at least: a seed's worth
        return False
    try:
        der = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    if b"-----BEGIN" in der:  # a whole PEM file's base64 (`base64 -w0 key.pem`, a CI secret)
        return True
    # one whole DER SEQUENCE (PKCS#8, SEC 1, PKCS#1), its length as its header says: no name is that
    if len(der) < 2 or der[0] != 0x30:
        return False
    size = der[1]
    if size < 0x80:
        return len(der) == 2 + size
    count = size - 0x80
    return 1 <= count <= 2 and len(der) == 2 + count + int.from_bytes(der[2 : 2 + count], "big")


class KeyEntry(NamedTuple):
    """One key of a :class:`KeyStore`."""

    name: str
    keyid: str
    key_type: KeyType


class KeyStore:
    """A directory of named signing keys: ``NAME.key`` (private, 0600) and ``NAME.pub`` (public)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def private_path(self, name: str) -> Path:
        """The private key file of ``name``."""
        return self.directory / f"{check_key_name(name)}.key"

    def public_path(self, name: str) -> Path:
        """The public key file of ``name``."""
        return self.directory / f"{check_key_name(name)}.pub"

    def generate(
        self,
        name: str,
        key_type: KeyType | str = DEFAULT_KEY_TYPE,
        *,
        before_write: Callable[[KeyEntry], None] | None = None,
    ) -> KeyEntry:
        """Generate and store a new key pair called ``name``; refuse to replace an existing one.

        ``before_write`` is called with the new key's entry before any file is written (the CLI logs
        the trust of the key there): when it raises, no key file is left behind."""
        kind = parse_key_type(key_type)
        private_path, public_path = self.private_path(name), self.public_path(name)
        if not name[0].isalnum():  # '-x' reads as an option (`keys export -x`), '.x' as a hidden file
            raise InputError(f"invalid name {name!r} for a new key: start it with a letter or digit")
        self._check_free(name, private_path, public_path)
        try:
            make_home_dir(self.directory)
        except OSError as exc:
            raise BackendError(f"cannot create {self.directory}: {exc.strerror}") from None
        key = generate_key(kind)
        entry = KeyEntry(name, key.keyid, key.key_type)
        if before_write is not None:
            before_write(entry)
            self._check_free(name, private_path, public_path)  # made meanwhile by another process
        write_private_key(private_path, key)
        write_public_key(public_path, key)
        return entry

    def _check_free(self, name: str, private_path: Path, public_path: Path) -> None:
        if os.path.lexists(private_path) or os.path.lexists(public_path):
            raise InputError(
                f"key {name} already exists in {self.directory}; choose another --name (to trust it: "
                f"graven keys export {name} > {name}.pub && graven keys trust {name}.pub)"
            )

    def private_names(self) -> list[str]:
        """The names of the private keys of the directory, sorted, read from the file names only (a
        damaged unrelated key file does not stop the choice of a good one)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path.stem
            for path in self.directory.iterdir()
            if path.suffix == ".key" and _KEY_NAME.fullmatch(path.stem) and path.stem not in {".", ".."}
        )

    def list(self, skipped: Callable[[str, GravenError], None] | None = None) -> list[KeyEntry]:
        """All keys of the directory, sorted by name (read from ``NAME.pub``, else ``NAME.key``). A key
        that cannot be read (an RSA or encrypted key dropped there, a damaged file) is passed to
        ``skipped`` with why, and the others are listed; without ``skipped`` it raises."""
        if not self.directory.is_dir():
            return []
        names = {
            path.stem
            for path in self.directory.iterdir()
            if path.suffix in {".key", ".pub"} and _KEY_NAME.fullmatch(path.stem)
        }
        entries: list[KeyEntry] = []
        for name in sorted(names):
            try:
                if (self.directory / f"{name}.pub").is_file():
                    public = self.load_public(name)  # refused when NAME.key is another key
                else:
                    public = load_private_key(self.directory / f"{name}.key").public
            except GravenError as exc:
                if skipped is None:
                    raise
                skipped(name, exc)
                continue
            entries.append(KeyEntry(name, public.keyid, public.key_type))
        return entries

    def load(self, name: str) -> SigningKey:
        """The private key called ``name``."""
        path = self.private_path(name)
        if not path.exists():
            raise NotFoundError(f"no signing key named {name} in {self.directory}")
        return load_private_key(path)

    def load_public(self, name: str) -> VerifyingKey:
        """The public key called ``name`` (from ``NAME.pub``, else derived from ``NAME.key``)."""
        public_path = self.public_path(name)
        if public_path.exists():
            public = load_public_key(public_path)
            self.check_pair(name, public)
            return public
        if self.private_path(name).exists():
            return self.load(name).public
        raise NotFoundError(f"no key named {name} in {self.directory}")

    def check_pair(self, name: str, public: VerifyingKey, private: SigningKey | None = None) -> None:
        """Refuse ``public`` (read from ``NAME.pub``) when it is not the public half of ``NAME.key``
        (``private``, read here when not given): a key file replaced (a restore, a key copied over)
        beside the old ``NAME.pub``, which would be listed and exported for a key that signs nothing.
        A ``NAME.key`` that is missing or cannot be read (signing refuses it too) is not compared."""
        if private is None:
            try:
                private = self.load(name)
            except (GravenError, OSError):
                return
        if private.keyid != public.keyid:
            raise InputError(
                f"key {name}: {name}.pub ({public.keyid[:16]}) is not the public half of {name}.key "
                f"({private.keyid[:16]}), the key that signs; move the stale {name}.pub out of "
                f"{self.directory} (`graven keys export {name}` then derives the public key from {name}.key)"
            )

    def export_public(self, name: str) -> bytes:
        """The SubjectPublicKeyInfo PEM of the key called ``name``."""
        return self.load_public(name).pem()

    def resolve(self, name_or_path: str) -> SigningKey:
        """The key for ``GRAVEN_SIGNING_KEY``: an existing file path, else a key name here."""
        value = name_or_path.strip()
        if not value:
            raise InputError("no signing key given (empty key name)")
        if "-----BEGIN" in value or "\n" in value or len(value) > 4096 or _is_key_base64(value):
            # never echoed: it may be the key (a PEM block, or its base64 lines alone)
            raise InputError(
                "GRAVEN_SIGNING_KEY holds key text (a PEM block or its base64), not a key file or a key "
                "name: write the key to a file only you can read (chmod 600) and set GRAVEN_SIGNING_KEY "
                "to its path"
            )
        candidate = Path(value).expanduser()
        try:
            if candidate.is_file():
                return load_private_key(candidate, named_by="GRAVEN_SIGNING_KEY")
        except OSError as exc:  # a name too long for a path (a key's text, say): never echoed
            raise InputError(
                f"GRAVEN_SIGNING_KEY names no file that can be read ({exc.strerror}); set it to a private "
                "key file's path or to the name of a key in GRAVEN_HOME/keys"
            ) from None
        named = _KEY_NAME.fullmatch(value) is not None and value not in {".", ".."}
        if named and self.private_path(value).exists():
            return load_private_key(self.private_path(value))
        if _may_be_raw_key(value):  # 32 or 64 bytes in hex or base64: a seed is not echoed
            raise NotFoundError(
                "GRAVEN_SIGNING_KEY names no key file and no key of this home, and looks like a raw key "
                "(32 or 64 bytes in hex or base64, or a key id, which names no key; its value is not "
                "shown): write the key as a PEM file only you can read (chmod 600) and set "
                "GRAVEN_SIGNING_KEY to its path"
            )
        if named:
            raise NotFoundError(
                f"no signing key {value!r}: not a file, and no key {value}.key in {self.directory}"
            )
        if candidate.is_dir():
            raise InputError(
                f"signing key {value} is a directory; GRAVEN_SIGNING_KEY names a key file or a key name"
            )
        if os.path.lexists(candidate):  # a FIFO or a device (never opened: a FIFO blocks), a dangling link
            raise InputError(
                f"signing key {value} is not a regular file; GRAVEN_SIGNING_KEY names a key file"
            )
        raise NotFoundError(f"signing key file {value} does not exist")
