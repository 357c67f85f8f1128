"""Signing provenance at build time and checking it at every stage after.

Trust belongs to the operator: the keys in ``GRAVEN_HOME/trust`` (plus ``GRAVEN_HOME/trust/revoked`` and
an optional policy file, ``GRAVEN_HOME/policy.toml`` or ``--policy FILE``), never a key carried by an
artifact or an envelope.

The policy of :func:`load_policy` remembers the signatures it verified in ``GRAVEN_HOME/cache/signatures``
(:mod:`graven.signing.memo`), so deploy, promote, rollback and drift do not check the same signature
cryptographically again; the explicit checks (:func:`check_provenance` for ``graven verify``,
:func:`check_attestation_file` for ``graven attest verify``) always do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from graven import __version__
from graven.core.record import Frozen
from graven.db import Connection
from graven.errors import (
    ConfigError,
    GravenError,
    InputError,
    IntegrityError,
    NotFoundError,
    PolicyError,
    UntrustedSignerError,
    VerificationError,
)
from graven.home import Home, check_home
from graven.model.digest import Digest
from graven.service.context import Context, utc_now
from graven.service.records import insert_ignore
from graven.signing.bundle import load_attestation
from graven.signing.dsse import Envelope, sign_envelope
from graven.signing.keys import KeyStore, SigningKey, load_public_key
from graven.signing.memo import FileSignatureMemo
from graven.signing.provenance import (
    PAYLOAD_TYPE,
    ProvenanceInputs,
    ProvenanceStatement,
    ResourceRef,
    statement_bytes,
)
from graven.signing.trust import (
    TrustPolicy,
    VerifiedProvenance,
    check_trust_material,
    read_policy_revoked,
)

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "BUILDER_ID",
    "ProvenanceCheck",
    "check_provenance",
    "load_policy",
    "preferred_envelope",
    "preferred_provenance",
    "read_revoked",
    "record_attestation",
    "refuse_revoked_signer",
    "resolve_signing_key",
    "sign_provenance",
    "signature_memo",
    "trust_hint",
]

BUILDER_ID = "https://graven.dev/builders/local/v1"
DEFAULT_KEY_NAME = "default"
REVOKED_FILE = "revoked"
SIGNATURE_MEMO_DIR = ("cache", "signatures")


def resolve_signing_key(ctx: Context) -> SigningKey:
    """The key that signs builds: ``GRAVEN_SIGNING_KEY`` (path or name), else the home's key named
    ``default``, else the home's only key (several others: an :class:`InputError`). A
    key of the home without its public key file, that the home does not trust, is said: the sign of a
    `keys generate` that did not finish (killed between the private key and the trust)."""
    # a home of another user's (root with their HOME), or one others may write, is said as such
    # before its keys and trust are read (the store would refuse it later, after the policy's
    # strict-modes check named a file in it)
    check_home(ctx.home.root)
    key, name = _choose_signing_key(ctx)
    # the policy every check of what it signs reads (trust/revoked and policy.toml's revoked): one
    # that cannot be read stops the build here, as it would stop the verify and deploy after it
    policy = load_policy(ctx, memo=False)
    refuse_revoked_signer(ctx, key.keyid, policy)
    store = KeyStore(ctx.home.keys)
    if name is not None and store.public_path(name).exists():
        # a NAME.key replaced beside the old NAME.pub: `keys list` and `keys export` name the old key
        try:
            store.check_pair(name, load_public_key(store.public_path(name)), key)
        except InputError as exc:
            ctx.reporter.warn(f"{exc}; this build is signed by {key.keyid[:16]}")
    elif name is not None and not _home_trusts(ctx, key.keyid, policy):
        ctx.reporter.warn(
            f"the signing key {name} has no public key file and this home does not trust it (a "
            f"`graven keys generate` that did not finish?): what it signs, verify and deploy here refuse; "
            f"`graven keys export {name} > {name}.pub && graven keys trust {name}.pub` trusts it"
        )
    return key


def refuse_revoked_signer(
    ctx: Context, keyid: str, policy: TrustPolicy | None = None, *, meanwhile: bool = False
) -> None:
    """PolicyError when the signing key ``keyid`` is revoked in ``policy`` (default: the home's, read
    now). ``meanwhile``: the build checked it at its start, and it was revoked while the build ran (the
    build, still holding the database's writers' lock, records nothing)."""
    if policy is None:
        policy = load_policy(ctx, memo=False)
    if keyid not in policy.revoked:
        return
    found = revoked_in(ctx.home, keyid, policy)
    where = (
        "GRAVEN_HOME/trust/revoked"
        if found in (None, ctx.home.trust / REVOKED_FILE)
        else f"revoked in {found}"
    )
    if meanwhile:
        raise PolicyError(
            f"the signing key {keyid[:16]} was revoked while this build ran ({where}): nothing is "
            "recorded, what it signed would never verify; build again with another key "
            "(`graven keys generate`)"
        )
    raise PolicyError(
        f"the signing key {keyid[:16]} is revoked ({where}): what it signs "
        "would never verify; sign with another key (`graven keys generate`)"
    )


def _home_trusts(ctx: Context, keyid: str, policy: TrustPolicy) -> bool:
    """Whether the home's trust directory holds ``keyid`` (under any file name it accepts), or its
    ``policy`` trusts it by default."""
    if (ctx.home.trust / f"{keyid}.pub").is_file():
        return True
    return any(key.keyid == keyid for key in policy.keys)


def _choose_signing_key(ctx: Context) -> tuple[SigningKey, str | None]:
    """The signing key, and its name in the home (None for one GRAVEN_SIGNING_KEY names)."""
    keys = KeyStore(ctx.home.keys)
    chosen = os.environ.get("GRAVEN_SIGNING_KEY")
    if chosen:
        return keys.resolve(chosen), None
    names = keys.private_names()
    if DEFAULT_KEY_NAME in names:
        return keys.load(DEFAULT_KEY_NAME), DEFAULT_KEY_NAME
    if len(names) == 1:
        return keys.load(names[0]), names[0]
    if not names:
        raise InputError(
            "no signing key: create one with `graven keys generate` (or set GRAVEN_SIGNING_KEY "
            "to a private key file)"
        )
    raise InputError(
        f"several signing keys ({', '.join(names)}) and none is named {DEFAULT_KEY_NAME!r}; "
        "choose one with GRAVEN_SIGNING_KEY=NAME"
    )


def sign_provenance(key: SigningKey, inputs: ProvenanceInputs) -> Envelope:
    """Sign the SLSA provenance statement for a build into a DSSE envelope."""
    return sign_envelope(statement_bytes(inputs), PAYLOAD_TYPE, key)


def provenance_inputs(
    *,
    name: str,
    digest: str,
    repository: str,
    revision: str,
    commit: str,
    source_date_epoch: int,
    sandbox: str,
    invocation_id: str,
    started_on: str,
    finished_on: str,
    pipeline_digest: str,
    inputs: Sequence[ResourceRef] = (),
    byproducts: Sequence[ResourceRef] = (),
    fetch_network: str | None = None,
) -> ProvenanceInputs:
    """The statement's values for one build; ``fetch_network``: the network its ``[build.fetch]``
    steps had (None: no fetch ran)."""
    return ProvenanceInputs(
        artifact_name=name,
        artifact_digest=digest,
        repository=repository,
        revision=revision,
        commit=commit,
        source_date_epoch=source_date_epoch,
        sandbox=sandbox,
        builder_id=BUILDER_ID,
        graven_version=__version__,
        invocation_id=invocation_id,
        started_on=_parse_time(started_on),
        finished_on=_parse_time(finished_on),
        pipeline_digest=pipeline_digest,
        inputs=tuple(inputs),
        byproducts=tuple(byproducts),
        fetch_network=fetch_network,
    )


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def record_attestation(conn: Connection, artifact: str, envelope_digest: str, keyid: str) -> None:
    """Remember that ``envelope_digest`` (in the store) attests ``artifact``."""
    insert_ignore(
        conn,
        "attestations",
        [
            {
                "artifact_digest": artifact,
                "envelope_digest": envelope_digest,
                "keyid": keyid,
                "created_at": utc_now(),
            }
        ],
    )


_KEY_ID = re.compile(r"[0-9a-f]{64}")


def revoked_in(home: Home, keyid: str, policy: TrustPolicy | None) -> Path | None:
    """Where ``keyid`` is revoked: ``trust/revoked`` of ``home`` (first), else the file of ``policy``
    (the home's policy.toml as read by :meth:`TrustPolicy.load` or :func:`load_policy`); None when
    it is not."""
    revoked_file = home.trust / REVOKED_FILE
    if keyid in read_revoked(revoked_file):
        return revoked_file
    if policy is not None and keyid in policy.revoked:
        named: Path | None = policy.policy_file
        return named
    return None


def read_revoked(path: Path) -> frozenset[str]:
    """The key ids listed in a revocation file (``trust/revoked``): one per line, optionally
    ``sha256:``-prefixed, ``#`` comments. A line that is no key id is an error naming it, never skipped:
    a revocation that silently does not apply is worse than a refusal."""
    if not os.path.lexists(path):
        return frozenset()
    if not os.path.isfile(path):  # a dangling link, a directory, a FIFO: revocations that do not apply
        raise ConfigError(
            f"{path} is not a readable file: it lists the key ids this home never accepts; make it a "
            "file (one key id per line) or remove it"
        )
    check_trust_material(path, path.parent)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:  # removed meanwhile
        return frozenset()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; it lists one key id (64 hex digits) per line") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    found: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip().lower().removeprefix("sha256:")
        if not value:
            continue
        if not _KEY_ID.fullmatch(value):
            raise InputError(
                f"{path} line {number}: {value[:80]!a} is not a key id (64 hex digits, as "
                "`graven keys list` shows them); fix or remove the line"
            )
        found.add(value)
    return frozenset(found)


def signature_memo(ctx: Context) -> FileSignatureMemo:
    """The home's memo of verified signatures (``GRAVEN_HOME/cache/signatures``, entries named by an HMAC
    under the record key ``keys/records.hmac``, which is read or made on first use only)."""
    return FileSignatureMemo(ctx.home.root.joinpath(*SIGNATURE_MEMO_DIR), lambda: ctx.record_key)


def load_policy(ctx: Context, policy_file: Path | None = None, *, memo: bool = True) -> TrustPolicy:
    """The operator's trust: ``GRAVEN_HOME/trust``, ``trust/revoked`` and a policy file:
    ``policy_file`` (``--policy``) when given, else ``GRAVEN_HOME/policy.toml`` when it exists (whose
    ``revoked`` key ids are refused with a ``policy_file`` too).

    With ``memo`` (the default) the policy checks signatures through the home's memo of verified
    signatures (:func:`signature_memo`): what it accepts and refuses is the same, only a signature
    verified before with the same key is not checked cryptographically again. :func:`check_provenance`
    and :func:`check_attestation_file` drop the memo whatever policy they are given.
    """
    home_policy = os.path.lexists(ctx.home.policy)
    if policy_file is None and home_policy:
        policy_file = ctx.home.policy  # the home's policy, for every command (--policy replaces it)
    # a missing trust/ is empty; anything else that is not a directory (a dangling link too: its
    # revocations are unknown) is refused (load_trust_dir)
    policy = TrustPolicy.load(ctx.home.trust if os.path.lexists(ctx.home.trust) else None, policy_file)
    extra = read_revoked(ctx.home.trust / REVOKED_FILE)
    if home_policy and policy_file is not None and not _same_file(policy_file, ctx.home.policy):
        # --policy replaces the home's policy but not its revocations: a key revoked there is never
        # accepted, whatever policy a command is given (as trust/revoked)
        extra |= read_policy_revoked(ctx.home.policy)
    if extra:
        policy = policy.with_home(ctx.home.trust, extra)
    elif policy.trust_dir is None:
        policy = policy.with_home(ctx.home.trust)
    return policy.with_memo(signature_memo(ctx) if memo else None)


def _same_file(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except (OSError, ValueError):  # missing (said when read), a NUL in the name
        return False


def envelope_digests(ctx: Context, artifact: Digest) -> list[str]:
    """The stored envelopes that attest ``artifact``, newest first."""
    with ctx.db.connect() as conn:
        rows: list[str] = list(
            conn.execute(
                "SELECT envelope_digest FROM attestations WHERE artifact_digest = :artifact ORDER BY id DESC",
                {"artifact": str(artifact)},
            ).scalars()
        )
    return rows


class ProvenanceCheck(Frozen):
    """The outcome of checking an artifact's provenance against the trust policy."""

    __slots__ = ("commit", "envelope", "epoch", "keyid", "name", "named", "ok", "reason")
    _fields = ("ok", "reason", "keyid", "envelope", "commit", "named", "name", "epoch")
    ok: bool
    reason: str
    keyid: str | None
    envelope: str | None
    commit: str | None
    # what the accepted statement names that a build stores beside the artifact: (name, digest) of its
    # graven.toml ("graven.toml") and byproducts (its build log)
    named: tuple[tuple[str, str], ...]
    name: str | None  # the accepted statement's name for the artifact (its subject's)
    epoch: int | None  # ... and its sourceDateEpoch (the commit time a build ran with)

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        ok: bool,
        reason: str,
        keyid: str | None = None,
        envelope: str | None = None,
        commit: str | None = None,
        named: tuple[tuple[str, str], ...] = (),
        name: str | None = None,
        epoch: int | None = None,
    ) -> None:
        _set(self, "ok", ok)
        _set(self, "reason", reason)
        _set(self, "keyid", keyid)
        _set(self, "envelope", envelope)
        _set(self, "commit", commit)
        _set(self, "named", named)
        _set(self, "name", name)
        _set(self, "epoch", epoch)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "ok": self.ok,
            "reason": self.reason,
            "keyid": self.keyid,
            "envelope": self.envelope,
            "commit": self.commit,
        }


class UnsignedError(VerificationError):
    """No signed provenance is recorded for an artifact."""


def verified_provenance(
    ctx: Context, artifact: Digest, *, policy: TrustPolicy, env: str | None = None
) -> tuple[VerifiedProvenance, str]:
    """The newest stored envelope that a trusted, unrevoked key signed for ``artifact``, and its digest.

    Raises UnsignedError when none is stored, else the first failure (a missing or corrupt envelope is
    a VerificationError).
    """
    return verified_provenances(ctx, artifact, policy=policy, env=env, first_only=True)[0]


def verified_provenances(
    ctx: Context, artifact: Digest, *, policy: TrustPolicy, env: str | None = None, first_only: bool = False
) -> list[tuple[VerifiedProvenance, str]]:
    """Every stored envelope that a trusted, unrevoked key signed for ``artifact`` (newest first), with
    its digest. One artifact has several when commits that differ only outside its files (graven.toml,
    say) were built. Raises as :func:`verified_provenance` when none verifies."""
    digests = envelope_digests(ctx, artifact)
    if not digests:
        raise UnsignedError(f"unsigned artifact: no signed provenance is recorded for {artifact}")
    found: list[tuple[VerifiedProvenance, str]] = []
    first_error: GravenError | None = None
    for envelope_digest in digests:
        try:
            data = ctx.store.read(Digest.parse(envelope_digest))
            found.append((policy.verify_attestation(data, str(artifact), env), envelope_digest))
            if first_only:
                break
        except IntegrityError as exc:
            first_error = first_error or VerificationError(f"stored provenance is missing or corrupt: {exc}")
        except (VerificationError, PolicyError, InputError) as exc:
            first_error = first_error or exc
    if found:
        return found
    assert first_error is not None
    raise first_error


def trust_hint(policy: TrustPolicy, env: str | None) -> str:
    """How to make a key that signed an artifact trusted where ``policy`` (for ``env``) looks for it."""
    if env is not None and env in policy.environments and policy.policy_file is not None:
        return f"if its signer may deploy to {env}, name its key in [env.{env}] keys of {policy.policy_file}"
    return "if you trust its signer, trust its public key (graven keys trust KEY.pub)"


def check_provenance(
    ctx: Context, artifact: Digest, *, policy: TrustPolicy, env: str | None = None
) -> ProvenanceCheck:
    """Accept when one stored envelope is signed by a trusted, unrevoked key and names ``artifact``.

    This is ``graven verify``'s check: every signature is checked cryptographically (the policy's memo
    of verified signatures, if any, is not used)."""
    try:
        verified, envelope_digest = verified_provenance(ctx, artifact, policy=policy.with_memo(None), env=env)
    except UntrustedSignerError as exc:
        return ProvenanceCheck(False, f"{exc}; {trust_hint(policy, env)}")
    except (VerificationError, PolicyError, InputError) as exc:
        return ProvenanceCheck(False, str(exc))
    with ctx.db.connect() as conn:
        row = conn.execute(
            'SELECT "commit", source_date_epoch, pipeline_digest FROM artifacts WHERE digest = :digest',
            {"digest": str(artifact)},
        ).one_or_none()
    # an archive without graven's header claims no commit time: import records 0 for it (archive-v1.md),
    # which stands for "none" here, as a missing commit does
    recorded = None if row is None else (row.commit, row.source_date_epoch or None, row.pipeline_digest)

    def names(statement: ProvenanceStatement) -> bool:  # what the row says, as far as both say it
        assert recorded is not None
        signed = (statement.commit, statement.source_date_epoch, statement.pipeline_digest)
        return all(
            mine is None or theirs is None or mine == theirs
            for mine, theirs in zip(recorded, signed, strict=True)
        )

    if recorded is not None and not names(verified.statement):
        # what show, status and export go by (the commit, the commit time an export's mtimes are, the
        # graven.toml an export carries) must be signed too: several commits may build the same
        # artifact (they differ outside its files), so any trusted provenance of it may name them; none
        # doing so is a row edited in the database, or an unsigned import's claim (an archive's
        # graven.toml that is not the signed one)
        every = verified_provenances(ctx, artifact, policy=policy.with_memo(None), env=env)
        if not any(names(v.statement) for v, _ in every):
            commit, epoch, pipeline = recorded
            signed = verified.statement
            return ProvenanceCheck(
                False,
                f"this home records commit {str(commit or 'none')[:12]} (time {epoch or 'none'}, "
                f"graven.toml {str(pipeline or 'none')[:19]}) for it, but no signed provenance of it names "
                f"that (the newest names {str(signed.commit)[:12]}, time {signed.source_date_epoch}, "
                f"graven.toml {str(signed.pipeline_digest)[:19]}): the database was changed, or an "
                "unsigned import claimed it",
            )
    return _accepted(verified, envelope_digest, artifact)


def _accepted(verified: VerifiedProvenance, envelope_digest: str | None, artifact: Digest) -> ProvenanceCheck:
    statement = verified.statement
    named = [(PIPELINE_NAME, statement.pipeline_digest)] if statement.pipeline_digest else []
    named.extend((item.name, item.digest) for item in statement.byproducts)
    return ProvenanceCheck(
        True,
        f"signed by trusted key {verified.keyid[:16]}",
        keyid=verified.keyid,
        envelope=envelope_digest,
        commit=statement.commit,
        named=tuple(named),
        name=next((s.name for s in statement.subjects if s.sha256 == artifact.hex), None),
        epoch=statement.source_date_epoch,
    )


PIPELINE_NAME = "graven.toml"


def check_attestation_file(
    data: bytes,
    artifact: Digest,
    *,
    policy: TrustPolicy,
    env: str | None = None,
    refused: tuple[type[GravenError], ...] = (),
) -> ProvenanceCheck:
    """Check a standalone envelope or Sigstore bundle; malformed input raises InputError. Every signature
    is checked cryptographically (the policy's memo of verified signatures, if any, is not used). A
    failure of a ``refused`` kind is raised rather than returned."""
    load_attestation(data)  # unparseable input is a usage error (exit 2), not a failed check
    try:
        verified = policy.with_memo(None).verify_attestation(data, str(artifact), env)
    except refused:
        raise
    except (VerificationError, PolicyError) as exc:
        return ProvenanceCheck(False, str(exc))
    return _accepted(verified, None, artifact)


def latest_envelope(ctx: Context, artifact: Digest) -> bytes:
    """The newest stored envelope of ``artifact``."""
    digests = envelope_digests(ctx, artifact)
    if not digests:
        raise NotFoundError(f"{artifact} has no signed provenance")
    return ctx.store.read(Digest.parse(digests[0]))


def preferred_envelope(ctx: Context, artifact: Digest) -> tuple[bytes, str | None]:
    """The envelope of ``artifact`` to show, export or rebuild from: the newest one the home's trust
    policy accepts, and the key id that verified it; when none verifies, the newest stored one and
    None. (The newest stored one alone could be any later import or a build with an untrusted key,
    hiding the provenance that verify accepts.) A policy that cannot be read is its own error (exit 2),
    never taken for a provenance no key trusts."""
    data, verified = preferred_provenance(ctx, artifact)
    return data, None if verified is None else verified.keyid


def preferred_provenance(ctx: Context, artifact: Digest) -> tuple[bytes, VerifiedProvenance | None]:
    """:func:`preferred_envelope`, with the verified provenance (its key: the one that verified it)
    instead of the key id."""
    policy = load_policy(ctx)
    try:
        verified, envelope_digest = verified_provenance(ctx, artifact, policy=policy)
    except (VerificationError, PolicyError, InputError):
        return latest_envelope(ctx, artifact), None
    return ctx.store.read(Digest.parse(envelope_digest)), verified
