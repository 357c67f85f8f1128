"""The pipeline definition, ``graven.toml`` at the root of the commit being built.

Parsed from bytes (never from the working tree) and validated strictly: unknown keys are refused by
name, and every error names the file and the field.
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from graven.core.paths import check_path
from graven.errors import ConfigError, UnsafeInputError

__all__ = ["PIPELINE_FILE", "ArtifactSection", "BuildSection", "Pipeline", "parse_pipeline"]

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


class BuildSection(_Strict):
    """``[build]``: shell steps run in a clean copy of the commit, and the paths they produce."""

    steps: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    outputs: list[Pattern] = Field(default_factory=list)
    timeout: Annotated[int, Field(gt=0)] = 3600


class Pipeline(_Strict):
    """The whole ``graven.toml``."""

    artifact: ArtifactSection
    build: BuildSection = Field(default_factory=BuildSection)


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
