"""What graven deployed, by stat: ``PATH/.graven/stat.json`` (format ``graven.deploy-stat/v1``).

For every inode of every release graven records the sha256 it wrote there and the file's
``(size, mtime_ns, ctime_ns, st_mode)`` right after writing (or linking) it. A file whose stat is
unchanged since then still holds the bytes graven verified; ``ctime`` cannot be set from user space, so
an edit is seen even when the mtime is put back. Releases may share inodes (unchanged files are hard
links between releases), so the records are per inode and refreshed whenever graven itself adds or
removes a link. Anything that does not match is re-checked by content or copied again from the store.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from graven.errors import BackendError

__all__ = ["STAT_FORMAT", "StatTable"]

STAT_FORMAT = "graven.deploy-stat/v1"
Record = tuple[str, int, int, int, int]  # sha256, size, mtime_ns, ctime_ns, st_mode


@dataclass
class StatTable:
    """The stat records of one environment directory."""

    dev: int | None = None
    inodes: dict[int, Record] = field(default_factory=dict)
    releases: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StatTable:
        """Read the table; a missing or unreadable one is empty (files are then checked by content)."""
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("format") != STAT_FORMAT:
                return cls()
            inodes = {int(k): (str(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4])) for k, v in doc["inodes"].items()}
            releases = {str(k): [int(i) for i in v] for k, v in doc["releases"].items()}
            dev = doc.get("dev")
            return cls(int(dev) if dev is not None else None, inodes, releases)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return cls()

    def record(self, st: os.stat_result, sha256: str) -> None:
        """Remember that the inode of ``st`` holds ``sha256`` with this stat."""
        if self.dev != st.st_dev:
            if self.dev is not None:
                self.inodes.clear()  # another file system: every old record is meaningless here
            self.dev = st.st_dev
        self.inodes[st.st_ino] = (sha256, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    def matches(self, st: os.stat_result, sha256: str) -> bool:
        """True when ``st`` is exactly what graven recorded for an inode holding ``sha256``."""
        if st.st_dev != self.dev:
            return False
        return self.inodes.get(st.st_ino) == (
            sha256,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_mode,
        )

    def holds(self, ino: int) -> bool:
        """True when some record names this inode."""
        return ino in self.inodes

    def set_release(self, hex_digest: str, inodes: list[int]) -> None:
        """Record which inodes make up a release."""
        self.releases[hex_digest] = sorted(set(inodes))

    def drop_releases(self, keep: set[str]) -> None:
        """Forget releases not in ``keep`` and every inode no remaining release uses."""
        self.releases = {k: v for k, v in self.releases.items() if k in keep}
        used: set[int] = set()
        for inos in self.releases.values():
            used.update(inos)
        self.inodes = {k: v for k, v in self.inodes.items() if k in used}

    def save(self, path: Path) -> None:
        """Write the table atomically (temp file, fsync, rename)."""
        doc = {
            "format": STAT_FORMAT,
            "dev": self.dev,
            "inodes": {str(k): list(v) for k, v in self.inodes.items()},
            "releases": self.releases,
        }
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BackendError(f"cannot write {path}: {exc.strerror}") from None
