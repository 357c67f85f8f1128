"""``[env.NAME]`` of an artifact's graven.toml, resolved for one deployment. Pure: the caller passes the
operator's deploy root in; nothing here reads the environment or the disk."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from graven.core.names import ENV_NAME_PATTERN
from graven.core.record import Frozen
from graven.errors import ConfigError, InputError, NotFoundError
from graven.model.manifest import SymlinkEntry, TreeEntry, TreeManifest
from graven.model.pipeline import EnvSection

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "ENV_NAME",
    "LIBRARY_ROOT_HINT",
    "DeployRootError",
    "EnvMovedError",
    "EnvSettings",
    "RootHintError",
    "check_config_path",
    "check_env_name",
    "check_environments",
    "config_files",
    "resolve_env",
]

ENV_NAME = re.compile(ENV_NAME_PATTERN)

LIBRARY_ROOT_HINT = "pass DeployOptions(root=DIR)"
"""How a library caller gives the deploy root, said in :class:`RootHintError` messages (the command line
says it in its own words: :meth:`RootHintError.with_hint`)."""


class RootHintError(InputError):
    """An error whose message says how to give the operator's deploy root. The library reads no
    ``GRAVEN_DEPLOY_ROOT`` and has no ``--root``: its message says ``hint`` (by default
    :data:`LIBRARY_ROOT_HINT`); a caller with other words for it (the CLI: ``--root``,
    ``GRAVEN_DEPLOY_ROOT``) raises :meth:`with_hint` instead. The message is written once, here."""

    hint: str

    def with_hint(self, hint: str) -> RootHintError:
        """The same error, saying ``hint`` (a verb phrase: ``pass --root DIR``) for how to give the
        deploy root."""
        raise NotImplementedError


class DeployRootError(RootHintError):
    """A relative ``[env.NAME] path`` and no deploy root to resolve it against (exit 2)."""

    def __init__(self, env: str, path: str, hint: str = LIBRARY_ROOT_HINT) -> None:
        super().__init__(f"[env.{env}] path {path!r} is relative: {hint} to say where it lives")
        self.env = env
        self.path = path
        self.hint = hint

    def with_hint(self, hint: str) -> DeployRootError:
        """The same error, saying ``hint`` for how to give the deploy root."""
        return DeployRootError(self.env, self.path, hint)


class EnvMovedError(RootHintError, ConfigError):
    """An environment live at one path that the artifact's graven.toml, with the deploy root given,
    puts at another (exit 2): the root differs from the one it was deployed with, or the graven.toml
    moved it."""

    def __init__(self, env: str, live: str, path: str, hint: str = LIBRARY_ROOT_HINT) -> None:
        super().__init__(
            f"environment {env} is live at {live}, but this artifact's graven.toml (with the deploy root "
            f"given) puts it at {path}; deploy with the root it went live with ({hint}), or give the "
            "new location another environment name"
        )
        self.env = env
        self.live = live
        self.path = path
        self.hint = hint

    def with_hint(self, hint: str) -> EnvMovedError:
        """The same error, saying ``hint`` for how to give the deploy root."""
        return EnvMovedError(self.env, self.live, self.path, hint)


def check_env_name(name: str) -> str:
    """Refuse an environment name that is not 1-64 lowercase letters, digits, '.', '_', '-'."""
    if not ENV_NAME.fullmatch(name):
        raise InputError(
            f"invalid environment name {name!r}: use 1 to 64 lowercase letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


class EnvSettings(Frozen):
    """One environment's settings from the artifact being deployed, with its path resolved."""

    __slots__ = (
        "activate",
        "activate_timeout",
        "config",
        "health",
        "health_interval",
        "health_retries",
        "health_timeout",
        "keep",
        "name",
        "path",
        "requires",
    )
    _fields = (
        "name",
        "path",
        "config",
        "activate",
        "activate_timeout",
        "health",
        "health_retries",
        "health_interval",
        "health_timeout",
        "keep",
        "requires",
    )
    name: str
    path: str  # absolute
    config: str | None
    activate: str | None
    activate_timeout: float
    health: str | None
    health_retries: int
    health_interval: float
    health_timeout: float
    keep: int
    requires: tuple[str, ...]

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        name: str,
        path: str,
        config: str | None,
        activate: str | None,
        activate_timeout: float,
        health: str | None,
        health_retries: int,
        health_interval: float,
        health_timeout: float,
        keep: int,
        requires: tuple[str, ...],
    ) -> None:
        _set(self, "name", name)
        _set(self, "path", path)
        _set(self, "config", config)
        _set(self, "activate", activate)
        _set(self, "activate_timeout", activate_timeout)
        _set(self, "health", health)
        _set(self, "health_retries", health_retries)
        _set(self, "health_interval", health_interval)
        _set(self, "health_timeout", health_timeout)
        _set(self, "keep", keep)
        _set(self, "requires", requires)

    def with_requires(self, requires: tuple[str, ...]) -> EnvSettings:
        """The same settings, requiring ``requires``."""
        values = {name: getattr(self, name) for name in self._fields}
        return EnvSettings(**(values | {"requires": requires}))

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "name": self.name,
            "path": self.path,
            "config": self.config,
            "activate": self.activate,
            "activate_timeout": self.activate_timeout,
            "health": self.health,
            "health_retries": self.health_retries,
            "health_interval": self.health_interval,
            "health_timeout": self.health_timeout,
            "keep": self.keep,
            "requires": list(self.requires),
        }


def check_environments(envs: Mapping[str, EnvSection], *, source: str) -> None:
    """Refuse bad names, ``requires`` naming unknown environments or itself, cycles, and two
    environments sharing a directory."""
    for name in envs:  # every name first: a requires error lists them all
        try:
            check_env_name(name)
        except InputError as exc:
            # the name as the error quotes it (repr): a line break in it cut the one line shown
            raise ConfigError(f"{source}: [env] {exc}") from None
    for name, section in envs.items():
        for required in section.requires:
            if required == name:
                raise ConfigError(f"{source}: [env.{name}] requires itself")
            if required not in envs:
                known = ", ".join(sorted(envs))
                raise ConfigError(
                    f"{source}: [env.{name}] requires {required!r}, which is not defined (known: {known})"
                )
    # two environments in one directory would destroy each other's releases (retention, current);
    # one inside the other is fine unless it is inside what graven keeps there
    paths = sorted((PurePosixPath(section.path.rstrip("/") or "/"), name) for name, section in envs.items())
    # the paths as a tree of their segments, each walked once from the top (parents come first in this
    # order): never each path against each of its parents, a new path as long as the part above it
    # each (quadratic in its depth: a minute for a graven.toml with a path of 100,000 segments)
    top = _Dir()
    for path, name in paths:
        node = top
        above: list[tuple[str, str]] = []  # the environments above this path: (the segment below, name)
        for part in path.parts:
            if node.env is not None:
                above.append((part, node.env))
            child = node.below.get(part)
            if child is None:
                child = node.below[part] = _Dir()
            node = child
        if node.env is None:
            node.env = name
        if node.env != name:
            raise ConfigError(
                f"{source}: [env.{name}] path {str(path)!r} is the path of [env.{node.env}]; every "
                "environment needs a directory of its own"
            )
        for part, outer in reversed(above):  # the nearest first, as path.parents gives them
            if part in GRAVEN_NAMES:  # as clashes_with_layout(path, outer's path) says
                raise ConfigError(
                    f"{source}: [env.{name}] path {str(path)!r} is inside the files graven keeps in the "
                    f"path of [env.{outer}]; every environment needs a directory of its own"
                )
    _check_no_cycle(envs, source)


class _Dir:
    """A directory named in some environment's path: the environment there (the first) and below."""

    __slots__ = ("below", "env")

    def __init__(self) -> None:
        self.below: dict[str, _Dir] = {}
        self.env: str | None = None


def _check_no_cycle(envs: Mapping[str, EnvSection], source: str) -> None:
    """A cycle of ``requires`` would make every environment on it undeployable. Depth first, with a
    stack of its own (a chain of 1,000 environments must not exhaust Python's recursion)."""
    done: set[str] = set()
    for start in sorted(envs):
        if start in done:
            continue
        trail = [start]
        on_trail = {start}
        stack = [iter(envs[start].requires)]
        while stack:
            required = next(stack[-1], None)
            if required is None:
                stack.pop()
                done.add(trail[-1])
                on_trail.discard(trail.pop())
                continue
            if required in done:
                continue
            if required in on_trail:
                cycle = " -> ".join((*trail[trail.index(required) :], required))
                raise ConfigError(f"{source}: environments require each other in a cycle: {cycle}")
            trail.append(required)
            on_trail.add(required)
            stack.append(iter(envs[required].requires))


GRAVEN_NAMES = frozenset({"releases", ".graven", "current", "config"})  # what graven keeps in PATH


def clashes_with_layout(inner: PurePosixPath, outer: PurePosixPath) -> bool:
    """Whether ``inner`` lies in what graven keeps inside ``outer`` (``releases/``, ``.graven/``,
    ``current``, ``config``): an environment there would be deleted or replaced by ``outer``'s."""
    if outer not in inner.parents:
        return False
    return inner.relative_to(outer).parts[0] in GRAVEN_NAMES


def resolve_env(envs: Mapping[str, EnvSection], name: str, *, root: str | None, source: str) -> EnvSettings:
    """The settings of environment ``name``; a relative ``path`` is resolved against ``root``."""
    check_env_name(name)
    check_environments(envs, source=source)
    section = envs.get(name)
    if section is None:
        known = ", ".join(sorted(envs)) or "none"
        raise NotFoundError(
            f"environment {name!r} is not defined in {source} (defined: {known}); add an [env.{name}] "
            "section, commit and build"
        )
    raw = section.path.rstrip("/") or "/"
    if raw.startswith("/"):
        path = raw
    else:
        if not root:
            raise DeployRootError(name, raw)
        if not root.startswith("/"):
            raise InputError(f"the deploy root {root!r} must be an absolute path")
        if not root.isascii():
            _check_utf8_root(root)
        path = str(PurePosixPath(root) / raw)
    return EnvSettings(
        name=name,
        path=path,
        config=section.config.rstrip("/") if section.config else None,
        activate=section.activate,
        activate_timeout=section.activate_timeout,
        health=section.health,
        health_retries=section.health_retries,
        health_interval=section.health_interval,
        health_timeout=section.health_timeout,
        keep=section.keep,
        requires=tuple(section.requires),
    )


def _check_utf8_root(root: str) -> None:
    """Refuse a deploy root whose name is not UTF-8 (``--root`` or GRAVEN_DEPLOY_ROOT holding such a
    byte, a surrogate escape here): the environment's path is recorded in the database and the audit
    log, which hold UTF-8 text, and the deployment failed there with a traceback."""
    try:
        root.encode("utf-8")
    except UnicodeEncodeError:
        from graven.core.paths import display_path

        raise InputError(
            f"the deploy root {display_path(root)} is not valid UTF-8; graven records an environment's "
            "path in its database and audit log: give a deploy root whose name is UTF-8"
        ) from None


def config_files(manifest: TreeManifest, config: str) -> dict[str, str]:
    """The files of ``config`` (a file, or a directory and everything below it): path -> sha256."""
    prefix = config + "/"
    found: dict[str, str] = {}
    for entry in manifest.files():
        if entry.path == config or entry.path.startswith(prefix):
            found[entry.path] = entry.sha256
    return found


def check_config_path(manifest: TreeManifest, settings: EnvSettings) -> None:
    """Refuse a ``config`` that names nothing in the artifact."""
    if settings.config is None:
        return
    config = settings.config
    entries = manifest.by_path()
    if isinstance(entries.get(config), SymlinkEntry):
        if not _leads_somewhere(entries, config):
            raise ConfigError(
                f"[env.{settings.name}] config {config!r} is a symlink that leads to nothing in the "
                "artifact; name the file itself or fix the link, commit and build"
            )
        return
    if config in entries or config_files(manifest, config):
        return
    prefix = config + "/"
    if any(path.startswith(prefix) for path in entries):
        return
    raise ConfigError(
        f"[env.{settings.name}] config {config!r} is not a file or directory of the artifact; fix "
        "graven.toml, commit and build"
    )


def _leads_somewhere(entries: Mapping[str, TreeEntry], path: str) -> bool:
    """Whether ``path``, followed through the artifact's symlinks as the kernel would (each link's
    target relative to its directory), ends at a file or directory of the artifact."""
    from graven.core.paths import MAX_LINK_HOPS

    queue = deque(path.split("/"))
    stack: list[str] = []  # the names from the release directory down
    hops = 0
    while queue:
        name = queue.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if not stack:
                return False  # out of the release (the manifest refuses such links)
            stack.pop()
            continue
        stack.append(name)
        entry = entries.get("/".join(stack))
        if isinstance(entry, SymlinkEntry):
            hops += 1
            if hops > MAX_LINK_HOPS or entry.target.startswith("/"):
                return False
            stack.pop()
            queue.extendleft(reversed(entry.target.split("/")))
    if not stack:
        return True  # the release directory itself
    found = "/".join(stack)
    if found in entries:
        return True
    prefix = found + "/"
    return any(other.startswith(prefix) for other in entries)
