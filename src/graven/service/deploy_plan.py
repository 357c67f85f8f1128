"""``graven deploy --plan``: every check of a deploy, and what it would change; nothing is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graven.deploy.layout import EnvLayout
from graven.deploy.plan import TreeDiff, config_diff, diff_manifests, evaluate_policy, short
from graven.deploy.settings import check_env_name, config_files
from graven.errors import GravenError, PolicyError
from graven.model.digest import Digest
from graven.model.manifest import TreeManifest
from graven.service.artifacts import load_manifest, resolve_digest
from graven.service.context import Context
from graven.service.deploy_records import settings_from_row
from graven.service.deploy_types import DeployOptions
from graven.service.deploy_verify import check_path, policy_facts, verify_target
from graven.service.environments import deployment_row, load_state


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
        }


def _config_bytes(ctx: Context, manifest: TreeManifest | None, config: str | None) -> dict[str, bytes]:
    if manifest is None or config is None:
        return {}
    return {path: ctx.store.read(Digest(sha)) for path, sha in config_files(manifest, config).items()}


def plan_deploy(ctx: Context, digest_text: str, env: str, opts: DeployOptions) -> DeployPlan:
    """Every check of a deploy, and what it would change; nothing is written (no lock is taken)."""
    check_env_name(env)
    digest = resolve_digest(ctx, digest_text)
    target = verify_target(ctx, digest, env, opts, log_failures=False)
    settings = target.settings
    with ctx.db.connect() as conn:
        state = load_state(conn, env)
        facts = policy_facts(conn, target, state, kind="deploy", override=opts.override)
        live_row = deployment_row(conn, state.live_deployment) if state else None
    check_path(state, settings)
    decision = evaluate_policy(facts)
    if not decision.allowed:
        raise PolicyError(decision.refusal or "refused")
    layout = EnvLayout(Path(settings.path))
    live_hex = layout.live_hex()
    live_manifest: TreeManifest | None = None
    if live_hex is not None:
        try:
            live_manifest = load_manifest(ctx, Digest(live_hex))
        except GravenError:
            live_manifest = None
    diff = diff_manifests(live_manifest, target.manifest)
    live_settings = settings_from_row(live_row)
    old_config = live_settings.config if live_settings else settings.config
    text = config_diff(
        _config_bytes(ctx, live_manifest, old_config),
        _config_bytes(ctx, target.manifest, settings.config),
        old_label=short(live_hex) if live_hex else "(nothing)",
        new_label=short(str(digest)),
    )
    reusable = {(e.sha256, e.executable) for e in live_manifest.files()} if live_manifest else set()
    files = list(target.manifest.files())
    link = sum(1 for e in files if (e.sha256, e.executable) in reusable)
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
        would_link=link,
        would_copy=len(files) - link,
        release_on_disk=layout.release(digest.hex).is_dir(),
        overridden=decision.overridden,
        settings=settings.to_json(),
    )
