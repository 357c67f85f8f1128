"""Signing keys and the keys a home trusts: ``graven keys generate / trust / revoke`` as a library.

Every change of trust is in the audit log. A key trusted is logged *before* it takes effect: a trust
that takes effect is never missing from the log, and a log that refuses the entry leaves no key behind
(a failure between the two leaves an entry and no effect; running the command again completes it). A
key revoked is the other way round: the revocation is on disk first, then logged, so that a crash or a
log that refuses the entry never leaves a revoked key accepted, nor stops an operator revoking a
stolen key (the entry is then missing; revoking again writes it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from graven.core.record import Frozen
from graven.errors import ConfigError, GravenError, InputError
from graven.home import Home

__all__ = ["GeneratedKey", "KeyChange", "TrustedKey", "generate_key", "revoke_key", "trust_public_key"]

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)
_KEYID = re.compile(r"[0-9a-f]{64}")


class GeneratedKey(Frozen):
    """A new signing key: its name, id, type, private key file, and where it is trusted (or None)."""

    __slots__ = ("key_type", "keyid", "name", "private_key", "trusted")
    _fields = ("name", "keyid", "key_type", "private_key", "trusted")
    name: str
    keyid: str
    key_type: str
    private_key: Path
    trusted: Path | None

    def __init__(self, name: str, keyid: str, key_type: str, private_key: Path, trusted: Path | None) -> None:
        _set(self, "name", name)
        _set(self, "keyid", keyid)
        _set(self, "key_type", key_type)
        _set(self, "private_key", private_key)
        _set(self, "trusted", trusted)


class TrustedKey(Frozen):
    """A key now trusted: its id, its file in ``trust/``, whether this call added it, and where it is
    revoked all the same (``revoked_in``: ``trust/revoked`` or the home's policy.toml; None when it is
    not: revocation wins everywhere)."""

    __slots__ = ("changed", "keyid", "path", "revoked_in")
    _fields = ("keyid", "path", "changed", "revoked_in")
    keyid: str
    path: Path
    changed: bool
    revoked_in: Path | None

    def __init__(self, keyid: str, path: Path, changed: bool, revoked_in: Path | None) -> None:
        _set(self, "keyid", keyid)
        _set(self, "path", path)
        _set(self, "changed", changed)
        _set(self, "revoked_in", revoked_in)

    @property
    def revoked(self) -> bool:
        """Whether the key is revoked (it stays refused everywhere)."""
        return self.revoked_in is not None


class KeyChange(Frozen):
    """A revocation: the key id, the file that holds it, whether this call added it."""

    __slots__ = ("changed", "keyid", "path")
    _fields = ("keyid", "path", "changed")
    keyid: str
    path: Path
    changed: bool

    def __init__(self, keyid: str, path: Path, changed: bool) -> None:
        _set(self, "keyid", keyid)
        _set(self, "path", path)
        _set(self, "changed", changed)


def generate_key(home: Home, name: str, key_type: str = "ed25519", *, trust: bool = True) -> GeneratedKey:
    """Make a signing key pair under ``home``'s ``keys/`` (private key 0600) and, with ``trust``,
    trust its public key (logged first, as every trust change)."""
    from graven.signing.keys import KeyEntry, KeyStore
    from graven.signing.trust import make_trust_dir, store_trusted_key

    keys = KeyStore(home.keys)
    if trust:
        make_trust_dir(home.trust)  # refused before a key is made or anything logged

    def log_trust(entry: KeyEntry) -> None:
        _log(home, "key-trusted", f"key {entry.keyid} ({entry.key_type}, generated as {name})")

    entry = keys.generate(name, key_type, before_write=log_trust if trust else None)
    trusted = store_trusted_key(home.trust, keys.export_public(name)) if trust else None
    return GeneratedKey(entry.name, entry.keyid, entry.key_type, keys.private_path(name), trusted)


def trust_public_key(home: Home, pem: bytes, source: str, *, given: str | None = None) -> TrustedKey:
    """Trust the public key ``pem`` (read from ``source``, named in the log entry) for verifying
    provenance; trusting it again changes nothing and logs nothing. ``given``, the file as the user
    named it, is what an error names (a file that holds no public key)."""
    from graven.service.provenance import revoked_in
    from graven.signing.trust import (
        TrustPolicy,
        make_trust_dir,
        store_trusted_key,
        trust_key,
        trusted_key_path,
    )

    # not a usable public key: InputError (naming the file), before anything is written
    keyid, _ = trust_key(pem, given or "the key to trust")
    # the home's policy.toml as every check reads it: one that cannot be read is refused (exit 2, naming
    # it) before anything is written, as verify and deploy would refuse everything
    policy = TrustPolicy.load(None, home.policy) if os.path.lexists(home.policy) else None
    make_trust_dir(home.trust)  # refused before anything is logged
    path, already = trusted_key_path(home.trust, pem)
    if not already:
        _log(home, "key-trusted", f"key {keyid} from {source}")
        path = store_trusted_key(home.trust, pem)
    return TrustedKey(keyid, path, not already, revoked_in(home, keyid, policy))


def revoke_key(home: Home, keyid: str) -> KeyChange:
    """Never accept ``keyid`` again (64 hex digits, ``sha256:`` allowed), even where it is trusted:
    a line in ``trust/revoked``, read back the way verify and deploy read it."""
    from graven.service.provenance import read_revoked
    from graven.signing.trust import make_trust_dir

    value = keyid.strip().lower().removeprefix("sha256:")
    if not _KEYID.fullmatch(value):
        raise InputError(f"{keyid!r} is not a key id (64 hex digits; see `graven keys list`)")
    make_trust_dir(home.trust)
    path = home.trust / "revoked"
    changed = value not in read_revoked(path)
    if changed:
        # the line first, then its log entry: a crash (or a database that refuses the entry) between
        # the two leaves the key revoked and unlogged, never logged as revoked and still accepted; and
        # an operator revoking a stolen key is never stopped by the log
        new = not os.path.lexists(path)
        # at most 0644, never writable by others whatever the umask: it would be refused right after
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                last = handle.read(1)
                handle.seek(0, os.SEEK_END)
                if last != b"\n":  # a last line without its newline (a comment, say) must not take the id
                    handle.write(b"\n")
            handle.write(value.encode() + b"\n")
            # on disk before its log entry is written
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            _fsync_dir(home.trust)
        if value not in read_revoked(path):
            raise ConfigError(
                f"{path}: key {value} was written but does not read back as revoked; fix the file"
            )
        try:
            _log(home, "key-revoked", f"key {value}")
        except GravenError as exc:
            raise type(exc)(
                f"key {value} is revoked ({path}), but its audit log entry could not be written: {exc}"
            ) from None
    return KeyChange(value, path, changed)


def _fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _log(home: Home, event: str, reason: str) -> None:
    """Record a trust change in the audit log (a transaction of its own)."""
    from graven.model.logentry import LogEvent
    from graven.service.context import Context

    with Context(home=home) as ctx:
        ctx.audit.record(LogEvent(event, reason=reason))
