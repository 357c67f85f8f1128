"""Values the deployment modules share: the operator's options and the verified target (frozen values
written by hand, graven.core.record: @dataclass costs start-up)."""

from __future__ import annotations

from graven.core.record import Frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from pathlib import Path

    from graven.deploy.settings import EnvSettings
    from graven.model.digest import Digest
    from graven.model.manifest import TreeManifest

_set = object.__setattr__


class DeployOptions(Frozen):
    """How to deploy: the operator's side of every decision."""

    __slots__ = ("override", "policy_file", "reason", "root", "wait")
    _fields = ("root", "policy_file", "wait", "reason", "override")
    root: str | None  # absolute deploy root for relative [env] paths (GRAVEN_DEPLOY_ROOT, --root)
    policy_file: Path | None  # a trust policy file instead of GRAVEN_HOME/policy.toml (--policy)
    wait: bool  # queue behind another deployer instead of failing at once
    reason: str | None
    override: bool  # --override-policy: bypass `requires` (never hashes, signatures, rejection)

    def __init__(
        self,
        root: str | None = None,
        policy_file: Path | None = None,
        wait: bool = False,
        reason: str | None = None,
        override: bool = False,
    ) -> None:
        _set(self, "root", root)
        _set(self, "policy_file", policy_file)
        _set(self, "wait", wait)
        _set(self, "reason", reason)
        _set(self, "override", override)


class Target(Frozen):
    """An artifact checked for one environment: everything its deployment reads of it."""

    __slots__ = ("commit", "digest", "keyid", "manifest", "name", "pipeline_digest", "settings", "untested")
    _fields = ("digest", "name", "commit", "manifest", "settings", "keyid", "pipeline_digest", "untested")
    digest: Digest
    name: str
    commit: str | None
    manifest: TreeManifest
    settings: EnvSettings
    keyid: str
    pipeline_digest: str
    # required environments where the digest went healthy, but never with this graven.toml: taken
    # only under --override-policy (graven.service.deploy_verify.tested_target), which bypasses them
    untested: tuple[str, ...]

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        digest: Digest,
        name: str,
        commit: str | None,
        manifest: TreeManifest,
        settings: EnvSettings,
        keyid: str,
        pipeline_digest: str,
        untested: tuple[str, ...] = (),
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "name", name)
        _set(self, "commit", commit)
        _set(self, "manifest", manifest)
        _set(self, "settings", settings)
        _set(self, "keyid", keyid)
        _set(self, "pipeline_digest", pipeline_digest)
        _set(self, "untested", untested)

    def with_untested(self, untested: tuple[str, ...]) -> Target:
        """The same target, its graven.toml untested in ``untested``."""
        values = {name: getattr(self, name) for name in self._fields}
        return Target(**(values | {"untested": untested}))
