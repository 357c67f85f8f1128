"""The operator's trust policy: which public keys may sign provenance, and for which environment.

Trust never comes from the artifact. It comes from:

* a directory of trusted public keys (``GRAVEN_HOME/trust/*.pub`` or ``*.pem``), and
* optionally a policy TOML file (``GRAVEN_HOME/policy.toml``, or ``--policy FILE`` instead of it)::

      keys = ["keys/ci.pub"]            # more trusted keys (paths relative to the policy file; a
                                        # key id names one of them or of the trust directory)
      revoked = ["<keyid>", ...]        # key ids that are never accepted, wherever they appear

      [env.prod]                        # optional: the only keys trusted for environment "prod"
      keys = ["keys/release.pub", "<keyid of a key above or in the trust directory>"]

An environment without its own section trusts the default keys (the directory plus ``keys``).

A policy may carry a :class:`~graven.signing.dsse.SignatureMemo` (``memo``): then the cryptographic check
of a signature this machine already verified with the same key is looked up instead of repeated.
Nothing the policy decides is remembered: trust, revocation, environments, the payload type and the
statement are checked on every call. The explicit verification commands use a policy without one.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from graven.core.names import ENV_NAME_PATTERN
from graven.core.record import Frozen
from graven.core.tomltext import TomlError
from graven.core.tomltext import loads as toml_loads
from graven.errors import (
    ConfigError,
    InputError,
    NotFoundError,
    PolicyError,
    RevokedSignerError,
    VerificationError,
)
from graven.home import make_home_dir, policy_key_id, policy_key_path
from graven.signing.bundle import load_attestation
from graven.signing.dsse import Envelope, SignatureMemo, revoked_signer, verify_envelope
from graven.signing.keys import VerifyingKey, load_public_key, parse_public_key, write_public_key
from graven.signing.provenance import (
    PAYLOAD_TYPE,
    ProvenanceStatement,
    check_subject,
    parse_sha256,
    parse_statement,
)
from graven.strictmodes import first_problem, walk

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "ENV_NAME_PATTERN",
    "TRUSTED_KEY_SUFFIXES",
    "TrustPolicy",
    "VerifiedProvenance",
    "check_trust_material",
    "load_trust_dir",
    "make_trust_dir",
    "read_policy_revoked",
    "store_trusted_key",
    "trust_key",
]

TRUSTED_KEY_SUFFIXES = (".pub", ".pem")
_KEYID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_POLICY_FIELDS = frozenset({"keys", "revoked", "env"})
_ENV_FIELDS = frozenset({"keys"})
_ENV_NAME = re.compile(ENV_NAME_PATTERN)  # the environment names deploy takes


def trust_key(pem_bytes: bytes, source: str = "the key to trust") -> tuple[str, bytes]:
    """Check a public key PEM and return ``(keyid, normalized PEM)`` to store as ``<keyid>.pub``;
    ``source`` (the file it was read from) names it in error messages."""
    key = parse_public_key(pem_bytes, source)
    key.key  # noqa: B018 - a key is trusted only once cryptography loads it too
    return key.keyid, key.pem()


def trusted_key_path(trust_dir: Path | str, pem_bytes: bytes) -> tuple[Path, bool]:
    """Where :func:`store_trusted_key` keeps this public key, and whether it is there already."""
    keyid, _ = trust_key(pem_bytes)
    path = Path(trust_dir) / f"{keyid}.pub"
    return path, _holds(path, keyid)


def _holds(path: Path, keyid: str) -> bool:
    try:
        return path.is_file() and load_public_key(path).keyid == keyid
    except InputError:
        return False


def store_trusted_key(trust_dir: Path | str, pem_bytes: bytes) -> Path:
    """Store a public key as ``trust_dir/<keyid>.pub`` (idempotent, also when another process stores
    the same key at the same time) and return that path."""
    keyid, pem = trust_key(pem_bytes)
    directory = Path(trust_dir)
    path = directory / f"{keyid}.pub"
    make_trust_dir(directory)
    if _holds(path, keyid):
        return path
    try:
        write_public_key(path, parse_public_key(pem))
    except InputError:
        if _holds(path, keyid):  # written by another process meanwhile: the same key, trusted
            return path
        raise
    return path


def check_trust_material(path: Path, trust_dir: Path, *, trusting: str | None = None) -> None:
    """Refuse ``path`` (the trust directory, a trusted key or the revocation file; a ``--policy``
    file and the key files it names; nothing when it does not exist) when another user could change
    it, as sshd's StrictModes refuses an ``authorized_keys`` (:mod:`graven.strictmodes`): a key added
    there would be trusted, a line taken out of ``revoked`` would un-revoke a key. ``trusting`` says
    whose keys the error names (default: this home's, in ``trust_dir``)."""
    # not normalised: the kernel resolves ".." after the link before it, and so does walk()
    absolute = os.fspath(path) if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    if not os.path.exists(absolute):
        return
    walked, reached = walk(absolute)
    end = reached if reached is not None else walked[-1][0]
    found = first_problem(walked, {end}, files=True)
    if found is not None:
        where, problem = found
        fix = (
            f"chmod go-w {where}"
            if "writable" in problem
            else f"run graven as its owner, or chown {where} to yourself or root"
        )
        raise ConfigError(
            f"{where} {problem}: another user could change "
            f"{trusting or f'the keys this home trusts ({trust_dir})'}; fix it ({fix})"
        )


def make_trust_dir(directory: Path) -> None:
    """Make the trust directory (0700, as ``keys/``) if missing, and refuse one another user could
    change (:func:`check_trust_material`)."""
    try:
        make_home_dir(directory)
    except OSError as exc:
        raise ConfigError(f"cannot create the trust directory {directory}: {exc.strerror}") from None
    if not directory.is_dir():  # a dangling link (a config-management directory not made yet), a file
        raise ConfigError(
            f"the trust directory {directory} is not a directory; make it one (or fix the link)"
        )
    check_trust_material(directory, directory)


def load_trust_dir(trust_dir: Path | str) -> tuple[VerifyingKey, ...]:
    """The public keys in ``trust_dir`` (``*.pub`` and ``*.pem``); a missing directory is empty, a
    dangling link to one is refused (its revocations are unknown). The directory and each key are
    refused when another user could change them (:func:`check_trust_material`)."""
    directory = Path(trust_dir)
    if not directory.exists():
        if os.path.lexists(directory):  # its trust/revoked is unknown: never read as nothing revoked
            raise ConfigError(
                f"the trust directory {directory} is a link to nothing: the keys it revokes are unknown; "
                "restore what it points to (or remove the link)"
            )
        return ()
    if not directory.is_dir():
        raise ConfigError(
            f"the trust directory {directory} is not a directory; move what is there away and make it one "
            "(`graven keys trust FILE` makes it)"
        )
    check_trust_material(directory, directory)
    keys: list[VerifyingKey] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in TRUSTED_KEY_SUFFIXES:
            continue
        if not path.is_file():
            continue
        check_trust_material(path, directory)
        try:
            keys.append(load_public_key(path))
        except InputError as exc:
            raise ConfigError(f"trusted key file {path}: {exc}") from None
    return _dedupe(keys)


def _dedupe(keys: Iterable[VerifyingKey]) -> tuple[VerifyingKey, ...]:
    seen: dict[str, VerifyingKey] = {}
    for key in keys:
        seen.setdefault(key.keyid, key)
    return tuple(seen.values())


def _string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{what} must be a list of strings")
    return value


def _key_from_entry(entry: str, policy: Path, known: Mapping[str, VerifyingKey], what: str) -> VerifyingKey:
    keyid = policy_key_id(entry)
    if keyid is not None:
        key = known.get(keyid)
        if key is None:
            raise ConfigError(
                f"{what}: key id {entry} is not one of the trusted keys (trust directory or keys)"
            )
        return key
    if entry.startswith("~") and os.path.expanduser(entry) == entry:  # "~name/" of no such user
        raise ConfigError(f"{what}: {entry} names the home directory of an unknown user")
    path = policy_key_path(policy, entry)
    check_trust_material(path, policy.parent, trusting=f"the keys {policy} trusts")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open() for ever
            raise ConfigError(f"{what}: key file {path} is not a regular file")
    except (OSError, ValueError):  # missing, unreadable, a NUL in it: load_public_key names it
        pass
    try:
        return load_public_key(path)
    except NotFoundError:
        raise ConfigError(f"{what}: key file {path} does not exist") from None
    except InputError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _revoked_ids(doc: Mapping[str, Any], policy_path: Path) -> frozenset[str]:
    """The key ids of a policy's ``revoked`` list (``sha256:`` and upper case allowed)."""
    revoked: set[str] = set()
    for entry in _string_list(doc.get("revoked", []), f"{policy_path}: revoked"):
        match = _KEYID.fullmatch(entry.strip().lower())
        if not match:
            raise ConfigError(f"{policy_path}: revoked entry {entry!r} is not a key id (64 hex digits)")
        revoked.add(match.group(1))
    return frozenset(revoked)


def read_policy_revoked(policy_file: Path) -> frozenset[str]:
    """The key ids a policy file revokes, read as :meth:`TrustPolicy.load` reads it (refused when another
    user could change it): a home's policy.toml revokes them for every command, also one given another
    policy file (``--policy``), as ``trust/revoked`` does."""
    check_trust_material(policy_file, policy_file.parent, trusting=f"the keys {policy_file} trusts")
    return _revoked_ids(_read_policy(policy_file), policy_file)


class VerifiedProvenance(Frozen):
    """A provenance statement signed by a trusted key, about the expected artifact."""

    __slots__ = ("envelope", "key", "payload", "statement")
    _fields = ("statement", "key", "payload", "envelope")
    statement: ProvenanceStatement
    key: VerifyingKey
    payload: bytes
    envelope: Envelope

    def __init__(
        self, statement: ProvenanceStatement, key: VerifyingKey, payload: bytes, envelope: Envelope
    ) -> None:
        _set(self, "statement", statement)
        _set(self, "key", key)
        _set(self, "payload", payload)
        _set(self, "envelope", envelope)

    @property
    def keyid(self) -> str:
        """The id of the key that signed the statement."""
        return self.key.keyid


class TrustPolicy(Frozen):
    """Trusted keys, revoked key ids and per-environment key sets (and, optionally, a memo of the
    signatures already verified on this machine: it never changes what is accepted)."""

    __slots__ = ("environments", "keys", "memo", "policy_file", "revoked", "trust_dir")
    # memo: neither compared nor shown
    _fields = ("keys", "revoked", "environments", "trust_dir", "policy_file")
    keys: tuple[VerifyingKey, ...]
    revoked: frozenset[str]
    environments: Mapping[str, tuple[VerifyingKey, ...]]
    trust_dir: Path | None
    policy_file: Path | None
    memo: SignatureMemo | None

    def __init__(  # noqa: PLR0917 - one parameter per field (and the memo), as the dataclass it was
        self,
        keys: tuple[VerifyingKey, ...] = (),
        revoked: frozenset[str] = frozenset(),
        environments: Mapping[str, tuple[VerifyingKey, ...]] | None = None,
        trust_dir: Path | None = None,
        policy_file: Path | None = None,
        memo: SignatureMemo | None = None,
    ) -> None:
        _set(self, "keys", keys)
        _set(self, "revoked", revoked)
        _set(self, "environments", {} if environments is None else environments)
        _set(self, "trust_dir", trust_dir)
        _set(self, "policy_file", policy_file)
        _set(self, "memo", memo)

    def __reduce__(self) -> tuple[Any, ...]:
        # a copy keeps the memo, as a copy of the dataclass did (it is only kept out of == and repr)
        return (self.__class__, (*self._values(), self.memo))

    def with_memo(self, memo: SignatureMemo | None) -> TrustPolicy:
        """The same policy, checking signatures through ``memo`` (None: always cryptographically)."""
        return TrustPolicy(self.keys, self.revoked, self.environments, self.trust_dir, self.policy_file, memo)

    def with_home(self, trust_dir: Path, revoked: frozenset[str] = frozenset()) -> TrustPolicy:
        """The same policy read from the home's ``trust_dir``, revoking ``revoked`` too."""
        return TrustPolicy(
            self.keys, self.revoked | revoked, self.environments, trust_dir, self.policy_file, self.memo
        )

    @classmethod
    def load(cls, trust_dir: Path | str | None, policy_file: Path | str | None = None) -> TrustPolicy:
        """Read the trusted keys of ``trust_dir`` and, if given, the policy TOML ``policy_file``."""
        directory = Path(trust_dir) if trust_dir is not None else None
        keys = list(load_trust_dir(directory)) if directory is not None else []
        revoked: set[str] = set()
        environments: dict[str, tuple[VerifyingKey, ...]] = {}
        if policy_file is not None:
            policy_path = Path(policy_file)
            # as strict as the trust directory: whoever can change the policy or a key it names
            # chooses what deploys
            check_trust_material(policy_path, policy_path.parent, trusting=f"the keys {policy_path} trusts")
            doc = _read_policy(policy_path)
            entries = _string_list(doc.get("keys", []), f"{policy_path}: keys")
            # the key files first: a key id among them names one of those or of the trust directory
            # (trusted already, so it adds nothing), as a key id of an [env.NAME] section does
            keys.extend(
                _key_from_entry(entry, policy_path, {}, f"{policy_path}: keys")
                for entry in entries
                if policy_key_id(entry) is None
            )
            known = {key.keyid: key for key in keys}
            for entry in entries:
                if policy_key_id(entry) is not None:
                    _key_from_entry(entry, policy_path, known, f"{policy_path}: keys")
            revoked.update(_revoked_ids(doc, policy_path))
            known = {key.keyid: key for key in keys}
            env_table = doc.get("env", {})
            if not isinstance(env_table, dict):
                raise ConfigError(f"{policy_path}: env must be a table of [env.NAME] sections")
            for name, section in env_table.items():
                if not _ENV_NAME.fullmatch(name):  # never matched: that environment trusted the defaults
                    raise ConfigError(
                        f"{policy_path}: [env.NAME] section {name!r} is not an environment name (1 to 64 "
                        "lowercase letters, digits, '.', '_', '-', starting with a letter or digit): it "
                        "would never apply"
                    )
                what = f"{policy_path}: [env.{name}]"
                if not isinstance(section, dict):
                    raise ConfigError(f"{what} must be a table")
                unknown = sorted(set(section) - _ENV_FIELDS)
                if unknown:
                    raise ConfigError(f"{what}: unknown setting {unknown[0]!r} (expected: keys)")
                entries = _string_list(section.get("keys", []), f"{what} keys")
                environments[name] = _dedupe(
                    _key_from_entry(entry, policy_path, known, what) for entry in entries
                )
        policy = Path(policy_file) if policy_file is not None else None
        return cls(_dedupe(keys), frozenset(revoked), environments, directory, policy)

    def keys_for(self, env: str | None = None) -> tuple[VerifyingKey, ...]:
        """The unrevoked keys trusted for ``env`` (its own set if it has one, else the default)."""
        keys = self.environments.get(env, self.keys) if env is not None else self.keys
        return tuple(key for key in keys if key.keyid not in self.revoked)

    def _known_keys(self) -> tuple[VerifyingKey, ...]:
        every = list(self.keys)
        for keys in self.environments.values():
            every.extend(keys)
        return _dedupe(every)

    def verify_attestation(
        self, envelope_bytes: bytes, artifact_digest: str, env: str | None = None
    ) -> VerifiedProvenance:
        """Verify a signed provenance (DSSE envelope or Sigstore bundle) for ``artifact_digest``.

        Refuses, with one line each: no signatures, an untrusted key, a revoked key (even when its
        signature verifies), a bad signature, a payloadType other than in-toto JSON, a malformed
        statement and a statement about another artifact.
        """
        parse_sha256(artifact_digest, "artifact digest")
        envelope = load_attestation(envelope_bytes)
        if not envelope.signatures:
            raise VerificationError("attestation is unsigned: the envelope has no signatures")
        trusted = self.keys_for(env)
        revoked_known = tuple(key for key in self._known_keys() if key.keyid in self.revoked)
        if not trusted:
            by_revoked = revoked_signer(envelope, revoked_known, self.revoked, memo=self.memo)
            if by_revoked is not None:
                raise RevokedSignerError(f"signed by revoked key {by_revoked}")
            where = f" for environment {env}" if env is not None else ""
            hint = ""
            if env in self.environments and self.policy_file is not None:  # its own keys: none left
                hint = f"; name a public key in [env.{env}] keys of {self.policy_file}"
            elif self.trust_dir is not None:
                hint = f"; add a public key to {self.trust_dir} (graven keys trust PEM_FILE)"
            raise PolicyError(f"no trusted keys{where}{hint}")
        verified = verify_envelope(
            envelope, trusted + revoked_known, revoked_keyids=self.revoked, memo=self.memo
        )
        if verified.payload_type != PAYLOAD_TYPE:
            raise VerificationError(f"payloadType is {verified.payload_type!r}, expected {PAYLOAD_TYPE}")
        try:
            statement = parse_statement(verified.payload)
        except InputError as exc:
            raise VerificationError(f"signed provenance is malformed: {exc}") from None
        check_subject(statement, artifact_digest)
        return VerifiedProvenance(statement, verified.key, verified.payload, envelope)


_MAX_POLICY = 1 << 20  # a policy names keys and environments: a few KiB


def _read_policy(path: Path) -> dict[str, Any]:
    """The policy file's TOML: a regular file (a FIFO or a device is never read: opening one blocks
    or has effects) of at most :data:`_MAX_POLICY` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"policy file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"policy file {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"policy file {path} is not readable: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"policy file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"policy file {path} is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"policy file {path} is not a regular file")
        if info.st_size > _MAX_POLICY:
            raise ConfigError(f"policy file {path} is larger than {_MAX_POLICY} bytes; is it the right file?")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(_MAX_POLICY + 1)
    except OSError as exc:
        raise ConfigError(f"policy file {path} cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_POLICY:
        raise ConfigError(f"policy file {path} is larger than {_MAX_POLICY} bytes; is it the right file?")
    try:
        doc = toml_loads(data.decode("utf-8"))
    except (TomlError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - _POLICY_FIELDS)
    if unknown:
        raise ConfigError(
            f"policy file {path}: unknown setting {unknown[0]!r} (expected: keys, revoked, [env.NAME])"
        )
    return doc
