"""A relative ``[env.NAME] path`` with no deploy root is refused in the words of whoever asked: a library
caller is told to pass ``DeployOptions(root=...)`` (the library reads no GRAVEN_DEPLOY_ROOT and has no
``--root``), the command line to set GRAVEN_DEPLOY_ROOT or pass ``--root``; one error class for both."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from graven.deploy.settings import DeployRootError, EnvMovedError
from graven.errors import ConfigError, InputError
from graven.service.deploy import DeployOptions, deploy, promote, rollback
from graven.service.deploy_plan import plan_deploy
from helpers_deploy import World

Run = Callable[..., tuple[int, str, str]]

LIBRARY = "[env.staging] path 'staging' is relative: pass DeployOptions(root=DIR) to say where it lives"
CLI = (
    "[env.staging] path 'staging' is relative: set GRAVEN_DEPLOY_ROOT or pass --root DIR to say where "
    "it lives"
)


def test_the_library_names_deploy_options_root(world: World) -> None:
    v1 = world.build()
    for attempt in (
        lambda: deploy(world.ctx(), v1, "staging", DeployOptions()),
        lambda: plan_deploy(world.ctx(), v1, "staging", DeployOptions()),
    ):
        with pytest.raises(DeployRootError) as info:
            attempt()
        assert str(info.value) == LIBRARY
        assert "--root" not in str(info.value) and "GRAVEN_DEPLOY_ROOT" not in str(info.value)
        assert isinstance(info.value, InputError) and info.value.exit_code == 2
    assert not world.root.exists()


def test_promote_and_rollback_in_the_library_name_it_too(world: World) -> None:
    v1, v2 = world.build(), world.version(2)
    assert world.deploy(v1, "staging").ok and world.deploy(v2, "staging").ok
    with pytest.raises(DeployRootError, match=r"pass DeployOptions\(root=DIR\)"):
        rollback(world.ctx(), "staging", DeployOptions(reason="back"))
    with pytest.raises(DeployRootError, match=r"\[env.prod\] path 'prod' is relative: pass DeployOptions"):
        promote(world.ctx(), "staging", "prod", DeployOptions())


@pytest.mark.parametrize("plan", [False, True])
def test_the_cli_names_root_and_the_variable(world: World, run_cli: Run, *, plan: bool) -> None:
    v1 = world.build()
    code, out, err = run_cli("deploy", v1, "staging", *(["--plan"] if plan else []))
    assert (code, out, err) == (2, "", f"graven: error: {CLI}\n")
    code, out, err = run_cli("deploy", v1, "staging", "--json", *(["--plan"] if plan else []))
    assert code == 2 and err == f"graven: error: {CLI}\n"
    assert json.loads(out) == {"ok": False, "error": {"exit_code": 2, "message": CLI}}
    assert not world.root.exists()


def test_promote_and_rollback_on_the_cli_name_it_too(world: World, run_cli: Run) -> None:
    v1, v2 = world.build(), world.version(2)
    assert world.deploy(v1, "staging").ok and world.deploy(v2, "staging").ok
    code, _, err = run_cli("rollback", "staging", "--reason", "back")
    assert code == 2 and err == f"graven: error: {CLI}\n", err
    code, _, err = run_cli("promote", "staging", "prod")
    assert code == 2 and err == f"graven: error: {CLI.replace('staging', 'prod')}\n", err


@pytest.mark.parametrize("how", ["--root", "GRAVEN_DEPLOY_ROOT", "--plan"])
def test_a_root_that_is_not_utf8_is_refused_in_one_line(
    world: World, run_cli: Run, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The environment's path reached the database as a surrogate escape: a UnicodeEncodeError
    traceback (exit 1, no JSON), after the deploy had made directories below that root."""
    v1 = world.build()
    root = world.root.parent / os.fsdecode(b"r\xff")
    args = ["deploy", v1, "staging", "--json"]
    if how == "GRAVEN_DEPLOY_ROOT":
        monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", str(root))
    else:
        args += ["--root", str(root)] + (["--plan"] if how == "--plan" else [])
    code, out, err = run_cli(*args)
    message = err.removeprefix("graven: error: ").rstrip("\n")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message.startswith("the deploy root ") and "r\\xff is not valid UTF-8" in message, err
    assert json.loads(out) == {"ok": False, "error": {"exit_code": 2, "message": message}}
    assert not os.path.lexists(root)


def test_with_a_root_both_deploy(world: World, run_cli: Run) -> None:
    v1 = world.build()
    assert deploy(world.ctx(), v1, "staging", DeployOptions(root=str(world.root))).ok
    code, _, err = run_cli("deploy", v1, "prod", "--root", world.root)
    assert code == 0, err
    assert (world.root / "prod" / "current").is_symlink()


def _moved(live: object, path: object, hint: str) -> str:
    return (
        f"environment staging is live at {live}, but this artifact's graven.toml (with the deploy root "
        f"given) puts it at {path}; deploy with the root it went live with ({hint}), or give the new "
        "location another environment name"
    )


def test_an_environment_another_root_would_move_is_named_in_each_callers_words(
    world: World, run_cli: Run
) -> None:
    """Its message named both (`--root or GRAVEN_DEPLOY_ROOT; DeployOptions(root=...) from Python`):
    a CLI user read about a Python API, a library caller about options it has not."""
    v1, v2 = world.build(), world.version(2)
    assert world.deploy(v1, "staging").ok and world.deploy(v2, "staging").ok
    live, elsewhere = world.root / "staging", world.root.parent / "elsewhere"
    library = _moved(live, elsewhere / "staging", "pass DeployOptions(root=DIR)")
    options = DeployOptions(root=str(elsewhere), reason="back")
    for attempt in (
        lambda: deploy(world.ctx(), v1, "staging", options),
        lambda: plan_deploy(world.ctx(), v1, "staging", options),
        lambda: rollback(world.ctx(), "staging", options),
    ):
        with pytest.raises(EnvMovedError) as info:
            attempt()
        assert str(info.value) == library
        assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    cli = _moved(live, elsewhere / "staging", "set GRAVEN_DEPLOY_ROOT or pass --root DIR")
    for args in (
        ["deploy", v1, "staging", "--root", elsewhere],
        ["deploy", v1, "staging", "--root", elsewhere, "--plan"],
        ["rollback", "staging", "--reason", "back", "--root", elsewhere],
    ):
        assert run_cli(*args) == (2, "", f"graven: error: {cli}\n")
    assert not elsewhere.exists()
    assert world.live("staging") == v2


@pytest.mark.parametrize("value", ["srv", "./srv", "~/srv"])
def test_a_relative_graven_deploy_root_is_refused_in_one_line(
    world: World, run_cli: Run, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """GRAVEN_DEPLOY_ROOT=srv (or a quoted ``~/srv``, which no shell expands) was resolved against each
    command's working directory: the same environment landed below whatever directory the operator
    stood in (a directory named ``~`` in it, for the tilde), as a relative GRAVEN_HOME would have."""
    v1 = world.build()
    cwd = world.root.parent / "elsewhere"
    cwd.mkdir()
    monkeypatch.setenv("GRAVEN_DEPLOY_ROOT", value)
    for plan in ([], ["--plan"]):
        code, out, err = run_cli("deploy", v1, "staging", *plan, cwd=cwd)
        assert code == 2 and out == "", (code, err)
        assert err == (
            f"graven: error: GRAVEN_DEPLOY_ROOT {value} is a relative path: each command would deploy "
            "below its own working directory; give an absolute one (GRAVEN_DEPLOY_ROOT=$PWD/...)\n"
        ), err
    assert os.listdir(cwd) == []


def test_an_unexpanded_tilde_in_root_is_refused(world: World, run_cli: Run) -> None:
    """``--root=~/srv`` reaches graven as written (the shell expands a tilde only at the start of a
    word): it made a directory named ``~`` in the working directory, where an ``rm -rf ~`` to clean
    it up deletes the home directory."""
    v1 = world.build()
    cwd = world.root.parent / "elsewhere"
    cwd.mkdir()
    code, _, err = run_cli("deploy", v1, "staging", "--root=~/srv", cwd=cwd)
    assert code == 2 and "--root ~/srv starts with '~', which no shell expanded" in err, err
    assert os.listdir(cwd) == []
    code, _, err = run_cli("deploy", v1, "staging", "--root", "srv", cwd=cwd)  # relative: the cwd's
    assert code == 0, err
    assert (cwd / "srv" / "staging" / "current").is_symlink()
