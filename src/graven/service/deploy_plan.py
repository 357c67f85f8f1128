"""``graven deploy --plan``: every check of a deploy, and what it would change; nothing is written.

The counts of files to link and copy are what the deployment's build would do (the same test of the
release already on disk and of each file at the same path of the live release, against the stat
records), and every object it would copy is read from the store, verified, so that a plan fails where
the deployment would."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graven.deploy.fscheck import plan_release_support
from graven.deploy.layout import EnvLayout
from graven.deploy.materialize import Transfer, integrity_error, plan_transfer, verify_objects
from graven.deploy.plan import TreeDiff, config_diff, diff_manifests, evaluate_policy, short
from graven.deploy.recordkey import KEY_FILE
from graven.deploy.settings import check_env_name, config_files
from graven.deploy.statdb import StatTable
from graven.errors import GravenError, IntegrityError, PolicyError
from graven.model.digest import Digest
from graven.model.manifest import TreeManifest
from graven.service.artifacts import load_manifest, resolve_digest
from graven.service.context import Context
from graven.service.deploy_release import check_links, check_on_disk
from graven.service.deploy_types import DeployOptions, Target
from graven.service.deploy_verify import (
    check_location,
    check_path,
    policy_facts,
    tested_target,
    verified_settings,
)
from graven.service.environments import deployment_row, load_state
from graven.service.witness import check_witness


@dataclass(frozen=True)
class DeployPlan:
    """What ``deploy --plan`` would do."""

    env: str
    digest: str
    name: str
    commit: str | None
    path: str
    live: str | None
    diff: TreeDiff
    config: str | None
    config_diff: str
    would_link: int
    would_copy: int
    release_on_disk: bool
    overridden: tuple[str, ...]
    settings: dict[str, Any]
    live_settings: dict[str, Any] | None = None  # what the live deployment ran with (its hooks)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "env": self.env,
            "digest": self.digest,
            "name": self.name,
            "commit": self.commit,
            "path": self.path,
            "live": self.live,
            "changes": self.diff.to_json(),
            "config": self.config,
            "config_diff": self.config_diff,
            "would_link": self.would_link,
            "would_copy": self.would_copy,
            "release_on_disk": self.release_on_disk,
            "overridden": list(self.overridden),
            "settings": self.settings,
            "live_settings": self.live_settings,
        }


def _config_bytes(ctx: Context, manifest: TreeManifest | None, config: str | None) -> dict[str, bytes]:
    if manifest is None or config is None:
        return {}
    return {path: ctx.store.read(Digest(sha)) for path, sha in config_files(manifest, config).items()}


def _stat_table(ctx: Context, layout: EnvLayout) -> StatTable:
    """The environment's stat records, read only: without a record file or a record key (a plan never
    makes one) there is nothing to trust, and every file counts as a copy."""
    if not layout.stat_file.exists() or not (ctx.home.keys / KEY_FILE).exists():
        return StatTable()
    return StatTable.load(layout.stat_file, ctx.record_key)


def _transfer(ctx: Context, target: Target, layout: EnvLayout, live_hex: str | None) -> Transfer:
    """What the deployment's build would link and copy (see ensure_release): nothing when the release
    on disk checks; otherwise the files unchanged at the same path of the release it reuses are linked
    (the live release, or the damaged release itself), the rest copied. The table is changed in memory
    only (a check refreshes records), never saved."""
    table = _stat_table(ctx, layout)
    release = layout.release(target.digest.hex)
    reuse: Path | None = layout.release(live_hex) if live_hex is not None else None
    if release.is_dir():
        if check_on_disk(ctx, layout, target.digest.hex, target.manifest, table).ok:
            return Transfer(0, ())
        reuse = release
    return plan_transfer(target.manifest, table, reuse_root=reuse)


def _verify_copies(ctx: Context, transfer: Transfer, release: Path) -> None:
    """Read every object the deployment would copy, verified; fail as the deployment would."""
    try:
        verify_objects(ctx.store, transfer.copied)
    except IntegrityError as exc:
        raise integrity_error(exc, release, doing="planning") from None


def plan_deploy(ctx: Context, digest_text: str, env: str, opts: DeployOptions) -> DeployPlan:
    """Every check of a deploy, and what it would change; nothing is written (no lock is taken)."""
    check_env_name(env)
    digest = resolve_digest(ctx, digest_text)
    target = tested_target(ctx, digest, env, opts, log_failures=False)
    settings = target.settings
    with ctx.db.connect() as conn:
        check_location(ctx, conn, settings)
        state = load_state(conn, env)
        facts = policy_facts(conn, target, state, kind="deploy", override=opts.override)
        live_row = deployment_row(conn, state.live_deployment) if state else None
    check_path(state, settings)
    decision = evaluate_policy(facts)
    if not decision.allowed:
        raise PolicyError(decision.refusal or "refused")
    layout = EnvLayout(Path(settings.path))
    check_links(layout)  # what the deploy refuses before its lock (a file at PATH/config, a linked releases/)
    check_witness(
        ctx, layout, env
    )  # and under it: another home (or an older state of this one) changed it last
    plan_release_support(
        layout.root,
        layout.release(digest.hex),
        [entry.path for entry in target.manifest.entries],
        first=not os.path.lexists(layout.meta),
    )
    live_hex = layout.live_hex()
    live_manifest: TreeManifest | None = None
    if live_hex is not None:
        try:
            live_manifest = load_manifest(ctx, Digest(live_hex))
        except GravenError:
            live_manifest = None
    diff = diff_manifests(live_manifest, target.manifest)
    live_settings, _ = verified_settings(ctx, live_row, env, opts)  # the hooks as the live graven.toml says
    old_config = live_settings.config if live_settings else settings.config
    text = config_diff(
        _config_bytes(ctx, live_manifest, old_config),
        _config_bytes(ctx, target.manifest, settings.config),
        old_label=short(live_hex) if live_hex else "(nothing)",
        new_label=short(str(digest)),
    )
    release_on_disk = layout.release(digest.hex).is_dir()
    transfer = _transfer(ctx, target, layout, live_hex)
    _verify_copies(ctx, transfer, layout.release(digest.hex))
    return DeployPlan(
        env=env,
        digest=str(digest),
        name=target.name,
        commit=target.commit,
        path=settings.path,
        live=f"sha256:{live_hex}" if live_hex else None,
        diff=diff,
        config=settings.config,
        config_diff=text,
        would_link=transfer.linked,
        would_copy=len(transfer.copied),
        release_on_disk=release_on_disk,
        overridden=decision.overridden,
        settings=settings.to_json(),
        live_settings=live_settings.to_json() if live_settings else None,
    )
