"""Signing keys: Ed25519 (the default) and ECDSA P-256.

A key id is the lowercase hex sha256 of the public key's SubjectPublicKeyInfo DER encoding, so
the same public key always has the same id, whatever file or name it comes from.

Private keys are written as unencrypted PKCS#8 PEM with mode 0600 from the moment the file exists,
and are only loaded from files that no group or other user can read or write. Public keys are
SubjectPublicKeyInfo PEM.

:class:`KeyStore` manages a directory of named keys (``NAME.key`` + ``NAME.pub``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from graven.errors import BackendError, InputError, NotFoundError

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
    "check_key_name",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_key_type",
    "parse_private_key",
    "parse_public_key",
    "write_private_key",
    "write_public_key",
]

KeyType: TypeAlias = Literal["ed25519", "ecdsa-p256"]
KEY_TYPES: Final[tuple[KeyType, ...]] = ("ed25519", "ecdsa-p256")
DEFAULT_KEY_TYPE: Final[KeyType] = "ed25519"

PrivateKey: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey

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


def parse_key_type(text: str) -> KeyType:
    """Parse a key type as typed by a user (``ed25519``, ``ecdsa-p256``, ``ecdsa``, ``p256``)."""
    found = _KEY_TYPE_ALIASES.get(text.strip().lower())
    if found is None:
        raise InputError(f"unknown key type {text!r} (expected one of: {', '.join(KEY_TYPES)})")
    return found


def _key_type_of(key: PublicKey | PrivateKey, source: str) -> KeyType:
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise InputError(
        f"{source}: unsupported elliptic curve {key.curve.name} (graven signs with Ed25519 or ECDSA P-256)"
    )


def _spki_der(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key: PublicKey) -> str:
    """The key id of ``public_key``: hex sha256 of its SubjectPublicKeyInfo DER encoding."""
    return hashlib.sha256(_spki_der(public_key)).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A public key that graven can verify signatures with."""

    key: PublicKey
    keyid: str
    key_type: KeyType

    @classmethod
    def from_public_key(cls, public_key: PublicKey, source: str = "public key") -> VerifyingKey:
        """Wrap a ``cryptography`` public key, computing its key id."""
        return cls(public_key, key_id(public_key), _key_type_of(public_key, source))

    def pem(self) -> bytes:
        """The SubjectPublicKeyInfo PEM encoding."""
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def der(self) -> bytes:
        """The SubjectPublicKeyInfo DER encoding (what the key id hashes)."""
        return _spki_der(self.key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``data`` by this key.

        Ed25519 verifies ``data`` itself; ECDSA P-256 verifies a DER signature over SHA-256(data).
        """
        try:
            if isinstance(self.key, Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key together with its public half."""

    private: PrivateKey
    public: VerifyingKey

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
        if isinstance(self.private, Ed25519PrivateKey):
            return self.private.sign(data)
        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))

    def private_pem(self) -> bytes:
        """The unencrypted PKCS#8 PEM encoding of the private key."""
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
    kind = parse_key_type(key_type)
    private: PrivateKey
    if kind == "ed25519":
        private = Ed25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey.from_private_key(private)


def parse_public_key(pem: bytes, source: str = "public key") -> VerifyingKey:
    """Parse a SubjectPublicKeyInfo PEM public key; ``source`` names it in error messages."""
    if b"PRIVATE KEY" in pem:
        raise InputError(f"{source} is a private key; give the public key (NAME.pub) instead")
    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{source} is not a PEM public key ({exc})") from None
    if not isinstance(loaded, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InputError(
            f"{source}: unsupported key type {type(loaded).__name__} (graven verifies Ed25519 and"
            " ECDSA P-256 keys)"
        )
    return VerifyingKey.from_public_key(loaded, source)


def parse_private_key(pem: bytes, source: str = "private key") -> SigningKey:
    """Parse an unencrypted PEM private key; ``source`` names it in error messages."""
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise InputError(f"{source} is encrypted; graven needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{source} is not a PEM private key ({exc})") from None
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


def load_private_key(path: Path | str) -> SigningKey:
    """Load a private key file, refusing one that a group or other user can read or write."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
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
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            what = "readable" if mode & 0o044 else "writable"
            raise InputError(
                f"private key {path} is {what} by others (mode {mode:04o}); run chmod 600 {path}"
            )
        data = _read_limited(fd, path)
    finally:
        os.close(fd)
    return parse_private_key(data, f"private key {path}")


def load_public_key(path: Path | str) -> VerifyingKey:
    """Load a SubjectPublicKeyInfo PEM public key file."""
    path = Path(path)
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
    return parse_public_key(data, f"public key {path}")


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

    The bytes go to a temporary file created with ``O_CREAT | O_EXCL`` and ``mode`` (so the file is
    never more open than ``mode``), are fsynced, and the file is then hard-linked to ``path``, which
    fails if ``path`` exists. A reader sees either no file or the complete file.
    """
    directory = path.parent
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
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
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

    def generate(self, name: str, key_type: KeyType | str = DEFAULT_KEY_TYPE) -> KeyEntry:
        """Generate and store a new key pair called ``name``; refuse to replace an existing one."""
        kind = parse_key_type(key_type)
        private_path, public_path = self.private_path(name), self.public_path(name)
        if os.path.lexists(private_path) or os.path.lexists(public_path):
            raise InputError(f"key {name} already exists in {self.directory}")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create {self.directory}: {exc.strerror}") from None
        key = generate_key(kind)
        write_private_key(private_path, key)
        write_public_key(public_path, key)
        return KeyEntry(name, key.keyid, key.key_type)

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

    def list(self) -> list[KeyEntry]:
        """All keys of the directory, sorted by name (read from ``NAME.pub``, else ``NAME.key``)."""
        if not self.directory.is_dir():
            return []
        names = {
            path.stem
            for path in self.directory.iterdir()
            if path.suffix in {".key", ".pub"} and _KEY_NAME.fullmatch(path.stem)
        }
        entries: list[KeyEntry] = []
        for name in sorted(names):
            if (self.directory / f"{name}.pub").is_file():
                public = load_public_key(self.directory / f"{name}.pub")
            else:
                public = load_private_key(self.directory / f"{name}.key").public
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
            return load_public_key(public_path)
        if self.private_path(name).exists():
            return self.load(name).public
        raise NotFoundError(f"no key named {name} in {self.directory}")

    def export_public(self, name: str) -> bytes:
        """The SubjectPublicKeyInfo PEM of the key called ``name``."""
        return self.load_public(name).pem()

    def resolve(self, name_or_path: str) -> SigningKey:
        """The key for ``GRAVEN_SIGNING_KEY``: an existing file path, else a key name here."""
        value = name_or_path.strip()
        if not value:
            raise InputError("no signing key given (empty key name)")
        candidate = Path(value).expanduser()
        if candidate.is_file():
            return load_private_key(candidate)
        if _KEY_NAME.fullmatch(value) and value not in {".", ".."}:
            if self.private_path(value).exists():
                return load_private_key(self.private_path(value))
            raise NotFoundError(
                f"no signing key {value!r}: not a file, and no key {value}.key in {self.directory}"
            )
        raise NotFoundError(f"signing key file {value} does not exist")
