"""The fixed cost of `graven deploy` / `rollback` / `promote`, guarded without timing: what the command's
path imports and creates at start-up, and the garbage collector's policy per command."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from graven.cli.main import GC_YOUNG_THRESHOLD, command_name, gc_thresholds, main

# What a deploy, promote or rollback imports before it does anything: the command's module and the
# service with everything it imports at module level (the audit log is opened for every deployment).
_DEPLOY_PATH = (
    "graven.cli.app",
    "graven.cli.deploy_cmds",
    "graven.service.deploy",
    "graven.service.audit",
    "graven.store.local",
)

# Loaded only when they are used: hooks (and subprocess) when a step runs a command, --plan's module
# for --plan, uuid for the first entry of a new audit log.
_LAZY = ("graven.deploy.hooks", "graven.service.deploy_plan", "subprocess", "uuid")

# graven's own modules on that path whose values are written by hand (graven.core.record): each
# @dataclass costs ~0.3 ms to create in a fresh process.
_NO_DATACLASSES = (
    "graven.core.checkpoint",
    "graven.core.globs",
    "graven.deploy.hooks",
    "graven.deploy.layout",
    "graven.deploy.materialize",
    "graven.deploy.plan",
    "graven.deploy.settings",
    "graven.deploy.statdb",
    "graven.model.digest",
    "graven.model.logentry",
    "graven.model.manifest",
    "graven.model.pipeline",
    "graven.service.artifacts",
    "graven.service.audit",
    "graven.service.context",
    "graven.service.deploy",
    "graven.service.deploy_types",
    "graven.service.deploy_verify",
    "graven.service.environments",
    "graven.signing.dsse",
    "graven.signing.keys",
    "graven.signing.trust",
)


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    ).stdout


def test_the_deploy_path_does_not_import_what_it_may_never_use() -> None:
    out = _run(
        f"""
        import sys
        for name in {_DEPLOY_PATH!r}:
            __import__(name)
        print(sorted(name for name in {_LAZY!r} if name in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_the_deploy_path_creates_no_dataclass_in_these_modules() -> None:
    out = _run(
        f"""
        import importlib, sys
        for name in {_DEPLOY_PATH!r} + {_NO_DATACLASSES!r}:
            importlib.import_module(name)
        found = sorted(
            f"{{module}}.{{name}}"
            for module in {_NO_DATACLASSES!r}
            for name, value in vars(sys.modules[module]).items()
            if isinstance(value, type) and value.__module__ == module
            and "__dataclass_fields__" in vars(value)
        )
        print(found)
        """
    )
    assert out.strip() == "[]"


def test_rollback_in_a_fresh_process_imports_no_hooks_and_no_plan() -> None:
    # the command itself, up to the point where it needs a graven home (none here: it stops at once)
    out = _run(
        """
        import os, sys, tempfile
        os.environ["GRAVEN_HOME"] = tempfile.mkdtemp()
        os.environ.pop("GRAVEN_DB_URL", None)
        from graven.cli.main import main
        sys.argv = ["graven", "rollback", "prod"]
        code = main()
        print(code, sorted(m for m in ("graven.deploy.hooks", "graven.service.deploy_plan", "subprocess")
                           if m in sys.modules))
        """
    )
    assert out.strip() == "2 []"  # no such environment: exit 2


# -- the garbage collector -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["deploy", "rollback", "promote", "drift", "build", "log", "artifacts", None]
)
def test_commands_collect_rarely_but_still_collect(command: str | None) -> None:
    thresholds = gc_thresholds(command)
    assert thresholds is not None
    young, *older = thresholds
    assert young == GC_YOUNG_THRESHOLD and 10_000 <= young <= 1_000_000  # bounded: never disabled
    assert all(0 < t < 100 for t in older)


def test_watch_keeps_the_interpreters_rhythm() -> None:
    assert gc_thresholds("watch") is None


def test_the_command_word_skips_global_options() -> None:
    assert command_name(["-v", "watch", "prod"]) == "watch"
    assert command_name(["--", "watch"]) is None
    assert command_name(["-v"]) is None


def test_a_caller_that_passes_argv_keeps_its_collector_settings(capsys: pytest.CaptureFixture[str]) -> None:
    before = gc.get_threshold()
    assert main(["deploy", "--no-such-option"]) == 2
    assert gc.get_threshold() == before
    capsys.readouterr()


def _policy_in_a_process(argv: list[str]) -> str:
    """Run graven as the process does (main() without argv) on a line that fails at parsing, then
    make cyclic garbage in a loop as a long-running command would, and report what the collector did."""
    return _run(
        f"""
        import gc, sys
        from graven.cli.main import main
        sys.argv = ["graven", *{argv!r}]
        code = main()
        collected = []
        gc.callbacks.append(lambda phase, info: phase == "stop" and collected.append(info["collected"]))
        for _ in range(300_000):  # cycles, as an event loop or a long walk leaves them
            node = []
            node.append(node)
        print(code, gc.isenabled(), gc.get_threshold()[0], len(collected) > 0, sum(collected) > 100_000)
        """
    )


def test_a_watch_process_collects_its_cycles() -> None:
    code, enabled, young, ran, freed = _policy_in_a_process(["watch", "--interval", "nan"]).split()
    assert (code, enabled, ran, freed) == ("2", "True", "True", "True")
    assert int(young) < GC_YOUNG_THRESHOLD  # the interpreter's default (700)


def test_a_deploy_process_still_collects_its_cycles() -> None:
    code, enabled, young, ran, freed = _policy_in_a_process(["deploy", "--no-such-option"]).split()
    assert (code, enabled, young, ran, freed) == ("2", "True", str(GC_YOUNG_THRESHOLD), "True", "True")
