"""The pipeline definition, ``graven.toml`` at the root of the commit being built.

Parsed from bytes (never from the working tree) and validated strictly: unknown keys are refused by
name, and every error names the file and the field.
"""

from __future__ import annotations

import re
import tomllib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from graven.core.paths import check_path
from graven.errors import ConfigError, UnsafeInputError

__all__ = ["PIPELINE_FILE", "ArtifactSection", "BuildSection", "EnvSection", "Pipeline", "parse_pipeline"]

PIPELINE_FILE = "graven.toml"

ArtifactName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")]
Pattern = Annotated[str, StringConstraints(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ArtifactSection(_Strict):
    """``[artifact]``: what the artifact is called and which files it holds."""

    name: ArtifactName
    include: list[Pattern] = Field(default_factory=lambda: ["**"])
    exclude: list[Pattern] = Field(default_factory=list)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_+.-]{1,255}|/[A-Za-z0-9_+./-]{1,4095}")
# Set by graven inside every build; [build] env cannot pass them through from the host.
_PINNED_ENV = ("PATH", "HOME", "TMPDIR", "TZ", "LC_ALL", "LANG", "SOURCE_DATE_EPOCH", "PYTHONHASHSEED")


def _relative_paths(values: list[str]) -> list[str]:
    for value in values:
        try:
            check_path(value.rstrip("/"))
        except UnsafeInputError as exc:
            raise PydanticCustomError("graven_path", "{problem}", {"problem": str(exc)}) from None
    return values


class FetchSection(_Strict):
    """``[build.fetch]``: steps with network access that may only bring in files locked by hash."""

    steps: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)
    lockfiles: list[Pattern] = Field(min_length=1)
    outputs: list[Pattern] = Field(min_length=1)

    @field_validator("lockfiles", "outputs")
    @classmethod
    def _paths(cls, values: list[str]) -> list[str]:
        return _relative_paths(values)


class BuildSection(_Strict):
    """``[build]``: shell steps run in a clean copy of the commit, and the paths they produce."""

    steps: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    outputs: list[Pattern] = Field(default_factory=list)
    timeout: Annotated[int, Field(gt=0)] = 3600
    sandbox: Literal["bubblewrap", "none"] = "bubblewrap"
    env: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    fetch: FetchSection | None = None

    @field_validator("env")
    @classmethod
    def _env_names(cls, values: list[str]) -> list[str]:
        for name in values:
            if not _ENV_NAME.fullmatch(name):
                raise PydanticCustomError(
                    "graven_env", "{name} is not an environment variable name", {"name": name}
                )
            if name in _PINNED_ENV:
                raise PydanticCustomError(
                    "graven_env", "{name} is always set by graven, never passed through", {"name": name}
                )
        return values

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, values: list[str]) -> list[str]:
        for name in values:
            if not _TOOL_NAME.fullmatch(name) or "/." in name:
                raise PydanticCustomError(
                    "graven_tool",
                    "{name} is not a program name or an absolute path to one",
                    {"name": name},
                )
        return values

    @model_validator(mode="after")
    def _needs_steps(self) -> BuildSection:
        if not self.steps:
            for key, value in (("tools", self.tools), ("fetch", self.fetch), ("env", self.env)):
                if value:
                    raise PydanticCustomError("graven_steps", "{key} needs steps as well", {"key": key})
        return self


class EnvSection(_Strict):
    """``[env.NAME]``: where and how the artifact is deployed (docs/formats/environments-v1.md).

    ``path`` is absolute, or relative to the operator's deploy root (``GRAVEN_DEPLOY_ROOT``, ``--root``);
    ``config`` is a file or directory inside the artifact; ``activate`` and ``health`` are shell commands
    run on the deploying machine after the switch.
    """

    path: Annotated[str, StringConstraints(min_length=1)]
    config: Pattern | None = None
    activate: Annotated[str, StringConstraints(min_length=1)] | None = None
    activate_timeout: Annotated[float, Field(gt=0)] = 60.0
    health: Annotated[str, StringConstraints(min_length=1)] | None = None
    health_retries: Annotated[int, Field(ge=0, le=1000)] = 2
    health_interval: Annotated[float, Field(ge=0)] = 1.0
    health_timeout: Annotated[float, Field(gt=0)] = 10.0
    keep: Annotated[int, Field(ge=1)] = 5
    requires: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    # drift detection leaves these paths of the release alone (globs; docs/formats/drift-v1.md)
    ignore: list[Pattern] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _deploy_path(cls, value: str) -> str:
        try:
            check_path(value.rstrip("/").removeprefix("/"))
        except UnsafeInputError:
            raise PydanticCustomError(
                "graven_path",
                "'{value}' is not a clean path (no '.', '..' or empty segments, no control characters)",
                {"value": value},
            ) from None
        return value

    @field_validator("config")
    @classmethod
    def _config_path(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_path(value.rstrip("/"))
            except UnsafeInputError as exc:
                raise PydanticCustomError("graven_path", "{problem}", {"problem": str(exc)}) from None
        return value


class Pipeline(_Strict):
    """The whole ``graven.toml``."""

    artifact: ArtifactSection
    build: BuildSection = Field(default_factory=BuildSection)
    env: dict[str, EnvSection] = Field(default_factory=dict)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if not parts:
        return ""
    head = f"[{parts[0]}]"
    rest = ".".join(parts[1:])
    return f"{head} {rest}".strip()


def _explain(error: dict[str, Any]) -> str:
    kind = error["type"]
    loc = _location(tuple(error["loc"]))
    if kind == "extra_forbidden":
        return f"unknown key {loc}; remove it or check its spelling"
    if kind == "missing":
        return f"{loc} is required"
    if kind in ("list_type", "string_type", "int_type"):
        wanted = {"list_type": "a list", "string_type": "a string", "int_type": "an integer"}[kind]
        return f"{loc} must be {wanted}"
    if kind == "string_too_short":
        return f"{loc} must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{loc} = {error['input']!r} is invalid: use lowercase letters, digits, '.', '_', '-'"
    return f"{loc}: {error['msg']}"


def parse_pipeline(data: bytes, *, source: str = PIPELINE_FILE) -> Pipeline:
    """Parse and validate ``graven.toml`` bytes; errors name ``source`` and the field."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        pipeline = Pipeline.model_validate(doc)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        raise ConfigError(f"{source}: {_explain(dict(first))}") from None
    if pipeline.build.steps and not pipeline.build.outputs:
        raise ConfigError(f"{source}: [build] outputs is required when [build] steps are given")
    for output in pipeline.build.outputs:
        try:
            check_path(output.rstrip("/"))
        except UnsafeInputError as exc:
            raise ConfigError(f"{source}: [build] outputs: {exc}") from None
    return pipeline


STARTER = """\
# graven.toml: the pipeline definition. graven reads it from the commit being built, never from the
# working tree, so a build always follows the pipeline that was committed with the code.

[artifact]
name = "{name}"                # lowercase letters, digits, '.', '_', '-'
# include = ["app/**", "config/**"]   # default: every tracked file
# exclude = ["**/*.md"]

# [build]                       # optional: steps run in a clean copy of the commit
# steps = ["python3 -m compileall -q -d app app"]
# outputs = ["app/", "config/"] # the artifact is these paths after the steps ran
"""
