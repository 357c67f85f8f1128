"""Locked inputs: lockfiles, the files a ``[build.fetch]`` phase downloads, and the declared tools.

The fetch phase is the only one with network access, and what it may bring in is fixed by the commit:

- every declared lockfile must be a file of the commit;
- a pip requirements file (a name containing ``requirements`` or ``constraints``, or ending in
  ``.txt``) must carry ``--hash=sha256:...`` on every requirement; a line without one is refused by
  number (``-e``/editable requirements too, since they cannot be hashed);
- every file the fetch phase writes below its outputs must have a sha256 named in a lockfile (for
  other lockfile formats, any 64-digit hex token counts: ``Cargo.lock``, ``uv.lock``, ``SHA256SUMS``).

Each becomes a resolved dependency of the provenance: ``lockfile:<path>``, ``fetched:<path>`` and
``tool:<name>@<version>`` (the sha256 of the executable that PATH finds, after symlinks).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from graven.core.paths import decode_path, display_path
from graven.errors import BuildError, ConfigError, UnsafeInputError
from graven.fstree import make_dirs

__all__ = [
    "FETCHED_PREFIX",
    "LOCKFILE_PREFIX",
    "TOOL_PREFIX",
    "TOOL_SHA256_LINE",
    "FetchedFile",
    "Tool",
    "ToolProbe",
    "check_fetched",
    "check_unchanged_outside",
    "collect_fetched",
    "is_pip_requirements",
    "locked_hashes",
    "pip_locked_hashes",
    "resolve_tools",
]

LOCKFILE_PREFIX = "lockfile:"
FETCHED_PREFIX = "fetched:"
TOOL_PREFIX = "tool:"
TOOL_SHA256_LINE = "graven-tool-sha256"  # the first line a probe prints: the sha256 the steps see

_SHA256_OPTION = re.compile(r"--hash[=\s]+sha256:([0-9a-fA-F]{64})\b")
_ANY_HASH_OPTION = re.compile(r"--hash[=\s]+\S+")
_HEX64 = re.compile(r"(?<![0-9a-fA-F])([0-9a-fA-F]{64})(?![0-9a-fA-F])")
_VERSION = re.compile(r"\d+(?:\.\d+)+[^\s,;()]*")
# Options that stand alone on a line of a requirements file and name no package.
_GLOBAL_OPTIONS = (
    "--index-url",
    "-i",
    "--extra-index-url",
    "--no-index",
    "--find-links",
    "-f",
    "--trusted-host",
    "--prefer-binary",
    "--require-hashes",
    "--only-binary",
    "--no-binary",
    "--pre",
    "--use-feature",
    "--config-settings",
)


def is_pip_requirements(path: str) -> bool:
    """Whether a lockfile is read as a pip requirements file (and must hash every requirement)."""
    name = PurePosixPath(path).name.lower()
    return "requirements" in name or "constraints" in name or name.endswith(".txt")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first physical line number, joined line) with comments removed and continuations joined."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if line.lstrip().startswith("#"):
            line = ""
        else:
            line = re.sub(r"(^|\s)#.*$", "", line)
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        joined = " ".join(part.strip() for part in pending).strip()
        pending = []
        if joined:
            result.append((start, joined))
    if pending:
        joined = " ".join(part.strip() for part in pending).strip()
        if joined:
            result.append((start, joined))
    return result


def pip_locked_hashes(path: str, data: bytes, declared: Iterable[str] = ()) -> set[str]:
    """The sha256 hashes of a pip requirements file; ConfigError naming the first unhashed line.

    ``-r``/``-c`` includes are allowed only when the included file is itself in ``declared``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"lockfile {path}: not valid UTF-8") from None
    hashes: set[str] = set()
    base = PurePosixPath(path).parent
    declared_set = set(declared)
    for number, line in _logical_lines(text):
        where = f"lockfile {path} line {number}"
        first = line.split()[0]
        if first in ("-r", "--requirement", "-c", "--constraint") or first.startswith(
            ("--requirement=", "--constraint=")
        ):
            included = line.split("=", 1)[1] if "=" in first else " ".join(line.split()[1:])
            target = str(base / included.strip()) if str(base) != "." else included.strip()
            if target not in declared_set:
                raise ConfigError(
                    f"{where}: {line!r} includes {target}, which is not a declared lockfile; "
                    "add it to [build.fetch] lockfiles"
                )
            continue
        if first in ("-e", "--editable") or first.startswith("--editable="):
            raise ConfigError(f"{where}: {line!r} is an editable requirement, which cannot be locked by hash")
        if first.startswith("-") and first.split("=", 1)[0] in _GLOBAL_OPTIONS:
            continue
        found = _SHA256_OPTION.findall(line)
        if not found:
            shown = _ANY_HASH_OPTION.sub("", line).strip()
            raise ConfigError(
                f"{where}: {shown!r} has no --hash=sha256:...; every requirement needs one "
                "(pip-compile --generate-hashes or uv pip compile --generate-hashes writes them)"
            )
        hashes.update(h.lower() for h in found)
    return hashes


def locked_hashes(lockfiles: Mapping[str, bytes]) -> set[str]:
    """Every sha256 the declared lockfiles allow the fetch phase to bring in."""
    hashes: set[str] = set()
    for path, data in lockfiles.items():
        if is_pip_requirements(path):
            hashes |= pip_locked_hashes(path, data, lockfiles)
        else:
            hashes |= {h.lower() for h in _HEX64.findall(data.decode("utf-8", "replace"))}
    return hashes


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """A file the fetch phase wrote: its path below the scratch directory and its sha256."""

    path: str
    sha256: str
    size: int


def _sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(source: str, target: Path) -> tuple[str, int]:
    """Copy ``source`` to a new file ``target``; the sha256 and size of the bytes copied."""
    digest = hashlib.sha256()
    size = 0
    make_dirs(target.parent)
    with open(source, "rb") as handle, open(target, "xb") as copy:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            copy.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def collect_fetched(
    work: Path, src: Path, outputs: Iterable[str], snapshot: Path | None = None
) -> list[FetchedFile]:
    """The regular files below ``outputs`` in ``work`` that the fetch phase created or changed.

    A file identical to the commit's own (in ``src``) was not fetched; links and special files are
    refused. With ``snapshot``, each fetched file is copied there (same relative path) as it is read,
    and the sha256 returned is that of the copy: the build steps may change ``work`` afterwards, the
    copy is what was checked.
    """
    found: dict[str, FetchedFile] = {}
    for output in outputs:
        top = output.strip("/")
        full_top = os.path.join(work, top)
        if not os.path.lexists(full_top):
            raise BuildError(f"[build.fetch] outputs: {top} was not created by the fetch steps")
        walk: list[str] = [top]
        while walk:
            rel = walk.pop()
            full = os.path.join(work, rel)
            info = os.lstat(full)
            if stat.S_ISDIR(info.st_mode):
                walk.extend(f"{rel}/{decode_path(os.fsencode(n))}" for n in sorted(os.listdir(full)))
                continue
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeInputError(f"{rel}: the fetch phase may only write regular files")
            if rel in found:  # outputs that overlap
                continue
            copy = None if snapshot is None else snapshot / rel
            sha, size = _sha256_file(full) if copy is None else _copy_hashing(full, copy)
            original = os.path.join(src, rel)
            if os.path.isfile(original) and not os.path.islink(original) and _sha256_file(original)[0] == sha:
                if copy is not None:
                    copy.unlink()
                continue
            found[rel] = FetchedFile(rel, sha, size)
    return [found[k] for k in sorted(found)]


def _kind(info: os.stat_result | None) -> str:
    if info is None:
        return "missing"
    if stat.S_ISDIR(info.st_mode):
        return "directory"
    if stat.S_ISLNK(info.st_mode):
        return "symlink"
    return "file" if stat.S_ISREG(info.st_mode) else "special"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _same_content(one: str, other: str) -> bool:
    with open(one, "rb") as first, open(other, "rb") as second:
        while True:
            a = first.read(1 << 20)
            if a != second.read(len(a) or 1):
                return False
            if not a:
                return True


def _listing(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) and not os.path.islink(path) else []


def _change(work: str, src: str, rel: str, holds_output: bool) -> str | None:
    """How the fetch phase changed ``rel`` (``created``, ``changed``, ``removed``), or None."""
    new, old = _lstat(os.path.join(work, rel)), _lstat(os.path.join(src, rel))
    kind_new, kind_old = _kind(new), _kind(old)
    if new is None or old is None:
        if new is None:
            return "removed"
        return None if kind_new == "directory" and holds_output else "created"
    if kind_new != kind_old:
        return "changed"
    here, there = os.path.join(work, rel), os.path.join(src, rel)
    if kind_new == "symlink":
        return None if os.readlink(here) == os.readlink(there) else "changed"
    if kind_new == "file":
        if stat.S_IMODE(new.st_mode) != stat.S_IMODE(old.st_mode) or new.st_size != old.st_size:
            return "changed"
        return None if _same_content(here, there) else "changed"
    return None  # a directory: what is in it is looked at on its own


def check_unchanged_outside(work: Path, src: Path, outputs: Iterable[str]) -> None:
    """Refuse anything the fetch phase created, changed or removed in ``work`` outside its ``outputs``.

    ``work`` started as a copy of the commit's tree ``src``; only the files below the fetch outputs
    are checked against the lockfiles, so anything else the fetch (with network) wrote there would
    reach the offline build steps unlocked, and be missing when ``--check`` or ``verify --rebuild``
    restores the fetched inputs instead of fetching. A file's content, permissions and kind count, a
    symlink's target too; directories that only lead to a (nested) output may be created. BuildError
    names the first path, how many more there are, and the fix.
    """
    declared = list(outputs)
    tops = [o.strip("/") for o in declared]
    root_work, root_src = os.fspath(work), os.fspath(src)
    changes: list[tuple[str, str]] = []
    pending = [""]
    while pending:
        directory = pending.pop()
        names = set(_listing(os.path.join(root_work, directory))) | set(
            _listing(os.path.join(root_src, directory))
        )
        for name in sorted(names, reverse=True):
            rel = f"{directory}/{name}" if directory else name
            if any(rel == t or rel.startswith(t + "/") for t in tops):
                continue
            holds_output = any(t.startswith(rel + "/") for t in tops)
            try:
                change = _change(root_work, root_src, rel, holds_output)
            except OSError:
                change = "changed"
            if change is not None:
                changes.append((rel, change))
            elif _kind(_lstat(os.path.join(root_work, rel))) == "directory":
                pending.append(rel)
    if not changes:
        return
    changes.sort()
    rel, change = changes[0]
    more = [display_path(path) for path, _ in changes[1:]]
    extra = ""
    if more:
        listed = ", ".join(more[:3]) + (", ..." if len(more) > 3 else "")
        extra = f" (and {len(more)} more: {listed})"
    shown = ", ".join(display_path(o) for o in declared)
    raise BuildError(
        f"the fetch phase {change} {display_path(rel)}{extra} outside [build.fetch] outputs ({shown}): "
        "only files below the outputs are checked against the lockfiles, and nothing else it writes may "
        "reach the build; declare it under [build.fetch] outputs and lock its sha256 in a lockfile, or "
        "leave that work to a build step"
    )


def check_fetched(files: Iterable[FetchedFile], locked: set[str], lockfiles: Iterable[str]) -> None:
    """Refuse a fetched file whose sha256 no lockfile names."""
    names = ", ".join(lockfiles)
    for item in files:
        if item.sha256 not in locked:
            raise BuildError(
                f"{item.path}: fetched file with sha256 {item.sha256} is not locked in {names}; "
                "the fetch phase may only bring in files whose hashes are locked"
            )


@dataclass(frozen=True, slots=True)
class Tool:
    """A declared tool: the name in graven.toml, the file PATH finds, its version line and sha256."""

    name: str
    path: str
    version: str
    sha256: str

    @property
    def ref_name(self) -> str:
        """Its name among the provenance's resolved dependencies."""
        return f"{TOOL_PREFIX}{self.name}@{self.version}"


def _version_of(line: str) -> str:
    match = _VERSION.search(line)
    return match.group(0) if match else line.strip()[:120]


ToolProbe = Callable[[str], tuple[int, bytes]]
"""Runs, where the build steps run (the sandbox), a script that prints ``graven-tool-sha256 HEX`` (the
sha256 of the file PATH names, symlinks resolved), then ``PATH --version``'s output; its exit code and
output."""


def resolve_tools(names: Iterable[str], env: Mapping[str, str], probe: ToolProbe) -> list[Tool]:
    """Find each tool on the steps' PATH (``env``), hash it, and ask ``TOOL --version`` through
    ``probe``: where the steps run, never on the host, since the commit names the tool (an absolute
    path may be a file of the commit itself). The file the steps see must be the one hashed here: a
    path that names another file in the sandbox (through ``/proc/self/cwd``, or a link into it) would
    give the version of one file and the sha256 of another."""
    tools: list[Tool] = []
    for name in names:
        found = name if os.path.isabs(name) else shutil.which(name, path=env.get("PATH"))
        if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
            raise ConfigError(
                f"[build] tools: {name!r} is not an executable on the build PATH (graven's own PATH): "
                "install it, add its directory to PATH before running graven, or leave it out of tools"
            )
        real = os.path.realpath(found)
        try:
            code, output = probe(found)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"[build] tools: `{name} --version` failed: {exc}") from None
        first, _, rest = output.decode(errors="replace").partition("\n")
        seen = first.split()
        if len(seen) != 2 or seen[0] != TOOL_SHA256_LINE:
            raise BuildError(
                f"[build] tools: {name!r} cannot be read where the build steps run (exit {code}); list "
                "programs installed on the build host that the steps can run"
            )
        sha256 = _sha256_file(real)[0]
        if seen[1] != sha256:
            raise BuildError(
                f"[build] tools: {name!r} is another file where the build steps run than on this host; "
                "name a program installed on the build host"
            )
        lines = [line.strip() for line in rest.splitlines() if line.strip()]
        if code != 0 or not lines:
            raise BuildError(
                f"[build] tools: `{name} --version` exited with {code}"
                + ("" if code != 0 else " and printed nothing")
                + " in the build sandbox; list only tools that report a version and that the steps can run"
            )
        tools.append(Tool(name, real, _version_of(lines[0]), sha256))
    return tools
