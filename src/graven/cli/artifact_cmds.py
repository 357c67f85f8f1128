"""``graven artifacts``, ``show``, ``verify``, ``export`` and ``import``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graven.cli.app import ArgParser, UsageError, add_command, add_limit, file_path
from graven.cli.context import closing as _closing
from graven.cli.output import (
    TerminalReporter,
    emit_json,
    emit_json_with_list,
    human_size,
    print_table,
    printable,
    printable_message,
    write_differences,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from graven.model.digest import Digest
    from graven.model.manifest import TreeEntry
    from graven.service.artifacts import VerifyReport
    from graven.service.context import Context
    from graven.service.provenance import ProvenanceCheck

__all__ = ["register"]


_FORMATS = ("tar.zst", "tar.gz", "tar")  # graven.archive.writer.ARCHIVE_FORMATS (not imported: start-up)
_DIGEST_HELP = "A digest, or a unique prefix of it (4+ hex digits; `graven artifacts` lists them)."


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``artifacts``, ``show``, ``verify``, ``export`` and ``import``."""
    artifacts = add_command(commands, "artifacts", artifacts_cmd)
    add_limit(artifacts, "Only the newest N artifacts.")
    artifacts.add_argument("--json", dest="as_json", action="store_true", help="Print the list as JSON.")

    show = add_command(commands, "show", show_cmd)
    show.add_argument("digest", help=_DIGEST_HELP)
    what = show.add_mutually_exclusive_group()  # one view at a time: neither is dropped in silence
    what.add_argument(
        "--files",
        dest="list_files",
        action="store_true",
        help="List every entry: type, mode, size, sha256 (12 digits; --json has all) and path.",
    )
    what.add_argument("--provenance", action="store_true", help="Print the signed provenance statement.")
    show.add_argument("--json", dest="as_json", action="store_true", help="Print as JSON.")

    verify = add_command(commands, "verify", verify_cmd)
    verify.add_argument("digest", help=_DIGEST_HELP)
    verify.add_argument(
        "--policy", type=file_path, help="A trust policy file (TOML) instead of GRAVEN_HOME/policy.toml."
    )
    verify.add_argument(
        "--env",
        dest="env",
        help="Check against the keys trusted for this environment (one that the artifact's graven.toml "
        "defines, deployed to here, or in the trust policy; another name is refused).",
    )
    verify.add_argument("--json", dest="as_json", action="store_true", help="Print the report as JSON.")
    verify.add_argument(
        "--rebuild",
        action="store_true",
        help="Also rebuild from the recorded commit and inputs and confirm the same digest.",
    )
    verify.add_argument(
        "-C",
        "--repo",
        dest="rebuild_repo",
        metavar="REPO",
        type=Path,
        help="With --rebuild: the repository to rebuild from (default: the recorded local repository).",
    )

    export = add_command(commands, "export", export_cmd)
    export.add_argument("digest", help=_DIGEST_HELP)
    export.add_argument(
        "-o",
        "--output",
        type=file_path,
        required=True,
        help="Archive to write: .tar, .tar.gz (.tgz) or .tar.zst (.tzst): the name says which; - writes it "
        "to standard output (a pipe or a file, never a terminal).",
    )
    export.add_argument(
        "--format",
        dest="archive_format",
        choices=_FORMATS,
        help="The archive's compression: tar.zst (the default for -o -), tar.gz or tar (plain). With a "
        "file name, it must agree with the name's ending.",
    )
    export.add_argument("--attestation", type=_side_file, help="Also write the DSSE envelope here.")
    export.add_argument("--bundle", type=_side_file, help="Also write a Sigstore bundle (v0.3) here.")
    export.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    import_ = add_command(commands, "import", import_cmd)
    import_.add_argument(
        "archive",
        type=file_path,
        help="The archive (.tar, .tar.gz or .tar.zst); - reads it from standard input.",
    )
    import_.add_argument(
        "--name",
        help="Artifact name (lowercase letters, digits, '.', '_', '-'), instead of the one the archive "
        "claims or, without a claim, one made from the file name.",
    )
    import_.add_argument(
        "--attestation",
        type=file_path,
        help="The artifact's signed provenance (DSSE envelope or Sigstore bundle).",
    )
    import_.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")


def _side_file(text: str) -> Path:
    """``export --attestation`` and ``--bundle``: a file. ``-`` is standard output for ``-o`` alone:
    here it made a file named ``-`` in the current directory (``./-`` still does)."""
    if text == "-":
        raise argparse.ArgumentTypeError(
            "- is standard output only for -o (the archive); give a file name (./- for a file named -)"
        )
    return file_path(text)


def artifacts_cmd(args: argparse.Namespace) -> int:
    """List stored artifacts, newest first."""
    limit: int | None = args.limit
    as_json: bool = args.as_json
    from graven.home import Home

    home = Home.from_env()
    # an empty home: answer without loading the database layer (a home whose log key signed
    # entries, log/in-use, lost its database: the use case says so)
    if not home.has_database() and not (home.root / "log" / "in-use").exists():
        if as_json:
            emit_json([])
        else:
            print("no artifacts yet; run `graven build` in a repository with a graven.toml")
        return 0
    from graven.service.artifacts import list_artifacts
    from graven.service.context import Context

    records = list_artifacts(_closing(Context(home=home)), limit=limit)
    if as_json:
        emit_json([r.to_json() for r in records])
        return 0
    if not records:
        print("no artifacts yet; run `graven build` in a repository with a graven.toml")
        return 0
    print_table(
        ["digest", "name", "commit", "files", "size", "created"],
        [
            [
                r.digest[7:19],
                r.name,  # print_table escapes every cell
                (r.commit or "-")[:12],
                str(r.file_count),
                human_size(r.total_size),
                r.created_at[:19].replace("T", " "),
            ]
            for r in records
        ],
    )
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    """Show one artifact: where it came from and a summary of its files."""
    digest: str = args.digest
    list_files: bool = args.list_files
    provenance: bool = args.provenance
    as_json: bool = args.as_json
    from graven.service import artifacts as svc
    from graven.service.context import Context

    ctx = _closing(Context.from_env(TerminalReporter()))
    resolved = svc.resolve_digest(ctx, digest)
    if provenance:
        return _show_provenance(ctx, resolved, as_json=as_json)
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
        if list_files:  # written one entry at a time (a million files), in the key's sorted place
            emit_json_with_list(doc, "entries", (e.to_json() for e in manifest.entries))
        else:
            emit_json(doc)
        return 0
    lines = [
        ("digest", record.digest),
        ("name", printable(record.name)),
        ("commit", printable(record.commit or "-")),
        ("repository", printable(record.repository or "-")),
        ("revision", printable(record.revision or "-")),
        ("commit time", f"{_utc(record.source_date_epoch)} ({record.source_date_epoch})"),
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
        print(f"{key + ':':<13}{value}")
    print()
    print_table(
        ["path", "files", "size"],
        [[t["path"], str(t["files"]), human_size(t["size"])] for t in summary["top_level"]],
    )
    if list_files:
        print()
        _print_entries(manifest.entries)
    return 0


def _print_entries(entries: Sequence[TreeEntry]) -> None:
    """``show --files``: the table :func:`print_table` prints, written a row at a time (an artifact
    of a million files is not held again as rows): the columns before the path are measured first;
    the path's width does not matter (it is last, and a line's trailing spaces are cut)."""
    headers = ["type", "mode", "size", "sha256", "path"]
    widths = [len(h) for h in headers]
    for entry in entries:
        row = _entry_row(entry.to_json())
        widths[:4] = [max(w, len(printable(cell))) for w, cell in zip(widths[:4], row[:4], strict=True)]
    write = sys.stdout.write
    write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for entry in entries:
        row = [printable(cell) for cell in _entry_row(entry.to_json())]
        write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _entry_row(entry: dict[str, object]) -> list[str]:
    """One line of ``show --files``: type, mode, size and digest (12 hex digits, as ``artifacts``
    shows them) of a file; a symlink's path ``-> target``; an empty directory's path with a ``/``.
    What a kind does not have is ``-``; every cell is escaped by print_table (``\u202e``)."""
    kind, path = str(entry["type"]), str(entry["path"])
    if kind == "file":
        size = entry["size"]
        assert isinstance(size, int)
        return [kind, str(entry["mode"]), human_size(size), str(entry["sha256"])[:12], path]
    if kind == "symlink":
        return [kind, "-", "-", "-", f"{path} -> {entry['target']}"]
    return [kind, "-", "-", "-", f"{path}/"]


def _utc(epoch: int) -> str:
    """``epoch`` as ``YYYY-MM-DD HH:MM:SS UTC``; a time out of range (recorded by an older graven's
    import) is said to be so rather than crash ``show``."""
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _show_provenance(ctx: Context, digest: Digest, *, as_json: bool) -> int:
    import json

    from graven.service.provenance import preferred_envelope
    from graven.signing.bundle import load_attestation

    data, verified = preferred_envelope(ctx, digest)  # the newest one the trust policy accepts
    envelope = load_attestation(data)
    statement = json.loads(envelope.payload)
    if verified is None:  # as export says it: what is shown is no provenance this home accepts
        ctx.reporter.warn(
            f"no stored provenance of {digest} verifies against this home's trust policy; the newest "
            "one is shown as stored (`graven verify` says why it does not verify)"
        )
    if as_json:
        emit_json(
            {
                "payloadType": envelope.payload_type,
                "keyids": [sig.keyid for sig in envelope.signatures],
                "verified_keyid": verified,
                "statement": statement,
            }
        )
    else:
        # the key ids are what the envelope says: any string an imported or pulled attestation holds
        print(f"payloadType: {printable(envelope.payload_type)}")
        print(f"signed by:   {', '.join(printable(sig.keyid) for sig in envelope.signatures)}")
        if verified is not None:
            print(f"(verified with trusted key {verified}; `graven verify` checks the whole artifact)")
        print(json.dumps(statement, indent=2, sort_keys=True))
    return 0


def verify_cmd(args: argparse.Namespace) -> int:
    """Re-hash an artifact and check its signed provenance; exit 1 if anything is wrong."""
    digest: str = args.digest
    policy: Path | None = args.policy
    env: str | None = args.env
    if env is not None:  # a name no environment can have would fall back to the default keys
        from graven.deploy.settings import check_env_name

        check_env_name(env)
    as_json: bool = args.as_json
    rebuild: bool = args.rebuild
    rebuild_repo: Path | None = args.rebuild_repo
    from graven.service import artifacts as svc
    from graven.service.context import Context
    from graven.service.provenance import load_policy

    if rebuild_repo is not None and not rebuild:
        raise UsageError("-C/--repo is only used with --rebuild", "graven verify")
    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    resolved = svc.resolve_digest(ctx, digest)
    trust = load_policy(ctx, policy)
    try:
        verdict = svc.verify(ctx, resolved, policy=trust, env=env)
    finally:
        reporter.close()
    report, provenance, ok = verdict.report, verdict.provenance, verdict.ok
    if rebuild:
        return _verify_rebuild(ctx, resolved, rebuild_repo, report, provenance, ok=ok, as_json=as_json)
    if as_json:
        emit_json({**report.to_json(), "ok": ok, "provenance": provenance.to_json()})
    elif ok:
        print(f"ok {resolved} ({report.objects_checked} objects verified; {provenance.reason})")
    else:
        _print_problems(ctx, resolved, report, provenance)
    return 0 if ok else 1


def _print_problems(
    ctx: Context,
    resolved: Digest,
    report: VerifyReport,
    provenance: ProvenanceCheck,
    *,
    not_rebuilt: bool = False,
) -> None:
    """The per-object lines, then one ``graven: error:`` line with every verdict of a failed verify
    and how to put back what is damaged, on stderr (nothing when it did not fail)."""
    from graven.service.artifacts import restore_hint

    for problem in report.problems:
        sys.stderr.write(printable(f"{problem.kind}: {problem.path} (object {problem.object})") + "\n")
    verdicts = [] if report.ok else [f"{len(report.problems)} missing or corrupt"]
    hint = restore_hint(ctx, resolved, report)
    if not provenance.ok:
        verdicts.append(provenance.reason)
    if not_rebuilt:
        verdicts.append("not rebuilt, as its provenance does not verify")
    if hint:
        verdicts.append(hint)
    if verdicts:
        line = f"graven: error: {resolved} failed verification: {'; '.join(verdicts)}"
        sys.stderr.write(printable_message(line) + "\n")


def _verify_rebuild(
    ctx: Context,
    resolved: Digest,
    repo: Path | None,
    report: VerifyReport,
    provenance: ProvenanceCheck,
    *,
    ok: bool,
    as_json: bool,
) -> int:
    """``verify --rebuild``: the usual checks, then a rebuild that must give the same digest."""
    from graven.errors import CheckFailedError
    from graven.service.artifacts import record_verify_failure
    from graven.service.reproduce import rebuild

    if not provenance.ok:  # never run steps that an unverified provenance names
        if as_json:
            emit_json({**report.to_json(), "ok": False, "provenance": provenance.to_json(), "rebuild": None})
            return 1
        _print_problems(ctx, resolved, report, provenance, not_rebuilt=True)
        return 1
    try:
        result = rebuild(ctx, resolved, repo=repo, envelope=provenance.envelope)
    except CheckFailedError as exc:  # a check that said no (a step failed, another graven.toml)
        # the step's last lines stay out of the permanent log (the error shows them)
        record_verify_failure(ctx, resolved, str(exc).partition("; last lines:")[0])
        raise
    if not result.ok:
        changed = len(result.differences)
        reason = f"rebuild of {result.commit[:12]} gave {result.rebuilt} ({changed} paths differ)"
        record_verify_failure(ctx, resolved, reason)
    ok = ok and result.ok
    if as_json:
        emit_json(
            {**report.to_json(), "ok": ok, "provenance": provenance.to_json(), "rebuild": result.to_json()}
        )
        return 0 if ok else 1
    _print_problems(ctx, resolved, report, provenance)
    for note in result.notes:
        sys.stderr.write(f"note: {printable_message(note)}\n")
    if not result.ok:
        write_differences(result.differences)
        count = len(result.differences)
        sys.stderr.write(
            f"graven: error: rebuild of {result.commit[:12]} gave {result.rebuilt}, not {resolved} "
            f"({count} differing path{'' if count == 1 else 's'})\n"
        )
    if ok:
        print(
            f"ok {resolved} ({report.objects_checked} objects verified; {provenance.reason}; "
            f"rebuilt from {result.commit[:12]}: same digest)"
        )
    return 0 if ok else 1


def export_cmd(args: argparse.Namespace) -> int:
    """Write an artifact as a deterministic archive (same artifact, same bytes).

    `-o -` writes the archive to standard output (`graven export D -o - | ssh host graven import -`):
    the same bytes as `-o FILE` of that format (--format, tar.zst by default); anything else graven
    says goes to stderr."""
    digest: str = args.digest
    output: Path = args.output
    archive_format: str | None = args.archive_format
    attestation: Path | None = args.attestation
    bundle: Path | None = args.bundle
    as_json: bool = args.as_json
    to_stdout = str(output) == "-"  # as for import and tar -f -
    if to_stdout:
        _check_stdout_for_archive(as_json=as_json, others=(attestation, bundle))
    from graven.service import artifacts as svc
    from graven.service.context import Context
    from graven.service.transfer import check_outputs, export_artifact, prepare_attestation

    if not to_stdout and archive_format is not None:
        _check_format_agrees(output, archive_format)
    # not half an export for a mistyped --attestation path
    check_outputs(None if to_stdout else output, attestation, bundle)
    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    resolved = svc.resolve_digest(ctx, digest)
    write_attestation = None
    if attestation is not None or bundle is not None:
        # made before anything is written: an attestation that cannot be exported stops the export
        write_attestation = prepare_attestation(ctx, resolved, envelope_path=attestation, bundle_path=bundle)
        # written beside their paths first: a full disk there stops the export before it replaces
        # anything (it left the new archive without its attestation)
        write_attestation.stage()
    size = 0
    try:
        if to_stdout:
            size = _export_to_stdout(ctx, resolved, archive_format or "tar.zst")
        else:
            # an attestation left there by an earlier export goes right before the new archive is
            # renamed into place (a crash review found B's archive beside A's attestation; a failed
            # export keeps the old pair)
            replaces = (attestation, bundle) if write_attestation else ()
            export_artifact(ctx, resolved, output, replaces=replaces)
    except BaseException:
        if write_attestation is not None:
            write_attestation.discard()
        raise
    finally:
        reporter.close()
    if write_attestation is not None:
        write_attestation.commit()
    if to_stdout:  # stdout holds the archive, and only the archive
        sys.stderr.write(
            f"wrote {human_size(size)} ({archive_format or 'tar.zst'}) for {resolved} to standard output\n"
        )
    elif as_json:
        emit_json({"digest": str(resolved), "output": str(output), "size": output.stat().st_size})
    else:
        print(f"wrote {printable(str(output))} ({human_size(output.stat().st_size)}) for {resolved}")
    return 0


def _check_stdout_for_archive(*, as_json: bool, others: tuple[Path | None, ...]) -> None:
    """Refuse ``-o -`` where the archive cannot go: with --json (which stdout would carry too), to a
    terminal (binary that would garble it), to a standard output closed before graven started, or to
    the file that --attestation or --bundle (``others``) names (renamed over it at the end)."""
    import os

    if as_json:
        raise UsageError(
            "--json and -o - both write to standard output; give -o FILE to have the result as JSON",
            "graven export",
        )
    if sys.__stdout__ is None:  # `>&-`: the CLI's stdout is a stand-in that writes nowhere
        raise UsageError("-o -: standard output is closed; redirect it to a file or a pipe", "graven export")
    if sys.stdout.isatty():
        raise UsageError(
            "-o - would write the archive to a terminal; redirect standard output (> FILE, | COMMAND) "
            "or give -o FILE",
            "graven export",
        )
    try:
        written = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a file descriptor (graven run in-process)
        return
    for other in others:
        try:
            same = other is not None and os.path.samestat(written, os.stat(other))
        except OSError:
            continue
        if same:
            raise UsageError(
                f"standard output is {printable(str(other))}, which --attestation or --bundle names "
                "too; give each output its own file",
                "graven export",
            )


def _check_format_agrees(output: Path, archive_format: str) -> None:
    """Refuse a --format that the name of ``output`` contradicts (its ending decides the format)."""
    from graven.archive.writer import ARCHIVE_FORMATS, compression_for

    named = compression_for(output)  # an unknown ending is refused as without --format
    if ARCHIVE_FORMATS[archive_format] != named:
        meant = next(name for name, compression in ARCHIVE_FORMATS.items() if compression == named)
        raise UsageError(
            f"--format {archive_format} contradicts -o {printable(str(output))}, whose name makes it "
            f"{meant}; drop --format or end the name in .{archive_format}",
            "graven export",
        )


def _export_to_stdout(ctx: Context, resolved: Digest, archive_format: str) -> int:
    """The archive on standard output, as bytes; the number written. A closed pipe (the reader left)
    ends the command as it ends any other's (exit 141)."""
    from graven.service.transfer import export_to_stream

    sys.stdout.flush()  # nothing was printed: the archive is the first byte there
    return export_to_stream(ctx, resolved, sys.stdout.buffer, archive_format, name="standard output")


def import_cmd(args: argparse.Namespace) -> int:
    """Ingest an archive safely; print the digest recomputed from its content."""
    archive: Path = args.archive
    name: str | None = args.name
    attestation: Path | None = args.attestation
    as_json: bool = args.as_json
    from graven.service.context import Context
    from graven.service.transfer import import_archive

    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        result = import_archive(ctx, archive, name=name, attestation=attestation)
    finally:
        reporter.close()
    if as_json:
        emit_json(result.to_json())
    else:
        sys.stderr.write(
            f"imported {result.name}: {result.file_count} files, {human_size(result.total_size)}\n"
        )
        print(result.digest)
    return 0
