"""``graven artifacts``, ``show``, ``verify``, ``export`` and ``import``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from graven.cli.output import emit_json, human_size, print_table

__all__ = ["COMMANDS"]


@click.command("artifacts")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def artifacts_cmd(as_json: bool) -> int:
    """List stored artifacts, newest first."""
    from graven.home import Home

    home = Home.from_env()
    if not home.has_database():  # an empty home: answer without loading the database layer
        if as_json:
            emit_json([])
        else:
            click.echo("no artifacts yet; run `graven build` in a repository with a graven.toml")
        return 0
    from graven.service.artifacts import list_artifacts
    from graven.service.context import Context

    records = list_artifacts(Context(home=home))
    if as_json:
        emit_json([r.to_json() for r in records])
        return 0
    if not records:
        click.echo("no artifacts yet; run `graven build` in a repository with a graven.toml")
        return 0
    print_table(
        ["digest", "name", "commit", "files", "size", "created"],
        [
            [
                r.digest[7:19],
                r.name,
                (r.commit or "-")[:12],
                str(r.file_count),
                human_size(r.total_size),
                r.created_at[:19].replace("T", " "),
            ]
            for r in records
        ],
    )
    return 0


@click.command("show")
@click.argument("digest")
@click.option("--files", "list_files", is_flag=True, help="List every entry of the artifact.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show_cmd(digest: str, list_files: bool, as_json: bool) -> int:
    """Show one artifact: where it came from and a summary of its files."""
    from graven.service import artifacts as svc
    from graven.service.context import Context

    ctx = Context.from_env()
    resolved = svc.resolve_digest(ctx, digest)
    record = svc.get_artifact(ctx, resolved)
    manifest = svc.load_manifest(ctx, resolved)
    summary = svc.summarize(manifest)
    history = svc.build_history(ctx, resolved)
    if as_json:
        doc: dict[str, object] = {
            "artifact": record.to_json(),
            "summary": summary,
            "builds": history,
        }
        if list_files:
            doc["entries"] = [e.to_json() for e in manifest.entries]
        emit_json(doc)
        return 0
    epoch = datetime.fromtimestamp(record.source_date_epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        ("digest", record.digest),
        ("name", record.name),
        ("commit", record.commit or "-"),
        ("repository", record.repository or "-"),
        ("revision", record.revision or "-"),
        ("commit time", f"{epoch} UTC ({record.source_date_epoch})"),
        ("pipeline", record.pipeline_digest or "-"),
        ("origin", record.origin),
        ("created", record.created_at),
        ("builds", str(len(history))),
        (
            "files",
            f"{summary['files']} ({summary['executables']} executable), "
            f"{human_size(summary['total_size'])}; {summary['symlinks']} symlinks, "
            f"{summary['empty_dirs']} empty dirs",
        ),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':<13}{value}")
    click.echo("")
    print_table(
        ["path", "files", "size"],
        [[t["path"], str(t["files"]), human_size(t["size"])] for t in summary["top_level"]],
    )
    if list_files:
        click.echo("")
        for entry in manifest.entries:
            data = entry.to_json()
            detail = data.get("sha256", data.get("target", ""))
            click.echo(f"{data['type']:<8}{data.get('mode', ''):<6}{data['path']}  {detail}")
    return 0


@click.command("verify")
@click.argument("digest")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(digest: str, as_json: bool) -> int:
    """Re-hash an artifact's manifest and every object; exit 1 if any is missing or corrupt."""
    from graven.service import artifacts as svc
    from graven.service.context import Context

    ctx = Context.from_env()
    resolved = svc.resolve_digest(ctx, digest)
    report = svc.verify_artifact(ctx, resolved)
    if as_json:
        emit_json(report.to_json())
    elif report.ok:
        click.echo(f"ok {resolved} ({report.objects_checked} objects verified)")
    else:
        for problem in report.problems:
            sys.stderr.write(f"{problem.kind}: {problem.path} (object {problem.object})\n")
        sys.stderr.write(f"graven: error: {resolved} failed verification: {len(report.problems)} problems\n")
    return 0 if report.ok else 1


@click.command("export")
@click.argument("digest")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Archive to write: .tar, .tar.gz or .tar.zst.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_cmd(digest: str, output: Path, as_json: bool) -> int:
    """Write an artifact as a deterministic archive (same artifact, same bytes)."""
    from graven.service import artifacts as svc
    from graven.service.context import Context
    from graven.service.transfer import export_artifact

    ctx = Context.from_env()
    resolved = svc.resolve_digest(ctx, digest)
    export_artifact(ctx, resolved, output)
    if as_json:
        emit_json({"digest": str(resolved), "output": str(output), "size": output.stat().st_size})
    else:
        click.echo(f"wrote {output} ({human_size(output.stat().st_size)}) for {resolved}")
    return 0


@click.command("import")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--name", help="Artifact name when the archive does not carry one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_cmd(archive: Path, name: str | None, as_json: bool) -> int:
    """Ingest an archive safely; print the digest recomputed from its content."""
    from graven.service.context import Context
    from graven.service.transfer import import_archive

    ctx = Context.from_env()
    result = import_archive(ctx, archive, name=name)
    if as_json:
        emit_json(result.to_json())
    else:
        sys.stderr.write(
            f"imported {result.name}: {result.file_count} files, {human_size(result.total_size)}\n"
        )
        click.echo(result.digest)
    return 0


COMMANDS = [artifacts_cmd, show_cmd, verify_cmd, export_cmd, import_cmd]
