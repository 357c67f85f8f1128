"""Comparing two builds of the same commit: which paths differ, and how (content, size, mode, type).

:func:`diff_entries` is pure; :func:`diffoscope_summary` runs ``diffoscope`` (when it is installed) on
the two versions of one file and keeps the start of its report. Those files are what the commit's
steps made: diffoscope (and the tools it runs on them: archivers, binutils, decompilers) parses hostile
input, so it runs with an environment of its own, never graven's (tokens, passwords), and confined as
the steps were when the caller gives a :data:`Confine` (the sandbox: service/hermetic.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from graven.errors import BuildError
from graven.model.digest import Digest
from graven.model.manifest import FileEntry, SymlinkEntry, TreeEntry

__all__ = [
    "DIFFOSCOPE_FILES",
    "Confine",
    "Difference",
    "HashOnlyBatch",
    "NotReproducibleError",
    "diff_entries",
    "diffoscope_summary",
    "with_diffoscope",
]

DIFFOSCOPE_LINES = 12
DIFFOSCOPE_FILES = 10  # files summarized per comparison (in path order); the rest are only listed
DIFFOSCOPE_TIMEOUT = 120
DIFFOSCOPE_OPTIONS = ("--no-progress", "--text", "-")

Confine = Callable[[str, Path, Path, str, Path], list[str]]
"""How diffoscope runs on ``path`` of two trees: ``(tool, a_root, b_root, path, scratch)`` -> the
command line (``scratch``: an empty private directory for its HOME and temp files). Its environment
is :func:`diffoscope_environment` of ``scratch``."""


def unconfined(tool: str, a_root: Path, b_root: Path, path: str, scratch: Path) -> list[str]:
    """diffoscope on the host (a build whose steps ran there too: ``sandbox = "none"``)."""
    return [tool, *DIFFOSCOPE_OPTIONS, str(a_root / path), str(b_root / path)]


def diffoscope_environment(scratch: Path) -> dict[str, str]:
    """All of diffoscope's environment: the host's PATH, a fixed locale, HOME and TMPDIR in
    ``scratch``; nothing else of graven's (a registry password, a cloud key, GRAVEN_*)."""
    return {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }


@dataclass(frozen=True)
class Difference:
    """One path whose entry differs between build ``a`` and build ``b``.

    ``aspects`` are among ``content``, ``size``, ``mode``, ``type``, ``target``, ``missing``.
    """

    path: str
    aspects: tuple[str, ...]
    detail: str
    a: TreeEntry | None = None
    b: TreeEntry | None = None
    diffoscope: str | None = None

    def line(self) -> str:
        """One line for a terminal."""
        return f"{self.path}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "path": self.path,
            "differs": list(self.aspects),
            "detail": self.detail,
            "a": self.a.to_json() if self.a is not None else None,
            "b": self.b.to_json() if self.b is not None else None,
            "diffoscope": self.diffoscope,
        }


def _kind(entry: TreeEntry) -> str:
    if isinstance(entry, FileEntry):
        return "file"
    if isinstance(entry, SymlinkEntry):
        return "symlink"
    return "dir"


def _mode(entry: FileEntry) -> str:
    return f"{entry.mode:04o}"


def _compare(path: str, a: TreeEntry, b: TreeEntry) -> Difference | None:
    if type(a) is not type(b):
        return Difference(path, ("type",), f"type ({_kind(a)} != {_kind(b)})", a, b)
    if isinstance(a, FileEntry) and isinstance(b, FileEntry):
        aspects: list[str] = []
        parts: list[str] = []
        if a.sha256 != b.sha256:
            aspects.append("content")
            parts.append(f"content (sha256 {a.sha256[:12]} != {b.sha256[:12]})")
        if a.size != b.size:
            aspects.append("size")
            parts.append(f"size ({a.size} != {b.size})")
        if a.executable != b.executable:
            aspects.append("mode")
            parts.append(f"mode ({_mode(a)} != {_mode(b)})")
        if not aspects:
            return None
        return Difference(path, tuple(aspects), ", ".join(parts), a, b)
    if isinstance(a, SymlinkEntry) and isinstance(b, SymlinkEntry) and a.target != b.target:
        return Difference(path, ("target",), f"symlink target ({a.target!r} != {b.target!r})", a, b)
    return None


def diff_entries(
    a: Iterable[TreeEntry], b: Iterable[TreeEntry], labels: tuple[str, str] = ("first build", "second build")
) -> list[Difference]:
    """Every path whose entries differ, sorted by path."""
    left = {e.path: e for e in a}
    right = {e.path: e for e in b}
    result: list[Difference] = []
    for path in sorted(left.keys() | right.keys()):
        x, y = left.get(path), right.get(path)
        if x is None or y is None:
            present = labels[0] if y is None else labels[1]
            entry = x if x is not None else y
            assert entry is not None
            result.append(Difference(path, ("missing",), f"only in the {present} ({_kind(entry)})", x, y))
            continue
        found = _compare(path, x, y)
        if found is not None:
            result.append(found)
    return result


@contextlib.contextmanager
def _scratch_dir(scratch: Path | None) -> Iterator[Path]:
    """``scratch`` (made 0700 when missing), else a temporary directory removed at the end."""
    if scratch is not None:
        scratch.mkdir(mode=0o700, exist_ok=True)
        yield scratch
        return
    with tempfile.TemporaryDirectory(prefix="graven-diffoscope-") as made:
        yield Path(made)


def diffoscope_summary(
    a_root: Path,
    b_root: Path,
    path: str,
    *,
    diffoscope: str | None = None,
    confine: Confine | None = None,
    scratch: Path | None = None,
) -> str | None:
    """The first lines of ``diffoscope``'s text report on ``path`` of ``a_root`` vs ``b_root`` (run as
    ``confine`` says, else on the host; in ``scratch``, else a temporary directory of its own); None
    when it is not installed."""
    tool = diffoscope or shutil.which("diffoscope")
    if tool is None:
        return None
    with _scratch_dir(scratch) as home:
        argv = (confine or unconfined)(tool, a_root, b_root, path, home)
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                env=diffoscope_environment(home),
                timeout=DIFFOSCOPE_TIMEOUT,
                check=False,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(diffoscope failed: {exc})"
    lines = [line for line in result.stdout.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return None
    shown = lines[:DIFFOSCOPE_LINES]
    if len(lines) > len(shown):
        shown.append(f"... ({len(lines) - len(shown)} more lines)")
    return "\n".join(shown)


def with_diffoscope(
    differences: Sequence[Difference],
    a_root: Path | None,
    b_root: Path | None,
    *,
    diffoscope: str | None = None,
    confine: Confine | None = None,
    scratch: Path | None = None,
) -> list[Difference]:
    """Add diffoscope's summary to each differing regular file present on both sides (when installed),
    the first :data:`DIFFOSCOPE_FILES` of them only (each run may take up to
    :data:`DIFFOSCOPE_TIMEOUT` seconds: a build that differs in every file would wait hours for
    summaries nobody reads), each run confined by ``confine`` (else on the host, with an environment
    of its own). ``scratch`` (made, 0700) holds its HOME and temp files: in a build's workspace, which
    the next build reclaims after a kill; else a temporary directory of its own."""
    tool = diffoscope or shutil.which("diffoscope")
    if tool is None or a_root is None or b_root is None:
        return list(differences)
    result: list[Difference] = []
    runs = 0
    with _scratch_dir(scratch) as home:
        for item in differences:
            if (
                runs < DIFFOSCOPE_FILES
                and isinstance(item.a, FileEntry)
                and isinstance(item.b, FileEntry)
                and "content" in item.aspects
            ):
                runs += 1
                summary = diffoscope_summary(
                    a_root, b_root, item.path, diffoscope=tool, confine=confine, scratch=home
                )
                result.append(replace(item, diffoscope=summary))
            else:
                result.append(item)
    return result


class HashOnlyBatch:
    """Stands in for a store batch where a build must not write to the store: it only hashes.

    It has the methods that collecting a tree uses (``add``, ``add_known``, ``add_stream``).
    """

    def __contains__(self, digest: Digest) -> bool:
        return False

    def add(self, data: bytes, **_options: object) -> Digest:
        """The digest of ``data``."""
        return Digest(hashlib.sha256(data).hexdigest())

    def add_known(self, digest: Digest, data: bytes) -> None:
        """Nothing to do: the caller hashed it."""
        del digest, data

    def add_stream(self, stream: BinaryIO, size: int) -> Digest:
        """The digest of what ``stream`` holds."""
        del size
        digest = hashlib.sha256()
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
        return Digest(digest.hexdigest())


class NotReproducibleError(BuildError):
    """Two builds of the same commit gave different manifests (``graven build --check``)."""

    def __init__(self, commit: str, differences: Sequence[Difference], variations: Sequence[str]) -> None:
        count = len(differences)
        noun = "path differs" if count == 1 else "paths differ"
        super().__init__(
            f"not reproducible: {count} {noun} between two builds of {commit[:12]}; "
            f"the second varied {', '.join(variations)}"
        )
        self.commit = commit
        self.differences = list(differences)
        self.variations = list(variations)
