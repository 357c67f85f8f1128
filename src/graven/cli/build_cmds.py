"""``graven init`` and ``graven build``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, human_size
from graven.errors import InputError

__all__ = ["COMMANDS"]


@click.command("init")
@click.option(
    "-C",
    "--repo",
    "repo",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="Repository to initialise (default: the current directory).",
)
@click.option("--name", help="Artifact name (default: the repository's directory name).")
def init_cmd(repo: Path, name: str | None) -> int:
    """Write a commented starter graven.toml at the repository root."""
    from graven.model.pipeline import PIPELINE_FILE, STARTER
    from graven.sources.git import GitRepo

    root = GitRepo.discover(repo).root
    target = root / PIPELINE_FILE
    if target.exists():
        raise InputError(f"{target} already exists; edit it instead (graven init never overwrites)")
    if name is None:
        name = re.sub(r"[^a-z0-9._-]+", "-", root.name.lower()).strip("-._") or "app"
    elif not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,127}", name):
        raise InputError(f"invalid artifact name {name!r}: use lowercase letters, digits, '.', '_', '-'")
    with target.open("x", encoding="utf-8") as handle:
        handle.write(STARTER.format(name=name))
    click.echo(f"wrote {target}; commit it, then run `graven build`")
    return 0


@click.command("build")
@click.argument("revision", default="HEAD")
@click.option(
    "-C",
    "--repo",
    "repo",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="Repository to build from (default: the current directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-cache", is_flag=True, help="Re-read and re-hash every file (ignore the blob cache).")
def build_cmd(revision: str, repo: Path, as_json: bool, no_cache: bool) -> int:
    """Build REVISION (default HEAD) into a content-addressed artifact; print its digest."""
    from graven.service.build import build
    from graven.service.context import Context

    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        result = build(ctx, path=repo, revision=revision, use_cache=not no_cache)
    finally:
        reporter.close()
    if as_json:
        emit_json(result.to_json())
    else:
        sys.stderr.write(
            f"built {result.name} from {result.commit[:12]}: {result.file_count} files, "
            f"{human_size(result.total_size)} ({result.files_read} read)\n"
        )
        click.echo(result.digest)
    return 0


COMMANDS = [init_cmd, build_cmd]
