"""The pipeline definition, ``graven.toml`` at the root of the commit being built.

Parsed from bytes (never from the working tree) and validated strictly: unknown keys are refused by
name, and every error names the file and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

from graven.core.globs import GlobError, check_glob
from graven.core.paths import check_path, display_path
from graven.core.record import Frozen
from graven.core.tomltext import TomlError, key_line
from graven.core.tomltext import loads as toml_loads
from graven.errors import ConfigError, UnsafeInputError

__all__ = [
    "ARTIFACT_NAME",
    "MAX_BUILD_TIMEOUT",
    "MAX_DURATION",
    "MAX_RETRIES",
    "PIPELINE_FILE",
    "ArtifactSection",
    "BuildSection",
    "EnvSection",
    "Pipeline",
    "parse_pipeline",
    "parse_stored_pipeline",
]

PIPELINE_FILE = "graven.toml"

# Upper bounds: a larger value is a mistake, and an unbounded one (1e300, inf) overflows the clocks
# and timers it is later added to.
MAX_DURATION = 86400.0  # seconds, for [env.*] activate_timeout, health_interval, health_timeout: a day
MAX_BUILD_TIMEOUT = 7 * 86400  # seconds per [build] step: a week
MAX_RETRIES = 1000  # [env.*] health_retries

# The file is small and its schema fixed, so it is checked by hand: strictly (no coercion: a string is
# never read as a number, nor a number as a bool), every unknown key refused by name, every error
# naming the field as ``[section] sub.key``. (pydantic did this before; importing it and building the
# models cost ~65 ms, a fifth of every command's start-up.)

ARTIFACT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # graven init derives names that match it
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"  # compiled when [build] env names one (start-up)
_TOOL_NAME = r"[A-Za-z0-9_+.-]{1,255}|/[A-Za-z0-9_+./-]{1,4095}"  # likewise for [build] tools
# Set by graven inside every build; [build] env cannot pass them through from the host.
# What libpq reads besides GRAVEN_DB_URL: the password of graven's own database connection.
_DATABASE_SECRETS = frozenset({"PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE"})
_PINNED_ENV = ("PATH", "HOME", "TMPDIR", "TZ", "LC_ALL", "LANG", "SOURCE_DATE_EPOCH", "PYTHONHASHSEED")


# The sections are frozen values written by hand (graven.core.record: @dataclass costs start-up); their
# fields, in order, are also the keys graven.toml accepts (_KNOWN). A list field left out gets a new list.
_set = object.__setattr__


class ArtifactSection(Frozen):
    """``[artifact]``: what the artifact is called and which files it holds."""

    __slots__ = ("exclude", "include", "name")
    _fields = ("name", "include", "exclude")
    name: str
    include: list[str]
    exclude: list[str]

    def __init__(self, name: str, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        _set(self, "name", name)
        _set(self, "include", ["**"] if include is None else include)
        _set(self, "exclude", [] if exclude is None else exclude)


class FetchSection(Frozen):
    """``[build.fetch]``: steps with network access that may only bring in files locked by hash."""

    __slots__ = ("lockfiles", "outputs", "steps")
    _fields = ("steps", "lockfiles", "outputs")
    steps: list[str]
    lockfiles: list[str]
    outputs: list[str]

    def __init__(self, steps: list[str], lockfiles: list[str], outputs: list[str]) -> None:
        _set(self, "steps", steps)
        _set(self, "lockfiles", lockfiles)
        _set(self, "outputs", outputs)


class BuildSection(Frozen):
    """``[build]``: shell steps run in a clean copy of the commit, and the paths they produce."""

    __slots__ = ("env", "fetch", "outputs", "sandbox", "steps", "timeout", "tools")
    _fields = ("steps", "outputs", "timeout", "sandbox", "env", "tools", "fetch")
    steps: list[str]
    outputs: list[str]
    timeout: int
    sandbox: Literal["bubblewrap", "none"]
    env: list[str]
    tools: list[str]
    fetch: FetchSection | None

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        steps: list[str] | None = None,
        outputs: list[str] | None = None,
        timeout: int = 3600,
        sandbox: Literal["bubblewrap", "none"] = "bubblewrap",
        env: list[str] | None = None,
        tools: list[str] | None = None,
        fetch: FetchSection | None = None,
    ) -> None:
        _set(self, "steps", [] if steps is None else steps)
        _set(self, "outputs", [] if outputs is None else outputs)
        _set(self, "timeout", timeout)
        _set(self, "sandbox", sandbox)
        _set(self, "env", [] if env is None else env)
        _set(self, "tools", [] if tools is None else tools)
        _set(self, "fetch", fetch)


class EnvSection(Frozen):
    """``[env.NAME]``: where and how the artifact is deployed (docs/formats/environments-v1.md).

    ``path`` is absolute, or relative to the operator's deploy root (``GRAVEN_DEPLOY_ROOT``, ``--root``);
    ``config`` is a file or directory inside the artifact; ``activate`` and ``health`` are shell commands
    run on the deploying machine after the switch.
    """

    __slots__ = (
        "activate",
        "activate_timeout",
        "config",
        "health",
        "health_interval",
        "health_retries",
        "health_timeout",
        "ignore",
        "keep",
        "path",
        "requires",
    )
    _fields = (
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
        "ignore",
    )
    path: str
    config: str | None
    activate: str | None
    activate_timeout: float
    health: str | None
    health_retries: int
    health_interval: float
    health_timeout: float
    keep: int
    requires: list[str]
    # drift detection leaves these paths of the release alone (globs; docs/formats/drift-v1.md)
    ignore: list[str]

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        path: str,
        config: str | None = None,
        activate: str | None = None,
        activate_timeout: float = 60.0,
        health: str | None = None,
        health_retries: int = 2,
        health_interval: float = 1.0,
        health_timeout: float = 10.0,
        keep: int = 5,
        requires: list[str] | None = None,
        ignore: list[str] | None = None,
    ) -> None:
        _set(self, "path", path)
        _set(self, "config", config)
        _set(self, "activate", activate)
        _set(self, "activate_timeout", activate_timeout)
        _set(self, "health", health)
        _set(self, "health_retries", health_retries)
        _set(self, "health_interval", health_interval)
        _set(self, "health_timeout", health_timeout)
        _set(self, "keep", keep)
        _set(self, "requires", [] if requires is None else requires)
        _set(self, "ignore", [] if ignore is None else ignore)


class Pipeline(Frozen):
    """The whole ``graven.toml``."""

    __slots__ = ("artifact", "build", "env")
    _fields = ("artifact", "build", "env")
    artifact: ArtifactSection
    build: BuildSection
    env: dict[str, EnvSection]

    def __init__(
        self,
        artifact: ArtifactSection,
        build: BuildSection | None = None,
        env: dict[str, EnvSection] | None = None,
    ) -> None:
        _set(self, "artifact", artifact)
        _set(self, "build", BuildSection() if build is None else build)
        _set(self, "env", {} if env is None else env)


# -- checking --------------------------------------------------------------------------------------


class _InvalidError(Exception):
    """One problem, found at ``loc``; turned into a ConfigError naming the file."""

    def __init__(self, loc: tuple[str, ...], problem: str) -> None:
        super().__init__(problem)
        self.loc = loc
        self.problem = problem


def _where(loc: tuple[str, ...]) -> str:
    """``("env", "staging", "path")`` -> ``[env] staging.path``."""
    if not loc:
        return "graven.toml"
    return f"[{loc[0]}] {'.'.join(loc[1:])}".strip()


def _fail(loc: tuple[str, ...], text: str) -> _InvalidError:
    """``text`` with (its first) ``{at}`` standing for the field's name. Not str.format: the rest of
    the text may quote the user's values, braces and all."""
    return _InvalidError(loc, text.replace("{at}", _where(loc), 1))


def _unknown(table: dict[str, Any], known: tuple[str, ...], loc: tuple[str, ...]) -> None:
    for key, value in table.items():
        if key in known:
            continue
        if not loc and not isinstance(value, dict) and (home := _home_of(key)) is not None:
            raise _InvalidError(
                (key,),
                f"unknown key {key} above every table: {key} is a key of {home}; put it after that "
                "table's header",
            )
        raise _fail((*loc, key), "unknown key {at}" + _advice(key, value, known, loc))


def _advice(key: str, value: object, known: tuple[str, ...], loc: tuple[str, ...]) -> str:
    """What the writer of an unknown ``key`` most likely meant: a key of the same table spelt nearly
    so (did you mean), a key of another table (move it), an environment name with an unquoted dot;
    else the plain advice. Only on this error path: difflib costs start-up."""
    import difflib  # an error path: start-up does not pay for it

    if len(loc) == 2 and loc[0] == "env" and isinstance(value, dict):  # [env.prod.eu]
        return (
            f"; [env.{loc[1]}.{key}] is a table {key!r} inside [env.{loc[1]}]; an environment name with a "
            f'dot must be quoted: [env."{loc[1]}.{key}"]'
        )
    name = key.lower()
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    # a plural, or more than the key (environment, healthcheck): the longest key it starts with
    near = near or sorted((k for k in known if len(name) >= 3 and name.startswith(k)), key=len)[-1:]
    if not near and loc and (home := _home_of(key)) is not None:
        return f": {key} is a key of {home}; move it there"
    near = near or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0] if loc else f'[{near[0]}]'}?"
    return "; remove it or check its spelling"


def _home_of(key: str) -> str | None:
    """The table that has ``key`` (the first of them), as graven.toml writes it."""
    for table, fields in (
        ("[artifact]", ArtifactSection._fields),
        ("[build]", BuildSection._fields),
        ("[build.fetch]", FetchSection._fields),
        ("an [env.NAME] section", EnvSection._fields),
    ):
        if key in fields:
            return table
    return None


def _kind(value: object) -> str:
    """What TOML value ``value`` is, for an error: ``a string``, ``a list``, ..."""
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in ((str, "a string"), (int, "an integer"), (float, "a float"), (list, "a list")):
        if isinstance(value, kind):
            return name
    return "a table" if isinstance(value, dict) else "a date or time"


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (a JSON string is one). Only on an error path: not at start-up."""
    import json

    return json.dumps(value, ensure_ascii=False)


def _wrong(loc: tuple[str, ...], want: str, value: object, written: str | None = None) -> _InvalidError:
    """``{at} must be WANT, not KIND``, and how to write it when that is plain (``written``, the value
    as TOML: only for a key, not for an item of a list)."""
    hint = f": write {loc[-1]} = {written}" if written is not None and not loc[-1].isdigit() else ""
    return _fail(loc, f"{{at}} must be {want}, not {_kind(value)}{hint}")


def _table(value: object, loc: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        hint = ""
        if loc == ("env",) and isinstance(value, list):
            hint = ": write [env.NAME], not [[env]]"
        elif len(loc) == 2 and loc[0] == "env" and isinstance(value, str):
            hint = f": write [env.{loc[1]}] with path = {_toml_string(value)}"
        elif loc == ("artifact",) and isinstance(value, str):
            hint = f": write [artifact] with name = {_toml_string(value)}"
        raise _fail(loc, f"{{at}} must be a table, not {_kind(value)}{hint}")
    return cast(dict[str, Any], value)


def _string(value: object, loc: tuple[str, ...], *, empty: bool = False) -> str:
    if not isinstance(value, str):
        written = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            written = _toml_string(str(value))
        elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            written = _toml_string(value[0])
        raise _wrong(loc, "a string", value, written)
    if not value and not empty:
        raise _fail(loc, "{at} must not be empty")
    if "\x00" in value:  # no command, path, glob or name can hold one (exec and open refuse it)
        raise _fail(loc, "{at} holds a NUL character (\\u0000); remove it")
    return value


def _strings(value: object, loc: tuple[str, ...], *, min_items: int = 0, empty: bool = False) -> list[str]:
    if not isinstance(value, list):
        raise _wrong(loc, "a list", value, f"[{_toml_string(value)}]" if isinstance(value, str) else None)
    if len(value) < min_items:
        raise _fail(loc, "{at} must not be empty")
    return [_string(item, (*loc, str(i)), empty=empty) for i, item in enumerate(value)]


def _integer(value: object, loc: tuple[str, ...], *, minimum: int, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        quoted = isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,30}\s*", value) is not None
        whole = isinstance(value, float) and value.is_integer()
        written = str(int(cast(str | float, value))) if quoted or whole else None
        raise _wrong(loc, "an integer", value, written)
    allowed = f" ({minimum} to {maximum})" if maximum is not None else ""
    if value < minimum:
        raise _fail(loc, f"{{at}} must be at least {minimum}{allowed}")
    if maximum is not None and value > maximum:
        raise _fail(loc, f"{{at}} must be at most {maximum}{allowed}")
    return value


# "10", "10s", "1.5 seconds": a duration written as a string
_SECONDS = r"\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*(?:s|secs?|seconds?)?\s*"


def _number(value: object, loc: tuple[str, ...], *, positive: bool, maximum: float = MAX_DURATION) -> float:
    """A duration in seconds: a number (integer or float) in ``(0, maximum]``, or ``[0, maximum]``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        seconds = re.fullmatch(_SECONDS, value) if isinstance(value, str) else None
        raise _wrong(loc, "a number of seconds", value, seconds[1] if seconds else None)
    limit = f"{maximum:g}"
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise _fail(loc, f"{{at}} is too large: at most {limit} seconds") from None
    if math.isnan(number):
        raise _fail(loc, f"{{at}} must be a number of seconds, not nan: 0 to {limit}")
    if number < 0 or (positive and number == 0):
        if positive:
            raise _fail(loc, f"{{at}} must be greater than 0 and at most {limit} seconds")
        raise _fail(loc, f"{{at}} must not be negative: 0 to {limit} seconds")
    if number > maximum:  # also inf
        raise _fail(loc, f"{{at}} = {number:g} is too large: at most {limit} seconds")
    return number


def _globs(value: object, loc: tuple[str, ...]) -> list[str]:
    """A list of globs (graven.core.globs), each compiled here: an invalid one is refused by index."""
    patterns = _strings(value, loc)
    for i, pattern in enumerate(patterns):
        try:
            check_glob(pattern)
        except GlobError as exc:
            raise _fail((*loc, str(i)), f"{{at}} = {pattern!r} is not a valid glob: {exc}") from None
    return patterns


def _paths(values: list[str], loc: tuple[str, ...]) -> list[str]:
    for value in values:
        try:
            check_path(value.rstrip("/"))
        except UnsafeInputError as exc:
            raise _fail(loc, f"{{at}}: {exc}") from None
    return values


_T = TypeVar("_T")


def _get(
    table: dict[str, Any], key: str, loc: tuple[str, ...], check: Callable[[object, tuple[str, ...]], _T]
) -> _T | None:
    """``check`` of ``table[key]``, or None when the key is absent."""
    if key not in table:
        return None
    return check(table[key], (*loc, key))


def _artifact(value: object) -> ArtifactSection:
    loc = ("artifact",)
    table = _table(value, loc)
    if "name" not in table:
        raise _fail((*loc, "name"), "{at} is required")
    name = _string(table["name"], (*loc, "name"))
    if not ARTIFACT_NAME.fullmatch(name):
        raise _fail(
            (*loc, "name"),
            f"{{at}} = {name!r} is invalid: use 1 to 128 lowercase letters, digits, '.', '_', '-', "
            "starting with a letter or digit",
        )
    include = _get(table, "include", loc, _globs)
    if include == []:
        raise _fail((*loc, "include"), "{at} must not be empty: leave it out to include every tracked file")
    exclude = _get(table, "exclude", loc, _globs)
    return ArtifactSection(
        name=name,
        include=include if include is not None else ["**"],
        exclude=exclude if exclude is not None else [],
    )


def _fetch(value: object, loc: tuple[str, ...]) -> FetchSection:
    table = _table(value, loc)
    lists: dict[str, list[str]] = {}
    for key in ("steps", "lockfiles", "outputs"):
        if key not in table:
            raise _fail((*loc, key), "{at} is required")
        lists[key] = _strings(table[key], (*loc, key), min_items=1)
    return FetchSection(
        steps=lists["steps"],
        lockfiles=_paths(lists["lockfiles"], (*loc, "lockfiles")),
        outputs=_paths(lists["outputs"], (*loc, "outputs")),
    )


def _build(value: object) -> BuildSection:
    loc = ("build",)
    table = _table(value, loc)
    steps = _get(table, "steps", loc, _strings) or []
    outputs = _get(table, "outputs", loc, _strings) or []
    timeout = _get(table, "timeout", loc, lambda v, at: _integer(v, at, minimum=1, maximum=MAX_BUILD_TIMEOUT))
    sandbox = _get(table, "sandbox", loc, _string)
    if sandbox is not None and sandbox not in ("bubblewrap", "none"):
        raise _fail((*loc, "sandbox"), "{at} must be 'bubblewrap' or 'none'")
    env = _get(table, "env", loc, _strings) or []
    for name in env:
        if not re.fullmatch(_ENV_NAME, name):
            raise _fail((*loc, "env"), f"{{at}}: {name} is not an environment variable name")
        if name in _PINNED_ENV:
            raise _fail((*loc, "env"), f"{{at}}: {name} is always set by graven, never passed through")
        if name.startswith("GRAVEN_") or name in _DATABASE_SECRETS:  # the operator's: never a step's
            raise _fail(
                (*loc, "env"),
                f"{{at}}: {name} is graven's own setting, never passed to a step; remove it from "
                "[build] env (or pass the value under another name) and commit",
            )
    tools = _get(table, "tools", loc, _strings) or []
    for name in tools:
        if not re.fullmatch(_TOOL_NAME, name) or "/." in name:
            raise _fail((*loc, "tools"), f"{{at}}: {name} is not a program name or an absolute path to one")
    fetch = _get(table, "fetch", loc, _fetch)
    if not steps:
        if "outputs" in table:
            raise _fail(
                (*loc, "outputs"),
                "{at} is given without steps: outputs are what the steps produce; remove it (to choose "
                "the files of a build without steps, use [artifact] include and exclude) or add steps",
            )
        for key, given in (("tools", tools), ("fetch", fetch), ("env", env)):
            if given:
                raise _fail(loc, f"{{at}}: {key} needs steps as well")
    return BuildSection(
        steps=steps,
        outputs=outputs,
        timeout=3600 if timeout is None else timeout,
        sandbox="none" if sandbox == "none" else "bubblewrap",
        env=env,
        tools=tools,
        fetch=fetch,
    )


def _env(name: str, value: object) -> EnvSection:
    loc = ("env", name)
    table = _table(value, loc)
    if "path" not in table:
        raise _fail((*loc, "path"), "{at} is required")
    path = _string(table["path"], (*loc, "path"))
    try:
        check_path(path.rstrip("/").removeprefix("/"))
    except UnsafeInputError:
        raise _fail(
            (*loc, "path"),
            f"{{at}}: '{path}' is not a clean path (no '.', '..' or empty segments, no control characters)",
        ) from None
    config = _get(table, "config", loc, _string)
    if config is not None:
        _paths([config], (*loc, "config"))
    defaults = EnvSection(path=path)

    def number(key: str, default: float, *, positive: bool) -> float:
        got = _get(table, key, loc, lambda v, at: _number(v, at, positive=positive))
        return default if got is None else got

    def integer(key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        got = _get(table, key, loc, lambda v, at: _integer(v, at, minimum=minimum, maximum=maximum))
        return default if got is None else got

    health_retries = integer("health_retries", defaults.health_retries, 0, MAX_RETRIES)
    return EnvSection(
        path=path,
        config=config,
        activate=_get(table, "activate", loc, _string),
        activate_timeout=number("activate_timeout", defaults.activate_timeout, positive=True),
        health=_get(table, "health", loc, _string),
        health_retries=health_retries,
        health_interval=number("health_interval", defaults.health_interval, positive=False),
        health_timeout=number("health_timeout", defaults.health_timeout, positive=True),
        keep=integer("keep", defaults.keep, 1),
        requires=_get(table, "requires", loc, _strings) or [],
        ignore=_get(table, "ignore", loc, _globs) or [],
    )


# The keys a section accepts: its fields, so that a new field is known without a second list.
_KNOWN = {
    "artifact": ArtifactSection._fields,
    "build": BuildSection._fields,
    "fetch": FetchSection._fields,
    "env": EnvSection._fields,
}
_TOP = Pipeline._fields


def _check_keys(doc: dict[str, Any]) -> None:
    """Refuse unknown keys first, wherever they are: a misspelt key explains most other errors."""
    _unknown(doc, _TOP, ())
    for section in ("artifact", "build"):
        table = doc.get(section)
        if isinstance(table, dict):
            _unknown(table, _KNOWN[section], (section,))
    build = doc.get("build")
    if isinstance(build, dict) and isinstance(build.get("fetch"), dict):
        _unknown(build["fetch"], _KNOWN["fetch"], ("build", "fetch"))
    envs = doc.get("env")
    if isinstance(envs, dict):
        for name, table in envs.items():
            if isinstance(table, dict):
                _unknown(table, _KNOWN["env"], ("env", name))


def _pipeline(doc: dict[str, Any]) -> Pipeline:
    _check_keys(doc)
    if "artifact" not in doc:
        raise _fail(("artifact",), "{at} is required")
    artifact = _artifact(doc["artifact"])
    build = _build(doc["build"]) if "build" in doc else BuildSection()
    envs = _table(doc.get("env", {}), ("env",))
    return Pipeline(artifact=artifact, build=build, env={name: _env(name, v) for name, v in envs.items()})


MAX_PIPELINE_BYTES = 256 << 10  # a pipeline travels in every export's header (import reads 1 MiB)


def parse_pipeline(data: bytes, *, source: str = PIPELINE_FILE, limit: bool = True) -> Pipeline:
    """Parse and validate ``graven.toml`` bytes; errors name ``source`` and the field. ``limit``:
    refuse one past :data:`MAX_PIPELINE_BYTES` (not when an artifact built before the limit is
    rebuilt to check it)."""
    if limit and len(data) > MAX_PIPELINE_BYTES:
        raise ConfigError(
            f"{source}: {len(data):,} bytes; a pipeline definition may have at most "
            f"{MAX_PIPELINE_BYTES:,} (it travels with every exported archive)"
        )
    text, doc = _toml(data, source)
    return _parse_doc(doc, source, text)


def parse_stored_pipeline(data: bytes, *, source: str = PIPELINE_FILE) -> Pipeline:
    """A graven.toml stored with a built artifact, read to deploy it.

    Checks added to graven after the artifact was built must not make it undeployable (a rollback to
    it is the emergency path): when the whole file no longer passes, its build-only parts (``[build]``,
    ``[artifact] include/exclude``, which the build already applied) are left out and the rest is
    read again, as strictly as ever."""
    text, doc = _toml(data, source)
    try:
        return _parse_doc(doc, source, text)
    except ConfigError:
        doc.pop("build", None)
        artifact = doc.get("artifact")
        if isinstance(artifact, dict):
            artifact.pop("include", None)
            artifact.pop("exclude", None)
        return _parse_doc(doc, source, text)


def _toml(data: bytes, source: str) -> tuple[str, dict[str, Any]]:
    """The text of ``data`` and the document it holds."""
    if data.startswith(b"\xef\xbb\xbf"):  # TOML has none; tomllib says only "Invalid statement"
        raise ConfigError(f"{source}: starts with a byte-order mark (BOM); save it as UTF-8 without one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid UTF-8") from None
    try:
        return text, toml_loads(text)
    except TomlError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _parse_doc(doc: dict[str, Any], source: str, text: str) -> Pipeline:
    try:
        pipeline = _pipeline(doc)
    except _InvalidError as exc:
        # one line, whatever the user's values hold (control characters are shown escaped); the line
        # of the key when the text shows it, as tomllib names the line of a syntax error
        line = key_line(text, exc.loc)
        at = f" (at line {line})" if line is not None else ""
        raise ConfigError(f"{source}: {display_path(exc.problem)}{at}") from None
    if pipeline.build.steps and not pipeline.build.outputs:
        raise ConfigError(f"{source}: [build] outputs is required when [build] steps are given")
    for output in pipeline.build.outputs:
        try:
            check_path(output.rstrip("/"))
        except UnsafeInputError as exc:
            raise ConfigError(f"{source}: [build] outputs: {display_path(str(exc))}") from None
    return pipeline


STARTER = """\
# graven.toml: the pipeline definition. graven reads it from the commit being built, never from the
# working tree, so a build always follows the pipeline that was committed with the code.
# Every section is described in graven's README; uncomment what you need, then commit.

[artifact]
name = "{name}"                # lowercase letters, digits, '.', '_', '-'
# include = ["app/**", "config/**"]   # default: every tracked file
# exclude = ["**/*.md"]

# [build]                       # optional: steps run in a clean copy of the commit, without network
# steps = ["python3 -m compileall -q -d app app"]
# outputs = ["app/", "config/"] # the artifact is these paths after the steps ran

# [build.fetch]                 # optional: runs first, the only steps with network; every file they
#                               # write below outputs must have its sha256 in a lockfile
# steps = ["pip download --require-hashes -r requirements.txt -d wheels/"]
# lockfiles = ["requirements.txt"]   # committed; every line needs --hash=sha256:... (pip hash FILE)
# outputs = ["wheels/"]         # then install them offline in [build] steps, e.g.
#   python3 -m pip install --no-index --find-links wheels/ --require-hashes -r requirements.txt
#   --no-compile --target site/    (--no-compile: pip's .pyc files would name a random directory)

# [env.staging]                 # where `graven deploy DIGEST staging` puts a release
# path = "/srv/{name}/staging"  # absolute, or relative to GRAVEN_DEPLOY_ROOT (or --root DIR)
# config = "config/staging.toml"      # a file of the artifact, exposed at PATH/config
# activate = "current/bin/restart"    # run in PATH after the switch; the release is PATH/current,
#                                     # so a script there must be committed executable
# health = "curl -fsS http://127.0.0.1:8000/health"   # a failure switches back to the previous release
"""
