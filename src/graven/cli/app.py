"""The click application: the ``graven`` group and every command module registered in it."""

from __future__ import annotations

import click

from graven import __version__
from graven.cli import artifact_cmds, build_cmds, deploy_cmds, drift_cmds, keys_cmds, log_cmds

__all__ = ["State", "cli"]


class State:
    """Process-wide CLI options."""

    verbose = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="graven", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and more detail.")
def cli(verbose: bool) -> None:
    """graven: reproducible, signed, content-addressed artifacts from a git commit."""
    State.verbose = verbose


# Every command module exposes COMMANDS; add new modules here.
for module in (build_cmds, artifact_cmds, keys_cmds, log_cmds, deploy_cmds, drift_cmds):
    for command in module.COMMANDS:
        cli.add_command(command)
