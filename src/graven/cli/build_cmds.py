"""``graven init`` and ``graven build``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from graven.cli.app import ArgParser, add_command
from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, human_size, write_differences
from graven.errors import BuildError, GravenError, InputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from graven.build.compare import NotReproducibleError

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``init`` and ``build``."""
    init = add_command(commands, "init", init_cmd)
    init.add_argument(
        "-C",
        "--repo",
        type=Path,
        default=Path("."),
        help="Repository to initialise (default: the current directory).",
    )
    init.add_argument("--name", help="Artifact name (default: the repository's directory name).")
    init.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    build = add_command(commands, "build", build_cmd)
    build.add_argument("revision", nargs="?", default="HEAD", help="The revision to build (default HEAD).")
    build.add_argument(
        "-C",
        "--repo",
        type=Path,
        help="Repository to build from (default: the current directory, or the repository GIT_DIR names).",
    )
    build.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")
    build.add_argument(
        "--no-cache",
        action="store_true",
        help="Re-read and re-hash every file (ignore the blob cache and earlier builds).",
    )
    build.add_argument(
        "--check",
        action="store_true",
        help="Build twice, the second time varied (path, file order, file system, umask, hostname, TZ, "
        "locale, limits, a later second); exit 1 and list the differing paths unless both give the same "
        "manifest.",
    )


def init_cmd(args: argparse.Namespace) -> int:
    """Write a commented starter graven.toml at the repository root."""
    repo: Path = args.repo
    name: str | None = args.name
    from graven.model.pipeline import ARTIFACT_NAME, PIPELINE_FILE, STARTER
    from graven.sources.git import GitRepo

    found = GitRepo.discover(repo)
    if found.bare and found.root.name == ".git":  # run inside a clone's git directory
        raise InputError(
            f"{found.root} is a clone's git directory, not its working tree; run graven init in "
            f"{found.root.parent}"
        )
    if found.bare:
        raise InputError(f"{found.root} is a bare repository; run graven init in a clone with a working tree")
    root = found.root
    target = root / PIPELINE_FILE
    if target.is_symlink() or target.exists():  # a dangling symlink too: never write through it
        raise InputError(f"{target} already exists; edit it instead (graven init never overwrites)")
    if name is None:
        name = _starter_name(root.name)
    elif not ARTIFACT_NAME.fullmatch(name):
        raise InputError(
            f"invalid artifact name {name!r}: use up to 128 lowercase letters, digits, '.', '_', '-' "
            "(starting with a letter or digit)"
        )
    try:
        handle = target.open("x", encoding="utf-8")
    except FileExistsError:  # created meanwhile
        raise InputError(f"{target} already exists; edit it instead (graven init never overwrites)") from None
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with handle:
            handle.write(STARTER.format(name=name))
    except BaseException as exc:  # a full disk, Ctrl-C: no cut starter that the next init would keep
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    if args.as_json:
        emit_json({"path": str(target), "name": name})
    else:
        print(f"wrote {target}; commit it, {_key_step()}then run `graven build`")
    return 0


def _key_step() -> str:
    """The step before a first build when this home has no key to sign it with (else nothing)."""
    import os

    from graven.home import Home
    from graven.signing.keys import KeyStore

    if os.environ.get("GRAVEN_SIGNING_KEY"):
        return ""
    try:
        home = Home.from_env()
        if KeyStore(home.keys).list():
            return ""
    except (GravenError, OSError):  # an unusable home: the build will say what is wrong with it
        return ""
    return "create a signing key with `graven keys generate` (this home has none), "


def _starter_name(directory: str) -> str:
    """A valid artifact name made from a directory name: lowercase, every run of other characters
    replaced by '-', at most 128 characters, starting with a letter or digit ("app" when none is left)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", directory.lower()).strip("-._")
    return name[:128].rstrip("-._") or "app"


def build_cmd(args: argparse.Namespace) -> int:
    """Build REVISION (default HEAD) into a content-addressed artifact; print its digest."""
    revision: str = args.revision
    repo: Path | None = args.repo  # None: the current directory, as git finds it (GIT_DIR in a hook)
    as_json: bool = args.as_json
    check: bool = args.check
    from graven.service.build import build
    from graven.service.context import Context

    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    try:
        result = build(
            ctx,
            path=Path(".") if repo is None else repo,
            revision=revision,
            use_cache=not args.no_cache,
            check=check,
            isolated=repo is not None,
        )
    except BuildError as exc:
        # NotReproducibleError lives in graven.build.compare, which only a --check build (or a step
        # build) loads: when it is not loaded, this is another BuildError (start-up of a plain build)
        compare = sys.modules.get("graven.build.compare")
        if compare is not None and isinstance(exc, compare.NotReproducibleError):
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
            f"{human_size(result.total_size)} ({result.files_read} read"
            + (f", {result.files_from_worktree} from the working tree" if result.files_from_worktree else "")
            # the count is the first build's (which may take blobs from the cache); say so
            + (" by the first build; the second read every file again" if check else "")
            + ")\n"
        )
        if check:
            sys.stderr.write("reproducible: a second build gave the same manifest\n")
        print(result.digest)
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
    write_differences(exc.differences)
