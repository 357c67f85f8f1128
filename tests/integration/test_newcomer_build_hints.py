"""What a newcomer gets wrong in a build, found by adopting graven for a small WSGI app: each mistake is
one line that says what is wrong and how to fix it (a graven.toml left uncommitted, a build step that
needs the network, a tool not on PATH, an output no step makes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import assert_cli_error, git, write_files
from graven.build.sandbox import HostRunner
from graven.build.steps import BuildLog, clean_environment, run_steps
from graven.errors import BuildError
from helpers_services import require_tool

Run = Callable[..., tuple[int, str, str]]


def _toml(steps: list[str], outputs: str = '["out/"]', extra: str = "") -> str:
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = {json.dumps(steps)}\noutputs = {outputs}\n{extra}'


def test_a_graven_toml_written_by_init_but_not_committed_says_to_commit_it(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_files(repo, {"app.py": "print('hi')\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    assert run_cli("init", "-C", repo)[0] == 0
    assert_cli_error(run_cli("build", "-C", repo), 2, "not committed", "git add graven.toml && git commit")
    # an older commit than the checked-out one: its own graven.toml is what is missing
    git(repo, "add", "graven.toml")
    git(repo, "commit", "-q", "-m", "graven")
    line = assert_cli_error(run_cli("build", "HEAD~1", "-C", repo), 2, "not found in commit")
    assert "not committed" not in line


def test_an_uncommitted_graven_toml_is_named_in_the_warning(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    from graven.sources.git import _porcelain_paths

    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    (repo / "graven.toml").write_text((repo / "graven.toml").read_text() + 'exclude = ["*.md"]\n')
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err
    assert "uncommitted changes, graven.toml among them" in err and "commit yours" in err
    git(repo, "checkout", "-q", "graven.toml")
    (repo / "a.txt").write_text("changed\n")
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0 and "uncommitted changes; they are not built" in err and "graven.toml" not in err
    assert _porcelain_paths(b" M a b\0R  new\0old\0?? x\0") == ["a b", "new", "x"]


def test_a_build_step_that_needs_the_network_says_to_fetch_in_build_fetch(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    # what pip or curl does first: a name lookup (its error printed without a traceback)
    lookup = (
        "python3 -c \"import socket, sys\ntry: socket.getaddrinfo('pypi.org', 443)\n"
        'except OSError as e: sys.exit(e)"'
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(["mkdir out", lookup]))
    line = assert_cli_error(run_cli("build", "-C", repo), 1, "failed with exit code 1")
    assert "needed the network, which build steps do not have" in line and "[build.fetch]" in line


def test_only_the_failing_offline_steps_own_output_counts_as_needing_the_network(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = clean_environment(home=tmp_path, tmp=tmp_path, source_date_epoch=0, host_path=None)
    runner = HostRunner(work, env)
    resolver = "echo 'curl: (6) Could not resolve host: pypi.org'"
    hint = "(it seems to have needed the network, which build steps do not have"
    with BuildLog(tmp_path / "build.log") as log:
        with pytest.raises(BuildError) as offline:
            run_steps([f"{resolver}; exit 6"], runner=runner, log=log, timeout=30)
        assert hint in str(offline.value)
        with pytest.raises(BuildError) as fetch:  # the fetch phase has the network: no hint
            run_steps(
                [f"{resolver}; exit 6"], runner=runner, log=log, timeout=30, phase="fetch", network=True
            )
        assert hint not in str(fetch.value)
        with pytest.raises(BuildError) as other:  # an earlier step's output is not this step's
            run_steps([resolver, "echo a test failed; exit 1"], runner=runner, log=log, timeout=30)
        assert "Could not resolve host" in str(other.value) and hint not in str(other.value)


def test_a_tool_not_on_path_and_an_output_no_step_makes_say_how_to_fix_them(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    no_tool = _toml(["mkdir out"], extra='tools = ["no-such-uv"]\n')
    tools = make_repo(tmp_path / "tools", {"a.txt": "a\n"}, no_tool)
    assert_cli_error(run_cli("build", "-C", tools), 2, "'no-such-uv' is not an executable", "install it")
    no_output = _toml(["mkdir out"], outputs='["out/", "static/"]')
    missing = make_repo(tmp_path / "missing", {"a.txt": "a\n"}, no_output)
    assert_cli_error(
        run_cli("build", "-C", missing), 2, "'static' was not produced by the steps; make a step create it"
    )
