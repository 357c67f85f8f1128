"""``graven init`` and ``graven build``."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, human_size
from graven.errors import InputError

if TYPE_CHECKING:
    from graven.build.compare import NotReproducibleError

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
@click.option(
    "--check",
    is_flag=True,
    help="Build twice, the second time varied (path, file order, umask, hostname, TZ, locale); "
    "exit 1 and list the differing paths unless both give the same manifest.",
)
def build_cmd(revision: str, repo: Path, as_json: bool, no_cache: bool, check: bool) -> int:
    """Build REVISION (default HEAD) into a content-addressed artifact; print its digest."""
    from graven.build.compare import NotReproducibleError
    from graven.service.build import build
    from graven.service.context import Context

    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        result = build(ctx, path=repo, revision=revision, use_cache=not no_cache, check=check)
    except NotReproducibleError as exc:
        reporter.close()
        _report_not_reproducible(exc, as_json=as_json)
        raise
    finally:
        reporter.close()
    if as_json:
        doc = result.to_json()
        if check:
            doc["check"] = {"reproducible": True, "differences": []}
        emit_json(doc)
    else:
        sys.stderr.write(
            f"built {result.name} from {result.commit[:12]}: {result.file_count} files, "
            f"{human_size(result.total_size)} ({result.files_read} read)\n"
        )
        if check:
            sys.stderr.write("reproducible: a second build gave the same manifest\n")
        click.echo(result.digest)
    return 0


def _report_not_reproducible(exc: NotReproducibleError, *, as_json: bool) -> None:
    """Every differing path (with diffoscope's summary when it ran) before the one-line error."""
    if as_json:
        emit_json(
            {
                "commit": exc.commit,
                "check": {
                    "reproducible": False,
                    "variations": exc.variations,
                    "differences": [d.to_json() for d in exc.differences],
                },
            }
        )
        return
    for item in exc.differences:
        sys.stderr.write(f"differs: {item.line()}\n")
        if item.diffoscope:
            for line in item.diffoscope.splitlines():
                sys.stderr.write(f"    {line}\n")


COMMANDS = [init_cmd, build_cmd]
