"""Values the deployment modules share: the operator's options and the verified target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graven.deploy.settings import EnvSettings
from graven.model.digest import Digest
from graven.model.manifest import TreeManifest


@dataclass(frozen=True)
class DeployOptions:
    """How to deploy: the operator's side of every decision."""

    root: str | None = None  # absolute deploy root for relative [env] paths (GRAVEN_DEPLOY_ROOT, --root)
    policy_file: Path | None = None  # an extra trust policy file (--policy)
    wait: bool = False  # queue behind another deployer instead of failing at once
    reason: str | None = None
    override: bool = False  # --override-policy: bypass `requires` (never hashes, signatures, rejection)


@dataclass(frozen=True)
class Target:
    """An artifact checked for one environment: everything its deployment reads of it."""

    digest: Digest
    name: str
    commit: str | None
    manifest: TreeManifest
    settings: EnvSettings
    keyid: str
    pipeline_digest: str
