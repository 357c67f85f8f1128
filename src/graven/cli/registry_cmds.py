"""``graven push`` and ``graven pull``: artifacts to and from an OCI registry."""

from __future__ import annotations

import argparse
import sys

from graven.cli.app import ArgParser, add_command
from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json

__all__ = ["register"]

_REF_HELP = (
    "HOST[:PORT]/REPOSITORY[:TAG]: the registry and repository (HTTPS; plain HTTP for localhost, "
    "127.0.0.0/8 and [::1], or with an http:// prefix)."
)


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``push`` and ``pull``."""
    push = add_command(commands, "push", push_cmd)
    push.add_argument("digest", help="The artifact: a digest or a unique prefix.")
    push.add_argument("target", metavar="REFERENCE", help=_REF_HELP)
    push.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    pull = add_command(commands, "pull", pull_cmd)
    pull.add_argument(
        "source",
        metavar="REFERENCE",
        help="HOST[:PORT]/REPOSITORY:TAG or HOST[:PORT]/REPOSITORY@sha256:... (what push printed).",
    )
    pull.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")


def push_cmd(args: argparse.Namespace) -> int:
    """Push an artifact and its signed provenance to an OCI registry; print where it is, by digest.

    Only an artifact whose provenance a key of this home trusts is pushed. Credentials, when the
    registry needs them: GRAVEN_REGISTRY_USERNAME and GRAVEN_REGISTRY_PASSWORD."""
    digest: str = args.digest
    target: str = args.target
    as_json: bool = args.as_json
    from graven.registry.oci import Reference
    from graven.service import artifacts as svc
    from graven.service.context import Context
    from graven.service.registry import push_artifact

    reference = Reference.parse(target)
    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    resolved = svc.resolve_digest(ctx, digest)
    try:
        result = push_artifact(ctx, resolved, reference)
    finally:
        reporter.close()
    if as_json:
        emit_json(result.to_json())
    else:
        sys.stderr.write(f"pushed {resolved.hex[:12]} ({result.sent} of {result.size} bytes sent)\n")
        print(result.reference)
    return 0


def pull_cmd(args: argparse.Namespace) -> int:
    """Pull an artifact from an OCI registry: checked, imported and verified as graven import does.

    Credentials, when the registry needs them: GRAVEN_REGISTRY_USERNAME and GRAVEN_REGISTRY_PASSWORD."""
    source: str = args.source
    as_json: bool = args.as_json
    from graven.registry.oci import Reference
    from graven.service.context import Context
    from graven.service.registry import pull_artifact

    reference = Reference.parse(source)
    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        result = pull_artifact(ctx, reference)
    finally:
        reporter.close()
    if as_json:
        emit_json(result.to_json())
    else:
        if result.signed_by is None:
            signed = "no trusted signature"
        elif result.trusted_for is not None:
            signed = f"signed by key {result.signed_by[:16]}, trusted for {result.trusted_for}"
        else:
            signed = f"signed by trusted key {result.signed_by[:16]}"
        sys.stderr.write(f"pulled {result.name} from {result.reference} ({signed})\n")
        print(result.digest)
    return 0
