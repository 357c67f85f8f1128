"""What a drift check looks at: the live environments (:class:`DriftTarget`, from ``drift_live``) and
the :class:`DriftSession` that checks of one process share (indexed manifests, verified ignore globs,
hasher).
"""

from __future__ import annotations

import tomllib

from graven.core.globs import GlobSet
from graven.drift.clean import trust_fingerprint
from graven.drift.scan import Hasher, ReleaseIndex
from graven.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    PolicyError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.manifest import TreeManifest
from graven.service.artifacts import load_manifest
from graven.service.context import Context
from graven.service.drift_live import DriftTarget, artifact_row, live_targets

__all__ = ["DriftSession", "DriftTarget", "artifact_row", "live_targets"]

# -- per-process caches ----------------------------------------------------------------------------


class DriftSession:
    """What checks of the same process share: indexed manifests, ignore globs, the hashing threads."""

    def __init__(self, ctx: Context, *, workers: int | None = None) -> None:
        self.ctx = ctx
        self.hasher = Hasher(workers)
        self._indexes: dict[str, ReleaseIndex] = {}
        self._ignores: dict[tuple[str, str, str | None, str], tuple[GlobSet, str | None]] = {}

    def index(self, digest: str) -> ReleaseIndex:
        """The manifest of ``digest``, indexed for scanning (read from the store once)."""
        found = self._indexes.get(digest)
        if found is None:
            parsed = Digest.parse(digest)
            manifest = self._manifest(parsed)
            found = ReleaseIndex.of(manifest, parsed.hex)
            if len(self._indexes) >= 4:
                self._indexes.clear()
            self._indexes[digest] = found
        return found

    def _manifest(self, digest: Digest) -> TreeManifest:
        # From the home's cache of validated manifests when a deploy or an earlier check put it there;
        # else read from the store (verified against the digest), validated, and cached.
        try:
            return load_manifest(self.ctx, digest)
        except InputError as exc:
            raise InputError(f"the manifest of {digest} cannot be read: {exc}") from None

    def trust(self) -> str:
        """The digest of the trust policy's files now (:func:`graven.drift.clean.trust_fingerprint`)."""
        return trust_fingerprint(self.ctx.home.trust, self.ctx.home.policy)

    def ignore(
        self, digest: str, env: str, deployed: str | None = None, trust: str | None = None
    ) -> tuple[GlobSet, str | None]:
        """``[env.ENV] ignore`` of the graven.toml the deployment used (``deployed``, its digest as
        recorded; the newest one for deployments recorded before graven kept it), accepted only when a
        *verified* provenance of the artifact names it (trust never comes from the database alone), and
        a note when it cannot be read (then nothing is ignored: a stricter check, never a laxer one).
        Another build of the same files from a commit with other globs changes nothing here. The result
        is kept per ``trust`` (:meth:`trust`; now when not given): a change of the trust policy verifies
        again."""
        key = (digest, env, deployed, self.trust() if trust is None else trust)
        found = self._ignores.get(key)
        if found is None:
            pipeline_digest = self._verified_pipeline(digest, env, deployed)
            patterns: list[str] = []
            note = None
            if pipeline_digest is None:
                what = "the graven.toml it was deployed with" if deployed else "its provenance"
                note = f"{what} does not verify for {env} ({digest[7:19]}): no ignore globs applied"
            else:
                # The bytes are verified against their digest and were validated (EnvSection) when the
                # artifact was built; tomllib reads the one list needed, at a fraction of the cost.
                data = self.ctx.store.read(Digest.parse(pipeline_digest))
                try:
                    section = tomllib.loads(data.decode("utf-8")).get("env", {}).get(env, {})
                    value = section.get("ignore", []) if isinstance(section, dict) else []
                except (UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
                    value = []
                if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
                    where = f"graven.toml {pipeline_digest[7:19]}: [env.{env}]"
                    raise ConfigError(f"{where} ignore is not a list of globs")
                patterns = value
            found = (GlobSet.of(patterns), note)
            if len(self._ignores) >= 64:  # a watcher lives for days; trust may change many times
                self._ignores.clear()
            self._ignores[key] = found
        return found

    def _verified_pipeline(self, digest: str, env: str, deployed: str | None) -> str | None:
        """``deployed`` when a trusted provenance names it (else None); without it, the newest one."""
        from graven.service.provenance import envelope_digests, load_policy

        policy = load_policy(self.ctx)
        for envelope in envelope_digests(self.ctx, Digest.parse(digest)):
            try:
                data = self.ctx.store.read(Digest.parse(envelope))
                named = policy.verify_attestation(data, digest, env).statement.pipeline_digest
            except (VerificationError, PolicyError, InputError, IntegrityError):
                continue
            if deployed is None or named == deployed:
                return named
        return None

    def close(self) -> None:
        """Stop the hashing threads."""
        self.hasher.close()
