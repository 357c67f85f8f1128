"""graven.toml parsing: defaults, strict types, and one clear error naming the field."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import ConfigError
from graven.model.pipeline import (
    _PINNED_ENV,
    ARTIFACT_NAME,
    MAX_BUILD_TIMEOUT,
    MAX_DURATION,
    MAX_RETRIES,
    ArtifactSection,
    BuildSection,
    EnvSection,
    FetchSection,
    Pipeline,
    parse_pipeline,
)

A = '[artifact]\nname = "a"\n'


def parse(text: str) -> Any:
    return parse_pipeline(text.encode(), source="graven.toml")


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith("graven.toml: ") and "\n" not in message
    return message


def test_minimal_file_gets_the_documented_defaults() -> None:
    pipeline = parse('[artifact]\nname = "shop"\n')
    assert pipeline.artifact.name == "shop"
    assert pipeline.artifact.include == ["**"] and pipeline.artifact.exclude == []
    assert pipeline.build == BuildSection()
    assert pipeline.build.timeout == 3600 and pipeline.build.sandbox == "bubblewrap"
    assert pipeline.env == {}


def test_full_file_parses_every_field() -> None:
    pipeline = parse(
        """
[artifact]
name = "shop.api_2"
include = ["app/**"]
exclude = ["**/*.md"]
[build]
steps = ["make"]
outputs = ["out/"]
timeout = 60
sandbox = "none"
env = ["CI"]
tools = ["make", "/usr/bin/cc"]
[build.fetch]
steps = ["pip download"]
lockfiles = ["requirements.txt"]
outputs = ["wheels/"]
[env.staging]
path = "/srv/shop"
config = "config/staging.toml"
activate = "true"
activate_timeout = 5
health = "curl -f localhost"
health_retries = 0
health_interval = 0
health_timeout = 2.5
keep = 2
requires = ["qa"]
ignore = ["var/**"]
"""
    )
    build = pipeline.build
    assert (build.steps, build.outputs, build.timeout, build.sandbox) == (["make"], ["out/"], 60, "none")
    assert build.env == ["CI"] and build.tools == ["make", "/usr/bin/cc"]
    assert build.fetch is not None and build.fetch.lockfiles == ["requirements.txt"]
    env = pipeline.env["staging"]
    assert env == EnvSection(
        path="/srv/shop",
        config="config/staging.toml",
        activate="true",
        activate_timeout=5.0,
        health="curl -f localhost",
        health_retries=0,
        health_interval=0.0,
        health_timeout=2.5,
        keep=2,
        requires=["qa"],
        ignore=["var/**"],
    )
    assert isinstance(env.activate_timeout, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "[artifact] is required"),
        ("[artifact]\n", "[artifact] name is required"),
        (
            '[artifact]\nname = "Shop"\n',
            "[artifact] name = 'Shop' is invalid: use 1 to 128 lowercase letters",
        ),
        ("[artifact]\nname = 1\n", "[artifact] name must be a string"),
        ('[artifact]\nname = ""\n', "[artifact] name must not be empty"),
        ('[artifact]\nname = "a"\ninclude = "x"\n', "[artifact] include must be a list"),
        ('[artifact]\nname = "a"\ninclude = [""]\n', "[artifact] include.0 must not be empty"),
        ('[artifact]\nname = "a"\nexclude = [1]\n', "[artifact] exclude.0 must be a string"),
        ('artifact = "a"\n', "[artifact] must be a table"),
        ('[artifact]\nname = "a"\ncolour = 1\n', "unknown key [artifact] colour; remove it"),
        ('[artifact]\nname = "a"\n[deploy]\nx = 1\n', "unknown key [deploy]"),
        ('[artifact]\nname = "a"\n[build]\ntimeout = "10"\n', "[build] timeout must be an integer"),
        ('[artifact]\nname = "a"\n[build]\ntimeout = true\n', "[build] timeout must be an integer"),
        ('[artifact]\nname = "a"\n[build]\ntimeout = 0\n', "[build] timeout must be at least 1"),
        ('[artifact]\nname = "a"\n[build]\nsandbox = "docker"\n', "[build] sandbox must be 'bubblewrap' or"),
        ('[artifact]\nname = "a"\n[build]\nsteps = ["x"]\n', "outputs is required when [build] steps"),
        ('[artifact]\nname = "a"\n[build]\nsteps = ["x"]\noutputs = ["../o"]\n', "[build] outputs:"),
        ('[artifact]\nname = "a"\n[build]\ntools = ["cc"]\n', "[build]: tools needs steps as well"),
        (
            '[artifact]\nname = "a"\n[build]\nsteps=["x"]\noutputs=["o"]\ntools=["a b"]\n',
            "a b is not a program",
        ),
        ('[artifact]\nname = "a"\n[build]\nsteps=["x"]\noutputs=["o"]\ntools=["/x/../y"]\n', "not a program"),
        ('[artifact]\nname = "a"\n[build.fetch]\nsteps = ["x"]\n', "[build] fetch.lockfiles is required"),
        (
            '[artifact]\nname = "a"\n[build]\nsteps=["x"]\noutputs=["o"]\nenv=["GRAVEN_DB_URL"]\n',
            "GRAVEN_DB_URL is graven's own setting, never passed to a step",
        ),
        (
            '[artifact]\nname = "a"\n[build]\nsteps=["x"]\noutputs=["o"]\nenv=["PGPASSWORD"]\n',
            "PGPASSWORD is graven's own setting, never passed to a step",
        ),
        (
            '[artifact]\nname = "a"\n[build]\nsteps=["x"]\noutputs=["o"]\n[build.fetch]\n'
            'steps=["f"]\nlockfiles=[]\noutputs=["w"]\n',
            "[build] fetch.lockfiles must not be empty",
        ),
        (
            '[artifact]\nname = "a"\n[build]\nsteps=["x"]\noutputs=["o"]\n[build.fetch]\n'
            'steps=["f"]\nlockfiles=["/etc/l"]\noutputs=["w"]\n',
            "[build] fetch.lockfiles: ",
        ),
        ('[artifact]\nname = "a"\n[build.fetch]\nsteps=["x"]\nhosts=1\n', "unknown key [build] fetch.hosts"),
        ('env = 1\n[artifact]\nname = "a"\n', "[env] must be a table"),
        ('[artifact]\nname = "a"\n[env]\nstaging = 1\n', "[env] staging must be a table"),
        ('[artifact]\nname = "a"\n[env.s]\npath = "x"\nkeep = 1.5\n', "[env] s.keep must be an integer"),
        (
            '[artifact]\nname = "a"\n[env.s]\npath = "x"\nhealth_timeout = 0\n',
            "s.health_timeout must be greater",
        ),
        ('[artifact]\nname = "a"\n[env.s]\npath = "x"\nhealth_interval = -1\n', "must not be negative"),
        ('[artifact]\nname = "a"\n[env.s]\npath = "x"\nhealth_interval = nan\n', "seconds, not nan"),
        ('\ufeff[artifact]\nname = "a"\n', "starts with a byte-order mark (BOM); save it as UTF-8 without"),
        ('[artifact]\nname = "a"\n[env.s]\npath = "x"\nhealth_retries = 1001\n', "at most 1000"),
        (
            '[artifact]\nname = "a"\n[env.s]\npath = "x"\nactivate = ""\n',
            "[env] s.activate must not be empty",
        ),
        ('[artifact]\nname = "a"\n[env.s]\npath = "x"\nactivate_timeout = "1"\n', "must be a number"),
        (A + '[env.s]\npath = "x"\nhealth_interval = 1' + "0" * 400 + "\n", "health_interval is too large"),
        # a NUL reached exec (a traceback at build or a "failed" health check recorded at deploy)
        (A + '[build]\nsteps = ["mkdir out\\u0000"]\noutputs = ["out/"]\n', "steps.0 holds a NUL character"),
        (A + '[env.s]\npath = "x"\nhealth = "true\\u0000x"\n', "health holds a NUL character"),
        (A + '[env.s]\npath = "x"\nactivate = "\\u0000"\n', "activate holds a NUL character"),
        ('[artifact]\nname = "a"\nexclude = ["x\\u0000"]\n', "exclude.0 holds a NUL character"),
    ],
)
def test_bad_files_are_refused_naming_the_field(text: str, message: str) -> None:
    assert message in refused(text)


def test_unknown_keys_are_named_before_any_other_problem() -> None:
    # the misspelt key explains the missing one: name it, not "name is required"
    message = refused('[artifact]\nnmae = "shop"\n[env.s]\npath = 1\n')
    assert "unknown key [artifact] nmae" in message


def test_invalid_utf8_and_toml_are_refused() -> None:
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        parse_pipeline(b'[artifact]\nname = "\xff"\n')
    assert "invalid TOML" in refused("[artifact\n")


_scalars = st.one_of(
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "name",
        "include",
        "exclude",
        "steps",
        "outputs",
        "timeout",
        "sandbox",
        "env",
        "tools",
        "fetch",
        "path",
        "config",
        "keep",
        "requires",
        "ignore",
        "health",
        "health_retries",
        "lockfiles",
        "x",
    ]
)
_sections = st.dictionaries(_keys, _values, max_size=6)
_documents = st.fixed_dictionaries(
    {},
    optional={
        "artifact": _sections,
        "build": _sections,
        "env": st.dictionaries(st.sampled_from(["staging", "prod"]), _sections, max_size=2),
        "extra": _values,
    },
)


@settings(max_examples=400, deadline=None)
@given(_documents)
def test_any_document_is_accepted_or_refused_with_one_config_error(doc: dict[str, Any]) -> None:
    import tomli_w

    data = tomli_w.dumps(doc).encode()
    assert tomllib.loads(data.decode()) == doc
    try:
        pipeline = parse_pipeline(data)
    except ConfigError as exc:
        assert str(exc).startswith("graven.toml: ") and "\n" not in str(exc)
        return
    # what was accepted is exactly what the document said, with defaults for the rest
    assert pipeline.artifact.name == doc["artifact"]["name"]
    assert pipeline.artifact.include == doc["artifact"].get("include", ["**"])
    assert pipeline.build.steps == doc.get("build", {}).get("steps", [])
    assert set(pipeline.env) == set(doc.get("env", {}))


# -- valid documents: every one is accepted, and read field by field --------------------------------

# any text but surrogates and NUL (refused in every string: no command, path or name can hold one)
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=10)
_segment = st.text("abz09_-.é ", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
_relpath = st.lists(_segment, min_size=1, max_size=3).map("/".join)
_dirpath = st.tuples(_relpath, st.sampled_from(["", "/"])).map("".join)  # "out" or "out/"
_glob = st.one_of(
    _relpath,
    _dirpath,
    _relpath.map(lambda p: f"{p}/**"),
    _segment.map(lambda s: f"**/*.{s}"),
    st.sampled_from(["*", "**", "[a-c]?", "[!x]*/**"]),
)
_positive = st.one_of(
    st.integers(1, int(MAX_DURATION)),
    st.floats(min_value=0, max_value=MAX_DURATION, exclude_min=True),
)
_not_negative = st.one_of(st.integers(0, int(MAX_DURATION)), st.floats(min_value=0, max_value=MAX_DURATION))
_tool = st.one_of(
    st.from_regex(r"[a-z0-9_+.-]{1,8}", fullmatch=True),
    st.from_regex(r"(/[a-z0-9_+-][a-z0-9_+.-]{0,5}){1,3}", fullmatch=True),
)
_env_var = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True).filter(lambda n: n not in _PINNED_ENV)

_valid_artifact = st.fixed_dictionaries(
    {"name": st.from_regex(ARTIFACT_NAME, fullmatch=True)},
    optional={"include": st.lists(_glob, min_size=1, max_size=3), "exclude": st.lists(_glob, max_size=3)},
)
_build_common = {
    "timeout": st.integers(1, MAX_BUILD_TIMEOUT),
    "sandbox": st.sampled_from(["bubblewrap", "none"]),
}
_build_without_steps = st.fixed_dictionaries(
    {},
    optional={
        **_build_common,
        "steps": st.just([]),
        "env": st.just([]),
        "tools": st.just([]),
    },
)
_build_with_steps = st.fixed_dictionaries(
    {"steps": st.lists(_text, min_size=1, max_size=3), "outputs": st.lists(_dirpath, min_size=1, max_size=3)},
    optional={
        **_build_common,
        "env": st.lists(_env_var, max_size=3),
        "tools": st.lists(_tool, max_size=3),
        "fetch": st.fixed_dictionaries(
            {
                "steps": st.lists(_text, min_size=1, max_size=2),
                "lockfiles": st.lists(_relpath, min_size=1, max_size=2),
                "outputs": st.lists(_dirpath, min_size=1, max_size=2),
            }
        ),
    },
)
_valid_env = st.fixed_dictionaries(
    {"path": st.tuples(st.sampled_from(["", "/"]), _dirpath).map("".join)},
    optional={
        "config": _dirpath,
        "activate": _text,
        "activate_timeout": _positive,
        "health": _text,
        "health_retries": st.integers(0, MAX_RETRIES),
        "health_interval": _not_negative,
        "health_timeout": _positive,
        "keep": st.integers(1, 10**6),
        "requires": st.lists(_text, max_size=2),
        "ignore": st.lists(_glob, max_size=3),
    },
)
_valid_documents = st.fixed_dictionaries(
    {"artifact": _valid_artifact},
    optional={
        "build": st.one_of(_build_without_steps, _build_with_steps),
        "env": st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_-]{0,7}", fullmatch=True), _valid_env, max_size=3
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(_valid_documents)
def test_any_valid_document_is_accepted_and_read_field_by_field(doc: dict[str, Any]) -> None:
    import tomli_w

    data = tomli_w.dumps(doc).encode()
    assert tomllib.loads(data.decode()) == doc
    pipeline = parse_pipeline(data)
    # every key the document gives, and the section's default for every other one
    build = dict(doc.get("build", {}))
    fetch = build.pop("fetch", None)
    assert pipeline == Pipeline(
        artifact=ArtifactSection(**doc["artifact"]),
        build=BuildSection(**build, fetch=None if fetch is None else FetchSection(**fetch)),
        env={name: EnvSection(**table) for name, table in doc.get("env", {}).items()},
    )
    assert list(pipeline.env) == list(doc.get("env", {}))
    for env in pipeline.env.values():  # durations are floats even when written as integers
        assert all(type(v) is float for v in (env.activate_timeout, env.health_interval, env.health_timeout))


def test_the_starter_shows_each_section_a_new_project_needs_and_each_parses() -> None:
    """`graven init`'s template is where a newcomer starts: its commented examples of [build],
    [build.fetch] and [env.NAME] must be valid once uncommented, and the fetch example must say how
    the fetched files reach the artifact."""
    import re

    from graven.deploy.settings import check_environments
    from graven.model.pipeline import STARTER

    text = STARTER.format(name="shop")
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", text)
    pipeline = parse_pipeline(uncommented.encode(), source="starter")
    assert pipeline.build.steps and pipeline.build.fetch is not None
    assert list(pipeline.build.fetch.lockfiles) == ["requirements.txt"]
    assert set(pipeline.env) == {"staging"} and pipeline.env["staging"].activate
    check_environments(pipeline.env, source="starter")
    assert "--no-index --find-links wheels/" in text  # offline install of what was fetched
    assert not parse_pipeline(text.encode(), source="starter").build.steps  # all commented out
