"""Reviewed graven.toml rules: globs compiled at parse time, no config mistake left silent, numbers
bounded, and every refusal one ConfigError line naming the field (never a traceback)."""

from __future__ import annotations

import math
import re
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import ConfigError
from graven.model.pipeline import parse_pipeline

A = '[artifact]\nname = "a"\n'
MAX_DURATION = 86400.0  # seconds: [env.*] activate_timeout, health_interval, health_timeout
MAX_BUILD_TIMEOUT = 604800  # seconds: [build] timeout
MAX_RETRIES = 1000  # [env.*] health_retries
ENV = A + '[env.s]\npath = "/srv/a"\n'


def refused(text: str, source: str = "graven.toml") -> str:
    """The one-line refusal of ``text``, without the ``(at line N)`` that ends it when a line has the key
    (test_a_refusal_names_the_line_of_the_key: :func:`refused_at`)."""
    return re.sub(r" \(at line [0-9]+\)$", "", refused_at(text, source))


def refused_at(text: str, source: str = "graven.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text.encode(), source=source)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith(f"{source}: ") and "\n" not in message, message
    return message


# -- globs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            A + 'include = ["[z-a]"]\n',
            "[artifact] include.0 = '[z-a]' is not a valid glob: bad character range 'z'-'a'",
        ),
        (A + 'exclude = ["**/*.md", "[b-a]"]\n', "[artifact] exclude.1 = '[b-a]' is not a valid glob"),
        (A + 'include = ["app/[9-0]/**"]\n', "[artifact] include.0 = 'app/[9-0]/**' is not a valid glob"),
        (ENV + 'ignore = ["var/**", "[!z-a]"]\n', "[env] s.ignore.1 = '[!z-a]' is not a valid glob"),
    ],
)
def test_invalid_globs_are_refused_at_parse_time_naming_file_and_field(text: str, expected: str) -> None:
    message = refused(text, source="graven.toml in 0123456789ab")
    assert message.startswith(f"graven.toml in 0123456789ab: {expected}"), message
    assert message.endswith("'")  # ... bad character range 'z'-'a'"


@pytest.mark.parametrize("pattern", ["[[]x", "[a&&b]", "[!]", "[]]", "app/", "**/*.py", "[!a-c]?"])
def test_odd_but_valid_globs_are_accepted(pattern: str) -> None:
    assert parse_pipeline((A + f"include = [{pattern!r}]\n").encode()).artifact.include == [pattern]


def test_an_empty_include_list_is_refused() -> None:
    assert "[artifact] include must not be empty" in refused(A + "include = []\n")


def test_outputs_without_steps_is_refused_naming_the_field() -> None:
    message = refused(A + '[build]\noutputs = ["out/"]\n')
    assert "[build] outputs is given without steps" in message
    refused(A + "[build]\noutputs = []\n")  # given, even empty: still a mistake
    assert parse_pipeline((A + '[build]\nsteps = ["make"]\noutputs = ["out/"]\n').encode()).build.outputs


# -- values are quoted, never interpreted --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[artifact]\nname = "Sh{op}"\n', "'Sh{op}' is invalid"),
        ('[artifact]\nname = "{at}"\n', "'{at}' is invalid"),
        (
            A + '[build]\nsteps = ["x"]\noutputs = ["o"]\n[build.fetch]\nsteps = ["f"]\n'
            'lockfiles = ["/{x}"]\noutputs = ["w"]\n',
            "/{x}",
        ),
        (A + '[build]\nsteps = ["x"]\noutputs = ["o"]\nenv = ["A\\nB"]\n', "A\\x0aB"),
        (A + '[build]\nsteps = ["x"]\noutputs = ["o"]\ntools = ["a\\u009bb"]\n', "a\\x9bb"),
        (A + '[build]\nsteps = ["x"]\noutputs = ["/a\\nb"]\n', "\\x0a"),
    ],
)
def test_user_values_with_braces_or_controls_give_one_line(text: str, needle: str) -> None:
    assert needle in refused(text)


# -- numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["activate_timeout", "health_interval", "health_timeout"])
@pytest.mark.parametrize("value", ["1e300", "inf", "+inf", "86400.5", "86401", "1" + "0" * 400])
def test_durations_are_bounded(key: str, value: str) -> None:
    message = refused(ENV + f"{key} = {value}\n")
    assert f"[env] s.{key}" in message and "too large" in message and "86400 seconds" in message


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("activate_timeout", "0", "must be greater than 0 and at most 86400 seconds"),
        ("health_timeout", "-inf", "must be greater than 0 and at most 86400 seconds"),
        ("health_timeout", "nan", "must be a number of seconds, not nan"),
        ("health_interval", "-1", "must not be negative: 0 to 86400 seconds"),
        ("health_interval", "-inf", "must not be negative"),
        ("health_retries", "1001", "must be at most 1000 (0 to 1000)"),
        ("health_retries", "-1", "must be at least 0 (0 to 1000)"),
        ("health_retries", "100000000000000000000000", "must be at most 1000"),
    ],
)
def test_out_of_range_numbers_name_the_field_and_the_range(key: str, value: str, needle: str) -> None:
    message = refused(ENV + f"{key} = {value}\n")
    assert f"[env] s.{key}" in message and needle in message


def test_the_bounds_themselves_are_accepted() -> None:
    env = parse_pipeline(
        (
            ENV + f"activate_timeout = {MAX_DURATION}\nhealth_interval = 0\nhealth_timeout = 86400\n"
            f"health_retries = {MAX_RETRIES}\n"
        ).encode()
    ).env["s"]
    assert (env.activate_timeout, env.health_interval, env.health_timeout) == (86400.0, 0.0, 86400.0)
    assert env.health_retries == 1000
    assert parse_pipeline((A + f"[build]\ntimeout = {MAX_BUILD_TIMEOUT}\n").encode()).build.timeout == 604800


@pytest.mark.parametrize("value", [str(MAX_BUILD_TIMEOUT + 1), "1" + "0" * 30])
def test_the_build_timeout_is_bounded(value: str) -> None:
    assert "[build] timeout must be at most 604800 (1 to 604800)" in refused(
        A + f"[build]\ntimeout = {value}\n"
    )


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["activate_timeout", "health_interval", "health_timeout"]),
    st.one_of(st.floats(), st.integers(min_value=-(10**20), max_value=10**400)),
)
def test_any_duration_is_accepted_in_range_or_refused_in_one_line(key: str, value: float) -> None:
    text = repr(value) if isinstance(value, float) else str(value)
    text = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
    doc = ENV + f"{key} = {text}\n"
    assert key in tomllib.loads(doc)["env"]["s"]
    try:
        env = parse_pipeline(doc.encode()).env["s"]
    except ConfigError as exc:
        assert str(exc).startswith("graven.toml: [env] s.") and "\n" not in str(exc)
        return
    got = getattr(env, key)
    assert math.isfinite(got) and 0 <= got <= MAX_DURATION
    assert got > 0 or key == "health_interval"


# -- unknown keys: what the writer meant ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a near miss of a key of the same table
        (
            A + '[build]\nsteps = ["true"]\nouputs = ["app/"]\n',
            "unknown key [build] ouputs; did you mean outputs?",
        ),
        (A + '[build]\nstep = ["true"]\n', "unknown key [build] step; did you mean steps?"),
        (ENV + 'requirs = ["dev"]\n', "unknown key [env] s.requirs; did you mean requires?"),
        (ENV + "health_retry = 3\n", "unknown key [env] s.health_retry; did you mean health_retries?"),
        ('[artifact]\nnme = "a"\n', "unknown key [artifact] nme; did you mean name?"),
        (
            A + '[build]\nsteps = ["x"]\noutputs = ["o"]\n[build.fetch]\nlockfile = ["l"]\n',
            "unknown key [build] fetch.lockfile; did you mean lockfiles?",
        ),
        # a near miss of a table
        (A + '[enviroment.prod]\npath = "p"\n', "unknown key [enviroment]; did you mean [env]?"),
        (A + '[environments.prod]\npath = "p"\n', "unknown key [environments]; did you mean [env]?"),
        ('[Artifact]\nname = "a"\n', "unknown key [Artifact]; did you mean [artifact]?"),
        ('[artifacts]\nname = "a"\n', "unknown key [artifacts]; did you mean [artifact]?"),
        # a key of another table
        (A + 'path = "/srv/a"\n', "unknown key [artifact] path: path is a key of an [env.NAME] section"),
        (A + '[build]\nexclude = ["x"]\n', "unknown key [build] exclude: exclude is a key of [artifact]"),
        (ENV + 'outputs = ["o"]\n', "unknown key [env] s.outputs: outputs is a key of [build]"),
        # a key written above its table's header
        (
            'name = "a"\n[artifact]\n',
            "unknown key name above every table: name is a key of [artifact]; put it after that table's "
            "header",
        ),
        # an environment name with a dot, unquoted: TOML reads a table inside [env.prod]
        (
            A + '[env.prod]\npath = "p"\n[env.prod.eu]\npath = "q"\n',
            "[env.prod.eu] is a table 'eu' inside [env.prod]; an environment name with a dot must be "
            'quoted: [env."prod.eu"]',
        ),
    ],
)
def test_unknown_keys_say_what_was_meant(text: str, expected: str) -> None:
    message = refused(text)
    assert message.endswith(expected) or f"{expected}; " in message, message


def test_an_unknown_key_with_no_near_miss_keeps_the_plain_advice() -> None:
    assert refused(A + "colour = 1\n").endswith(
        "unknown key [artifact] colour; remove it or check its spelling"
    )


# -- a value of the wrong type: what was given and how to write it ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            A + '[build]\nsteps = ["true"]\noutputs = "dist"\n',
            '[build] outputs must be a list, not a string: write outputs = ["dist"]',
        ),
        (
            A + '[build]\nsteps = "make all"\noutputs = ["o"]\n',
            '[build] steps must be a list, not a string: write steps = ["make all"]',
        ),
        (
            ENV + 'requires = "staging"\n',
            '[env] s.requires must be a list, not a string: write requires = ["staging"]',
        ),
        (
            ENV + 'health_retries = "3"\n',
            "[env] s.health_retries must be an integer, not a string: write health_retries = 3",
        ),
        (ENV + "keep = 2.0\n", "[env] s.keep must be an integer, not a float: write keep = 2"),
        (
            ENV + 'health_timeout = "10"\n',
            "[env] s.health_timeout must be a number of seconds, not a string: write health_timeout = 10",
        ),
        (
            ENV + 'health_timeout = "10s"\n',
            "[env] s.health_timeout must be a number of seconds, not a string: write health_timeout = 10",
        ),
        (
            A + '[build]\ntimeout = "3600"\n',
            "[build] timeout must be an integer, not a string: write timeout = 3600",
        ),
        ("[artifact]\nname = 5\n", '[artifact] name must be a string, not an integer: write name = "5"'),
        (
            A + '[env.s]\npath = ["/srv/a"]\n',
            '[env] s.path must be a string, not a list: write path = "/srv/a"',
        ),
        (ENV + "activate = true\n", "[env] s.activate must be a string, not a boolean"),
        (
            A + '[build]\nsteps = ["x"]\noutputs = ["o"]\nsandbox = false\n',
            "[build] sandbox must be a string, not a boolean",
        ),
        (
            A + '[env]\ns = "/srv/a"\n',
            '[env] s must be a table, not a string: write [env.s] with path = "/srv/a"',
        ),
        (
            A + '[[env]]\npath = "/srv/a"\n',
            "[env] must be a table, not a list: write [env.NAME], not [[env]]",
        ),
        ('artifact = "a"\n', '[artifact] must be a table, not a string: write [artifact] with name = "a"'),
    ],
)
def test_a_value_of_the_wrong_type_says_what_it_is_and_how_to_write_it(text: str, expected: str) -> None:
    message = refused(text)
    assert message.endswith(expected), message


# -- the line of the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (A + '[build]\nsteps = ["true"]\nouputs = ["app/"]\n', 5),
        (A + "\n# staging\n[env.staging]\npath = 'x'\n\nhealth_retries = \"3\"  # retries\n", 8),
        (A + '[enviroment.prod]\npath = "p"\n', 3),  # the table's header
        (A + '[env.prod]\npath = "p"\n[env.prod.eu]\npath = "q"\n', 5),
        (A + '[build]\nsteps = [\n  "a",\n  1,\n]\noutputs = ["o"]\n', 4),  # the list, not its item
        (A + '[build]\nsteps = """\nouputs = 1\n"""\nouputs = ["o"]\n', 7),  # not in a string
        (A + '[env."prod.eu"]\npath = "p"\nkeep = 0\n', 5),
        (A + "env.s.path = 1\n", 3),  # a dotted key
        (A + "[env]\ns = { path = 1 }\n", 4),  # inside an inline table: its line
        ('[artifact]\r\nname = "a"\r\n[env.s]\r\npath = "x"\r\nkeep = 0\r\n', 5),  # CRLF
    ],
)
def test_a_refusal_names_the_line_of_the_key(text: str, line: int) -> None:
    message = refused_at(text)
    assert message.endswith(f" (at line {line})"), message


def test_no_line_is_named_for_the_whole_file() -> None:
    assert "(at line" not in refused_at("[build]\n")  # [artifact] is required: no line has it
