"""The lazy command registry: every command is reachable, and a command loads only its own module."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from graven.cli.app import COMMAND_MODULES, cli, load_command


def test_registry_and_modules_agree() -> None:
    defined: dict[str, str] = {}
    for module_name in sorted(set(COMMAND_MODULES.values())):
        module = importlib.import_module(f"graven.cli.{module_name}")
        for command in module.COMMANDS:
            assert command.name not in defined, f"{command.name} is defined twice"
            defined[str(command.name)] = module_name
    assert defined == COMMAND_MODULES
    for name in COMMAND_MODULES:
        command = load_command(name)
        assert command is not None and command.name == name
    assert load_command("no-such-command") is None


def test_help_lists_every_command_and_unknown_commands_are_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMAND_MODULES:
        assert f"  {name} " in result.output or f"  {name}\n" in result.output
    result = runner.invoke(cli, ["deplyo"])
    assert result.exit_code == 2 and "No such command 'deplyo'" in result.output


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "from graven.cli.main import main\n"
        "main(['status', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('graven.cli.') and m.endswith('_cmds')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['graven.cli.deploy_cmds']"
