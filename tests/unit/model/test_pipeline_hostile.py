"""A hostile graven.toml: it comes from the commit being built, so whoever can push a commit writes it.

Whatever it holds (valid TOML with the wrong type at every known key, huge or negative numbers, dates,
control characters, odd environment names, catastrophic globs; invalid TOML; bytes that are not
UTF-8), parsing it returns a pipeline or raises a ConfigError (exit 2) of one line naming graven.toml,
never another exception, and never takes long."""

from __future__ import annotations

import datetime as dt
import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graven.core.globs import Selection
from graven.deploy.settings import check_environments
from graven.errors import ConfigError, InputError
from graven.model.pipeline import (
    ArtifactSection,
    BuildSection,
    EnvSection,
    FetchSection,
    Pipeline,
    parse_pipeline,
    parse_stored_pipeline,
)

SOURCE = "graven.toml in 0123456789ab"

# generous: the machine is shared; a hang (or a quadratic blow-up) takes far longer
_SETTINGS = settings(
    max_examples=300, deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow]
)


def _accepted_or_one_line(data: bytes) -> Pipeline | None:
    """The pipeline, or None after checking the refusal is one ConfigError line naming the file."""
    try:
        pipeline = parse_pipeline(data, source=SOURCE)
        check_environments(pipeline.env, source=SOURCE)  # as `graven build` does next
    except ConfigError as exc:
        assert isinstance(exc, InputError) and exc.exit_code == 2
        message = str(exc)
        assert message.startswith(SOURCE + ": "), message
        assert "\n" not in message and "\r" not in message, message
        return None
    try:  # what a deploy of the artifact reads back: the same answer, or a ConfigError
        parse_stored_pipeline(data, source=SOURCE)
    except ConfigError:
        pytest.fail("a pipeline accepted at build time is refused when stored")
    return pipeline


# -- values ------------------------------------------------------------------------------------------

_control = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from("\x7f\u2028\u202e\ufeff")
_strings = st.one_of(
    st.just(""),
    st.text(max_size=12),
    st.text(_control, min_size=1, max_size=4),
    st.sampled_from(
        [
            "..",
            "../x",
            "/",
            "//",
            "/etc/passwd",
            "a/../b",
            "./a",
            "a//b",
            "~",
            "-rf",
            "*",
            "**",
            "[z-a]",
            "[",
            "]",
            "[!]",
            "a\\b",
            "{at}",
            "GRAVEN_DB_URL",
            "PATH",
            "PGPASSWORD",
            "bubblewrap",
            "none",
            "/." * 3,
        ]
    ),
    st.integers(1, 6).map(lambda n: "**/" * (n * 40) + "x"),
    st.integers(1, 6).map(lambda n: "*a" * (n * 50) + "*c"),
    st.integers(1, 6).map(lambda n: "*/**/" * (n * 40)),
    st.integers(1, 4).map(lambda n: "x" * (n * 20_000)),
)
_numbers = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 2**64, 10**30, -(10**30), 10**300]),
    st.floats(),  # nan, inf, -0.0, subnormals
)
_dates = st.one_of(st.dates(), st.times(), st.datetimes(), st.datetimes(timezones=st.just(dt.UTC)))
_scalars = st.one_of(_strings, _numbers, _dates)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

# the keys of each table, as the model names them (its fields are the TOML keys)
_ARTIFACT = ArtifactSection._fields
_BUILD = BuildSection._fields
_FETCH = FetchSection._fields
_ENV = EnvSection._fields


def _section(keys: tuple[str, ...], required: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A table of some known keys (and maybe an unknown one), each a hostile value; or not a table."""
    table = st.fixed_dictionaries(
        required,
        optional={**{key: _values for key in keys if key not in required}, "colour": _values},
    )
    return st.one_of(table, table, table, _values)


_name = st.one_of(st.just("app"), _strings)
_path = st.one_of(st.just("/srv/app"), st.just("rel/app"), _strings)
_env_names = st.one_of(
    st.sampled_from(["staging", "prod", "a.b", "", "-x", "A", "x" * 65, "é", "a b", "a\nb", "[x]", "\x00"]),
    st.text(max_size=8),
)
_fetch = _section(_FETCH, {})
_build = st.one_of(
    _section(_BUILD, {}),
    st.fixed_dictionaries(
        {
            "steps": st.lists(_strings, max_size=2) | _values,
            "outputs": st.lists(_strings, max_size=2) | _values,
        },
        optional={"fetch": _fetch, "timeout": _numbers, "env": _values, "tools": _values},
    ),
)
_documents = st.fixed_dictionaries(
    {},
    optional={
        "artifact": _section(_ARTIFACT, {"name": _name}),
        "build": _build,
        "env": st.one_of(
            st.dictionaries(_env_names, _section(_ENV, {"path": _path}), max_size=3),
            _values,
        ),
        "deploy": _values,
    },
)


@_SETTINGS
@given(_documents)
def test_hostile_documents_are_accepted_or_refused_in_one_line(doc: dict[str, Any]) -> None:
    import tomli_w

    data = tomli_w.dumps(doc).encode()
    pipeline = _accepted_or_one_line(data)
    if pipeline is None:
        return
    # what was accepted is sane: the values a build and a deploy go on to use
    assert pipeline.artifact.name and pipeline.artifact.include
    assert 1 <= pipeline.build.timeout <= 7 * 86400
    for env in pipeline.env.values():
        assert env.keep >= 1 and env.health_retries >= 0
        assert all(math.isfinite(v) for v in (env.activate_timeout, env.health_interval, env.health_timeout))
    # and the globs it names select quickly, whatever they are
    selection = Selection.of(pipeline.artifact.include, pipeline.artifact.exclude)
    for path in ("a" * 200, "/".join(["a"] * 300), "/".join(["aaaaaaaaab"] * 50), "x/" * 100 + "c"):
        selection.selects(path)


# -- text that is not what it seems --------------------------------------------------------------------

_VALID = (
    b'[artifact]\nname = "app"\n\n[build]\nsteps = ["make"]\noutputs = ["out/"]\n\n'
    b'[env.prod]\npath = "/srv/app"\nkeep = 3\n'
)


@_SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_are_accepted_or_refused_in_one_line(data: bytes) -> None:
    _accepted_or_one_line(data)


@_SETTINGS
@given(st.integers(0, len(_VALID)), st.binary(min_size=1, max_size=8), st.integers(0, 8))
def test_a_damaged_valid_file_is_accepted_or_refused_in_one_line(at: int, insert: bytes, cut: int) -> None:
    _accepted_or_one_line(_VALID[:at] + insert + _VALID[at + cut :])


@_SETTINGS
@given(
    st.sampled_from(["[env.prod] keep", "[env.prod] health_retries", "[build] timeout", "[artifact] name"]),
    st.sampled_from(["", "-", "+", "0x", "0o", "0b"]),
    st.integers(4200, 20_000),
)
def test_an_integer_of_thousands_of_digits_is_refused_in_one_line(where: str, sign: str, digits: int) -> None:
    """Python refuses to read an integer of more than 4,300 decimal digits (a ValueError that tomllib
    lets through, not a TOMLDecodeError): a build or deploy of such a graven.toml ended in a traceback."""
    section, key = where.split(" ")
    digit = {"0b": "1", "0o": "7"}.get(sign, "1")
    text = f'[artifact]\nname = "app"\n\n{section}\n{key} = {sign}{digit * digits}\n'
    if section == "[env.prod]":
        text += 'path = "/srv/app"\n'
    if section == "[build]":
        text += 'steps = ["make"]\noutputs = ["out/"]\n'
    _accepted_or_one_line(text.encode())


def test_an_integer_of_thousands_of_digits_names_the_file_and_why() -> None:
    data = b'[artifact]\nname = "app"\n[env.prod]\npath = "/srv/app"\nkeep = ' + b"9" * 5000 + b"\n"
    for parse in (parse_pipeline, parse_stored_pipeline):
        with pytest.raises(ConfigError) as info:
            parse(data, source=SOURCE)
        assert str(info.value).startswith(f"{SOURCE}: invalid TOML: ")
        assert "digits" in str(info.value) and "\n" not in str(info.value)
