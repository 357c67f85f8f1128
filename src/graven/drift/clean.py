"""The snapshot of a clean check: ``PATH/.graven/drift/clean`` (``graven.drift-clean/v1``).

When a check finds an environment clean and every directory and file of its release is backed by a
verified stat record (:mod:`graven.drift.cache`: content hashed or vouched for by the deploy, times
older than the recording), graven writes those records *with their paths*, bound to everything else
the verdict depended on (:func:`binding`): the environment, its path, the release, the config, the
graven.toml the deployment used, the trust policy (its files' digest: the ignore globs come from a
provenance that verified under it), the device, and what ``current`` and ``config`` held.

The next default check starts here (:func:`unchanged`): one ``lstat`` per directory and file, one
``readlink`` per symlink. When everything is as recorded and the binding is the same, the check that
wrote the snapshot would reach the same verdict again, so the check is done without reading the
manifest or the provenance (nor importing what reads them). Anything else, however small, and the
full default check runs (:mod:`graven.drift.scan`) and writes a new snapshot when it is clean again.

On disk: the format line, a JSON header line (the binding and the counts), the paths (UTF-8, NUL
between them: directories, files, symlinks, then the symlinks' targets), the records (little-endian
int64: three per directory, then five per file), then the HMAC-SHA256 of everything before it under
the home's record key (:mod:`graven.deploy.recordkey`). The tag is checked before anything is decoded;
a file that is unreadable, for another binding, or not authenticated is ignored (it is a cache).
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import stat
import sys
from itertools import chain

from graven import __version__
from graven.deploy.recordkey import TAG_SIZE, read_record_file, tag, verify
from graven.home import policy_key_id, policy_key_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "CLEAN_FORMAT",
    "CleanSnapshot",
    "binding",
    "decode",
    "encode",
    "load",
    "trust_fingerprint",
    "unchanged",
]

CLEAN_FORMAT = "graven.drift-clean/v1"
# bump when what a check reports changes: older snapshots then no longer answer (2: attributes; 3: groups)
RULES = 3
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TRUST_FILE_MAX = 1 << 20

Binding = dict[str, "str | int"]
DirRecord = tuple[int, int, int]  # st_ino, st_mtime_ns, st_ctime_ns
FileRecord = tuple[int, int, int, int, int]  # st_ino, st_size, st_mtime_ns, st_ctime_ns, st_mode


class CleanSnapshot:
    """Paths and verified stat records of one release that a check found clean (directories parents
    first, ``""`` the release itself), and the symlinks with their targets. Paths are bytes (as the
    file system names them); records are flat int64 arrays: three per directory (ino, mtime_ns,
    ctime_ns), five per file (ino, size, mtime_ns, ctime_ns, st_mode)."""

    __slots__ = ("binding", "dir_records", "dirs", "file_records", "files", "links", "targets")

    def __init__(  # noqa: PLR0917 (one record: every field is needed)
        self,
        binding: Binding,
        dirs: list[bytes],
        dir_records: array.array[int],
        files: list[bytes],
        file_records: array.array[int],
        links: list[bytes],
        targets: list[bytes],
    ) -> None:
        self.binding = binding
        self.dirs = dirs
        self.dir_records = dir_records
        self.files = files
        self.file_records = file_records
        self.links = links
        self.targets = targets


def binding(
    *,
    env: str,
    path: str,
    release: str,
    config: str | None,
    pipeline: str | None,
    trust: str,
    dev: int,
    current: tuple[str, str | None],
    config_link: tuple[str, str | None],
) -> Binding:
    """What a clean verdict depended on besides the release's own files (see the module)."""
    return {
        "rules": f"{RULES}/{__version__}",
        "env": env,
        "path": path,
        "release": release,
        "config": config or "",
        "pipeline": pipeline or "",
        "trust": trust,
        "dev": dev,
        "current": f"{current[0]}:{current[1] or ''}",
        "config_link": f"{config_link[0]}:{config_link[1] or ''}",
    }


def trust_fingerprint(trust_dir: Path, policy: Path | None = None) -> str:
    """The sha256 of the trust policy's files (every regular file in ``trust_dir`` whose name does not
    start with a dot: trusted keys and the revocation list), by name, and of the policy file ``policy``
    (``GRAVEN_HOME/policy.toml``) with every key file it names, when it exists; "" when one cannot be
    read (then no snapshot matches: the check verifies the provenance again, or names what is wrong)."""
    digest = hashlib.sha256(b"graven.trust-fingerprint/v1\0")
    try:
        names = sorted(os.listdir(trust_dir))
    except FileNotFoundError:
        names = []
    except OSError:
        return ""
    # (name, bytes or None): the trust files by name, then the policy and its key files by a name with
    # a "/", which no name in trust_dir has; a key file that is missing or no regular file is recorded
    # as such (the trust policy refuses it: no check is clean while it is)
    found: list[tuple[str, bytes | None]] = []
    for name in names:
        if name.startswith("."):
            continue
        try:  # read through symlinks (as the trust policy does), never blocking on a FIFO
            data = _regular_file(trust_dir / name)
        except (OSError, ValueError):
            return ""
        if data is not None:  # the trust policy reads regular files only
            found.append((name, data))
    if policy is not None and os.path.lexists(policy):
        import tomllib

        try:
            data = _regular_file(policy)
            doc = tomllib.loads(data.decode("utf-8")) if data is not None else {}
        except (OSError, ValueError):  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
            return ""
        found.append(("/policy.toml", data))
        for path in _policy_key_files(policy, doc):
            try:
                found.append((f"/key {path}", _regular_file(path)))
            except FileNotFoundError:
                found.append((f"/key {path}", None))
            except (OSError, ValueError):
                return ""
    for name, data in found:
        encoded = name.encode("utf-8", "surrogateescape")
        content = hashlib.sha256(data).digest() if data is not None else b"-"
        digest.update(len(encoded).to_bytes(4, "big") + encoded + content)
    return digest.hexdigest()


def _regular_file(path: Path) -> bytes | None:
    """The bytes of the regular file at ``path`` (through symlinks, never blocking on a FIFO), None when
    it is something else; OSError when it cannot be read, ValueError when it is too large."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > _TRUST_FILE_MAX:
            raise ValueError(f"{path} is too large")
        return os.read(fd, _TRUST_FILE_MAX + 1)
    finally:
        os.close(fd)


def _policy_key_files(policy: Path, doc: dict[str, object]) -> list[Path]:
    """The key files the policy ``doc`` names by path (its ``keys`` and ``[env.NAME] keys``), sorted."""
    lists = [doc.get("keys")]
    envs = doc.get("env")
    if isinstance(envs, dict):
        lists.extend(section.get("keys") for section in envs.values() if isinstance(section, dict))
    entries = {e for found in lists if isinstance(found, list) for e in found if isinstance(e, str)}
    return sorted({policy_key_path(policy, e) for e in entries if policy_key_id(e) is None and "\0" not in e})


def _fs(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def encode(
    key: bytes,
    bound: Binding,
    *,
    dirs: Sequence[str],
    dir_records: Sequence[DirRecord],
    files: Sequence[str],
    file_records: Sequence[FileRecord],
    links: Sequence[str],
    targets: Sequence[str],
) -> bytes:
    """The file's bytes, tagged under ``key``."""
    if len(dirs) != len(dir_records) or len(files) != len(file_records) or len(links) != len(targets):
        raise ValueError("every path needs exactly one record")
    if not dirs or dirs[0] != "":
        raise ValueError("the first directory is the release itself")
    strings = (*dirs, *files, *links, *targets)
    joined = "\0".join(strings)
    if joined.count("\0") != len(strings) - 1:
        raise ValueError("a path or target holds a NUL byte")
    names = _fs(joined)  # no name holds a NUL, so split(b"\0") gives them back exactly
    values = array.array("q", list(chain.from_iterable(dir_records)))
    values.extend(list(chain.from_iterable(file_records)))
    if sys.byteorder == "big":
        values.byteswap()
    header: dict[str, object] = dict(bound)
    header["_counts"] = {"dirs": len(dirs), "files": len(files), "links": len(links), "names": len(names)}
    data = b"\n".join(
        (
            CLEAN_FORMAT.encode(),
            json.dumps(header, sort_keys=True, separators=(",", ":")).encode(),
            names + values.tobytes(),
        )
    )
    return data + tag(key, data)


def decode(key: bytes, data: bytes) -> CleanSnapshot | None:
    """The snapshot in ``data`` when its tag verifies under ``key`` and it is well formed; else None."""
    if len(data) < TAG_SIZE or not verify(key, data[:-TAG_SIZE], data[-TAG_SIZE:]):
        return None
    try:
        magic, header, body = data[:-TAG_SIZE].split(b"\n", 2)
        if magic != CLEAN_FORMAT.encode():
            return None
        bound = json.loads(header)
        counts = bound.pop("_counts")
        n_dirs, n_files, n_links, n_names = (
            int(counts["dirs"]),
            int(counts["files"]),
            int(counts["links"]),
            int(counts["names"]),
        )
        names = body[:n_names].split(b"\0")
        values = array.array("q")
        values.frombytes(body[n_names:])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if sys.byteorder == "big":
        values.byteswap()
    if len(names) != n_dirs + n_files + 2 * n_links or len(values) != 3 * n_dirs + 5 * n_files:
        return None
    if n_dirs < 1 or names[0] != b"":
        return None
    split = 3 * n_dirs
    return CleanSnapshot(
        bound,
        names[:n_dirs],
        values[:split],
        names[n_dirs : n_dirs + n_files],
        values[split:],
        names[n_dirs + n_files : n_dirs + n_files + n_links],
        names[n_dirs + n_files + n_links :],
    )


def load(path: Path, key: bytes) -> CleanSnapshot | None:
    """The snapshot at ``path`` (never through a symlink, never past
    :data:`graven.deploy.recordkey.MAX_RECORD_FILE` bytes: ~100 per path), or None."""
    data = read_record_file(path)
    return decode(key, data) if data is not None else None


def unchanged(snapshot: CleanSnapshot, release: str) -> bool:
    """Whether every directory, file and symlink of the release at ``release`` is exactly as recorded:
    same inode and times (and size and mode for files), symlinks with the same target. Every directory
    is looked at (parents first, and a non-directory stops the comparison at once) and compared before
    any path through them is followed."""
    try:
        fd = os.open(release, _DIR_OPEN)
    except OSError:
        return False
    try:
        lstat = os.lstat
        S_ISDIR = stat.S_ISDIR  # noqa: N806
        root = os.fstat(fd)
        if snapshot.binding.get("dev") != root.st_dev or not S_ISDIR(root.st_mode):
            return False
        seen = array.array("q", (root.st_ino, root.st_mtime_ns, root.st_ctime_ns))
        add = seen.extend
        for rel in snapshot.dirs[1:]:
            st = lstat(rel, dir_fd=fd)
            if not S_ISDIR(st.st_mode):
                return False
            add((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
        if seen != snapshot.dir_records:
            return False
        seen = array.array("q")
        add = seen.extend
        for rel in snapshot.files:
            st = lstat(rel, dir_fd=fd)
            add((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
        if seen != snapshot.file_records:
            return False
        readlink = os.readlink
        for rel, target in zip(snapshot.links, snapshot.targets, strict=True):
            if readlink(rel, dir_fd=fd) != target:
                return False
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    finally:
        os.close(fd)
    return True
