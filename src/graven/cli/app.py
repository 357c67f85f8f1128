"""The click application: the ``graven`` group and the registry of command modules.

Each command's module is imported only when that command runs (or when help lists them all), so a
command pays for its own imports and no one else's.
"""

from __future__ import annotations

import importlib

import click

from graven import __version__

__all__ = ["COMMAND_MODULES", "State", "cli"]

# command name -> the graven.cli module that defines it (in that module's COMMANDS); the order here
# is the order of `graven --help`. Add new commands here.
COMMAND_MODULES: dict[str, str] = {
    "init": "build_cmds",
    "build": "build_cmds",
    "artifacts": "artifact_cmds",
    "show": "artifact_cmds",
    "verify": "artifact_cmds",
    "export": "artifact_cmds",
    "import": "artifact_cmds",
    "keys": "keys_cmds",
    "attest": "keys_cmds",
    "log": "log_cmds",
    "deploy": "deploy_cmds",
    "promote": "deploy_cmds",
    "rollback": "deploy_cmds",
    "hold": "deploy_cmds",
    "unhold": "deploy_cmds",
    "reject": "deploy_cmds",
    "status": "deploy_cmds",
    "history": "deploy_cmds",
    "drift": "drift_cmds",
    "heal": "drift_cmds",
    "watch": "drift_cmds",
}


class State:
    """Process-wide CLI options."""

    verbose = False


def load_command(name: str) -> click.Command | None:
    """The command ``name`` from its module, or None when there is no such command."""
    module_name = COMMAND_MODULES.get(name)
    if module_name is None:
        return None
    module = importlib.import_module(f"graven.cli.{module_name}")
    for command in module.COMMANDS:
        if command.name == name:
            assert isinstance(command, click.Command)
            return command
    raise LookupError(f"graven.cli.{module_name} does not define the command {name!r}")


class LazyGroup(click.Group):
    """A group that imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="graven", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and more detail.")
def cli(verbose: bool) -> None:
    """graven: reproducible, signed, content-addressed artifacts from a git commit."""
    State.verbose = verbose
