"""[env.NAME] in graven.toml and its resolution for a deployment."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.deploy.settings import (
    DeployRootError,
    check_config_path,
    check_env_name,
    check_environments,
    resolve_env,
)
from graven.errors import ConfigError, InputError, NotFoundError
from graven.model.manifest import FileEntry, SymlinkEntry, TreeManifest
from graven.model.pipeline import EnvSection, parse_pipeline


def pipeline(text: str) -> dict[str, EnvSection]:
    return dict(parse_pipeline(('[artifact]\nname = "x"\n' + text).encode()).env)


def test_full_section_parses_with_defaults() -> None:
    envs = pipeline(
        '[env.staging]\npath = "/srv/shop/staging"\nconfig = "config/staging.toml"\n'
        'activate = "kill -HUP 1"\nhealth = "true"\nkeep = 3\n'
        '[env.prod]\npath = "prod"\nrequires = ["staging"]\nhealth_retries = 5\nhealth_interval = 0.5\n'
    )
    settings = resolve_env(envs, "staging", root=None, source="graven.toml")
    assert settings.path == "/srv/shop/staging" and settings.keep == 3 and settings.health_retries == 2
    prod = resolve_env(envs, "prod", root="/base", source="graven.toml")
    assert prod.path == "/base/prod" and prod.requires == ("staging",) and prod.health_interval == 0.5
    assert prod.to_json()["requires"] == ["staging"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('path = "../x"', "not a clean path"),
        ('path = "/srv/../x"', "not a clean path"),
        ('path = "x"\nconfig = "/etc/passwd"', "absolute paths are not allowed"),
        ('path = "x"\nconfig = "../c"', "'..' segments"),
        ('path = "x"\nkeep = 0', "keep"),
        ('path = "x"\nhealth_retries = -1', "health_retries"),
        ('path = "x"\ncolour = "red"', "unknown key [env] staging.colour"),
        ('config = "c"', "[env] staging.path is required"),
        ('path = "x"\nrequires = "staging"', "requires"),
    ],
)
def test_invalid_sections_are_refused_by_name(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        pipeline(f"[env.staging]\n{section}\n")
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_relative_path_needs_a_deploy_root() -> None:
    """In the library's words: the library reads no GRAVEN_DEPLOY_ROOT and has no --root (the CLI
    says it in its own, tests/integration/test_deploy_root_words.py)."""
    envs = pipeline('[env.staging]\npath = "staging"\n')
    with pytest.raises(DeployRootError) as info:
        resolve_env(envs, "staging", root=None, source="graven.toml")
    assert str(info.value) == (
        "[env.staging] path 'staging' is relative: pass DeployOptions(root=DIR) to say where it lives"
    )
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    with pytest.raises(InputError, match="absolute"):
        resolve_env(envs, "staging", root="relative/base", source="graven.toml")


def test_unknown_environment_names_the_defined_ones() -> None:
    envs = pipeline('[env.staging]\npath = "/a"\n[env.prod]\npath = "/b"\n')
    with pytest.raises(NotFoundError, match=r"'qa' is not defined in graven.toml \(defined: prod, staging\)"):
        resolve_env(envs, "qa", root=None, source="graven.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[env.prod]\npath = "/a"\nrequires = ["staging"]\n', "requires 'staging', which is not defined"),
        ('[env.prod]\npath = "/a"\nrequires = ["prod"]\n', "requires itself"),
        (
            '[env.a]\npath = "/a"\nrequires = ["b"]\n[env.b]\npath = "/b"\nrequires = ["a"]\n',
            "cycle: a -> b -> a",
        ),
        ('[env.ok]\npath = "/b"\n[env.Prod]\npath = "/a"\n', "invalid environment name"),
    ],
)
def test_bad_requires_graphs_are_refused(text: str, message: str) -> None:
    envs = pipeline(text)
    name = next(iter(envs))  # a good name: the other environments of the file are checked too
    with pytest.raises(ConfigError, match=message):
        resolve_env(envs, name, root=None, source="graven.toml")


@pytest.mark.parametrize("name", ["", "Prod", "a/b", "..", "-x", "x" * 65])
def test_env_names_are_checked(name: str) -> None:
    with pytest.raises(InputError):
        check_env_name(name)


def test_config_must_name_a_file_or_directory_of_the_artifact() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    manifest = TreeManifest.of([FileEntry("config/prod.toml", sha, 1), FileEntry("app.py", sha, 1)])
    envs = pipeline(
        '[env.a]\npath = "/a"\nconfig = "config/prod.toml"\n[env.b]\npath = "/b"\nconfig = "config/"\n'
    )
    for name in ("a", "b"):
        check_config_path(manifest, resolve_env(envs, name, root=None, source="t"))
    envs = pipeline('[env.c]\npath = "/c"\nconfig = "config/missing.toml"\n')
    with pytest.raises(ConfigError, match="is not a file or directory of the artifact"):
        check_config_path(manifest, resolve_env(envs, "c", root=None, source="t"))


def test_a_config_symlink_must_lead_to_a_file_or_directory_of_the_artifact() -> None:
    """PATH/config -> current/<config>: a config that is a link into nothing would go live as a config
    link that resolves to nothing (the service starting without its config), where a config naming
    nothing is refused."""
    sha = hashlib.sha256(b"x").hexdigest()
    manifest = TreeManifest.of(
        [
            FileEntry("config/prod.toml", sha, 1),
            SymlinkEntry("config/dangling.toml", "nothing.toml"),
            SymlinkEntry("config/loop.toml", "loop.toml"),
            SymlinkEntry("config/staging.toml", "prod.toml"),
            SymlinkEntry("config/chain.toml", "staging.toml"),
            SymlinkEntry("etc", "config"),
            SymlinkEntry("via-dir.toml", "etc/prod.toml"),
            SymlinkEntry("up.toml", "config/../etc/../config/prod.toml"),
        ]
    )
    for config in ("config/staging.toml", "config/chain.toml", "etc", "via-dir.toml", "up.toml"):
        envs = pipeline(f'[env.a]\npath = "/a"\nconfig = "{config}"\n')
        check_config_path(manifest, resolve_env(envs, "a", root=None, source="t"))
    for config in ("config/dangling.toml", "config/loop.toml"):
        envs = pipeline(f'[env.a]\npath = "/a"\nconfig = "{config}"\n')
        with pytest.raises(ConfigError, match=f"config '{config}' is a symlink that leads to nothing"):
            check_config_path(manifest, resolve_env(envs, "a", root=None, source="t"))


@pytest.mark.parametrize("name", ["x\ny", "a\rb", "e\x1b[31m"])
def test_an_env_name_with_a_line_break_is_refused_in_one_line(name: str) -> None:
    # the CLI shows an error's first line: "[env.x" said nothing of what was wrong
    envs = {name: EnvSection(path="/srv/a")}
    with pytest.raises(ConfigError) as refused:
        check_environments(envs, source="graven.toml")
    message = str(refused.value)
    assert message.isprintable() and "invalid environment name" in message, message


@pytest.mark.parametrize("bad", ["b\nc", "b\rc", "B"])
def test_a_bad_environment_name_is_refused_before_it_is_listed_as_a_known_one(bad: str) -> None:
    """Every name is checked before any ``requires``: the list of known environments that a
    ``requires`` naming none of them shows held the raw names of the ones not checked yet, and a
    line break in one cut the message (graven build showed ``known: a, b`` and lost the rest)."""
    quoted = bad.encode("unicode_escape").decode()
    envs = pipeline(f'[env.a]\npath = "/a"\nrequires = ["zz"]\n[env."{quoted}"]\npath = "/b"\n')
    with pytest.raises(ConfigError) as info:
        check_environments(envs, source="graven.toml")
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert f"invalid environment name {bad!r}" in message, message


def test_a_deep_environment_path_is_checked_in_linear_time() -> None:
    """Each environment's path was looked up with every parent it has, each parent a new path as long
    as the part of it above: quadratic in its depth. A graven.toml (the commit's: anyone who pushes)
    with a path of 100,000 segments made `graven build`, and every deploy, take about a minute."""
    import time

    deep = "/srv/" + "a/" * 120_000 + "x"
    envs = pipeline(f'[env.deep]\npath = "{deep}"\n[env.top]\npath = "/srv/a"\n[env.b]\npath = "/srv/b"\n')
    started = time.monotonic()
    check_environments(envs, source="graven.toml")
    assert time.monotonic() - started < 5
    clash = pipeline(
        f'[env.deep]\npath = "/srv/a/releases{deep.removeprefix("/srv")}"\n[env.top]\npath = "/srv/a"\n'
    )
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"\[env.deep\] path .* is inside the files graven keeps in the path of \[env.top\]"
    ):
        check_environments(clash, source="graven.toml")
    assert time.monotonic() - started < 5


def _by_every_parent(paths: dict[str, str]) -> str | None:
    """The check as it was (each path against each of its parents), for the test below."""
    from pathlib import PurePosixPath

    from graven.deploy.settings import clashes_with_layout

    owner: dict[PurePosixPath, str] = {}
    for path, name in sorted((PurePosixPath(p.rstrip("/") or "/"), n) for n, p in paths.items()):
        first = owner.setdefault(path, name)
        if first != name:
            return f"{name} is {first}"
        for parent in path.parents:
            outer = owner.get(parent)
            if outer is not None and clashes_with_layout(path, parent):
                return f"{name} inside {outer}"
    return None


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.from_regex(r"[a-e]", fullmatch=True),
        st.tuples(
            st.sampled_from(["", "/"]),
            st.lists(
                st.sampled_from(["a", "b", "releases", "current", "config", ".graven"]),
                min_size=1,
                max_size=4,
            ),
        ).map(lambda t: t[0] + "/".join(t[1])),
        max_size=5,
    )
)
def test_shared_and_nested_environment_paths_are_refused_as_before(paths: dict[str, str]) -> None:
    envs = {name: EnvSection(path=path) for name, path in paths.items()}
    expected = _by_every_parent(paths)
    try:
        check_environments(envs, source="graven.toml")
    except ConfigError as exc:
        assert expected is not None, exc
        name, how, other = expected.split(" ")
        wanted = "is the path of" if how == "is" else "is inside the files graven keeps in the path of"
        assert f"[env.{name}] path" in str(exc) and f"{wanted} [env.{other}]" in str(exc), (exc, expected)
    else:
        assert expected is None
