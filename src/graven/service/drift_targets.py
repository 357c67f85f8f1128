"""What a drift check looks at: the live environments (:class:`DriftTarget`) and the
:class:`DriftSession` that checks of one process share (indexed manifests, verified ignore globs, hasher).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graven.core.globs import GlobSet
from graven.db import Connection, Row
from graven.drift.scan import Hasher, ReleaseIndex
from graven.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    NeverDeployedError,
    NotFoundError,
    PolicyError,
    VerificationError,
)
from graven.model.digest import Digest
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.service.context import Context

__all__ = ["DriftSession", "DriftTarget", "artifact_row", "live_targets"]

_ENV_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


# -- what is deployed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftTarget:
    """One live environment and what graven deployed there."""

    env: str
    path: str
    digest: str
    name: str | None
    commit: str | None
    config: str | None
    pending: tuple[str, str | None] | None = None  # digest and config of a deployment in progress
    pipeline_digest: str | None = None  # the graven.toml the live deployment read its settings from


def _config_of(settings: str | None) -> str | None:
    if not settings:
        return None
    try:
        value = json.loads(settings).get("config")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def artifact_row(conn: Connection, digest: str) -> Row | None:
    return conn.execute(
        """SELECT digest, name, "commit" FROM artifacts WHERE digest = :digest""", {"digest": digest}
    ).one_or_none()


def live_targets(ctx: Context, envs: Sequence[str] = ()) -> list[DriftTarget]:
    """The live environments (all of them, or those named); a named one must be live."""
    for env in envs:
        if not _ENV_NAME.fullmatch(env):  # graven.deploy.settings.ENV_NAME, without importing it
            raise InputError(
                f"invalid environment name {env!r}: use 1-64 lowercase letters, digits, '.', '_', '-'"
            )
    if not ctx.home.has_database():
        if envs:
            raise NeverDeployedError(envs[0])
        return []
    targets: list[DriftTarget] = []
    with ctx.db.connect() as conn:
        rows = {
            row.name: row
            for row in conn.execute(
                "SELECT name, path, live_digest, live_deployment FROM deploy_envs ORDER BY name"
            )
        }
        for env in envs:
            if env not in rows:
                raise NeverDeployedError(env)
            if rows[env].live_digest is None:
                raise NotFoundError(f"nothing is live in {env}, so nothing can drift; deploy there first")
        for name in envs or list(rows):
            row = rows[name]
            if row.live_digest is None:
                continue
            dep = (
                conn.execute(
                    "SELECT settings, pipeline_digest FROM deployments WHERE id = :id",
                    {"id": row.live_deployment},
                ).one_or_none()
                if row.live_deployment is not None
                else None
            )
            art = artifact_row(conn, row.live_digest)
            pending_row = conn.execute(
                """SELECT digest, settings FROM deployments
                WHERE env = :env AND result = 'pending' ORDER BY id DESC LIMIT 1""",
                {"env": name},
            ).one_or_none()
            pending = None
            if pending_row is not None:
                pending = (str(pending_row.digest), _config_of(pending_row.settings))
            targets.append(
                DriftTarget(
                    env=name,
                    path=row.path,
                    digest=row.live_digest,
                    name=art.name if art is not None else None,
                    commit=art.commit if art is not None else None,
                    config=_config_of(dep.settings if dep is not None else None),
                    pending=pending,
                    pipeline_digest=dep.pipeline_digest if dep is not None else None,
                )
            )
    return targets


# -- per-process caches ----------------------------------------------------------------------------


def _entry(item: dict[str, Any]) -> TreeEntry:
    kind = item["type"]
    if kind == "file":
        return FileEntry(item["path"], item["sha256"], item["size"], item["mode"] == "0755")
    if kind == "symlink":
        return SymlinkEntry(item["path"], item["target"])
    return DirEntry(item["path"])


class DriftSession:
    """What checks of the same process share: indexed manifests, ignore globs, the hashing threads."""

    def __init__(self, ctx: Context, *, workers: int | None = None) -> None:
        self.ctx = ctx
        self.hasher = Hasher(workers)
        self._indexes: dict[str, ReleaseIndex] = {}
        self._ignores: dict[tuple[str, str, str | None], tuple[GlobSet, str | None]] = {}

    def index(self, digest: str) -> ReleaseIndex:
        """The manifest of ``digest``, indexed for scanning (read from the store once)."""
        found = self._indexes.get(digest)
        if found is None:
            parsed = Digest.parse(digest)
            # The store verifies the bytes against the digest, and a manifest was validated when it was
            # stored (build, import): parse without validating again (it costs more than the check).
            data = self.ctx.store.read(parsed)
            try:
                doc = json.loads(data)
                manifest = TreeManifest(tuple(_entry(item) for item in doc["entries"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"the manifest of {digest} cannot be read: {exc}") from None
            found = ReleaseIndex.of(manifest, parsed.hex)
            if len(self._indexes) >= 4:
                self._indexes.clear()
            self._indexes[digest] = found
        return found

    def ignore(self, digest: str, env: str, deployed: str | None = None) -> tuple[GlobSet, str | None]:
        """``[env.ENV] ignore`` of the graven.toml the deployment used (``deployed``, its digest as
        recorded; the newest one for deployments recorded before graven kept it), accepted only when a
        *verified* provenance of the artifact names it (trust never comes from the database alone), and
        a note when it cannot be read (then nothing is ignored: a stricter check, never a laxer one).
        Another build of the same files from a commit with other globs changes nothing here."""
        key = (digest, env, deployed)
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
