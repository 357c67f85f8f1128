"""Reading commits with the ``git`` command: resolve a revision once, then read only that commit.

Replace objects are disabled (``GIT_NO_REPLACE_OBJECTS``) so that a commit id always means the same
content, and blobs are read raw: no smudge filters, no end-of-line conversion, no export-subst.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from graven.core.paths import decode_path
from graven.errors import BackendError, NotFoundError, SourceError

__all__ = ["BlobReader", "GitEntry", "GitRepo"]

MODE_FILE = "100644"
MODE_EXECUTABLE = "100755"
MODE_SYMLINK = "120000"
MODE_SUBMODULE = "160000"


@dataclass(frozen=True, slots=True)
class GitEntry:
    """One entry of ``git ls-tree -r``."""

    mode: str
    kind: str
    oid: str
    path: str


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        GIT_OPTIONAL_LOCKS="0",
    )
    return env


class BlobReader:
    """Reads exactly ``size`` bytes of one blob from a ``cat-file --batch`` stream."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream = stream
        self.size = size
        self._left = size

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all that is left when ``n`` < 0)."""
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = self._stream.read(want)
        if len(data) != want:
            raise BackendError("git cat-file ended early")
        self._left -= len(data)
        return data

    def drain(self) -> None:
        """Skip what the consumer did not read."""
        while self._left > 0:
            self.read(1 << 20)


class DirtyCheck:
    """``git status`` running in the background while a build works."""

    def __init__(self, root: Path) -> None:
        self._proc = subprocess.Popen(
            ["git", "status", "--porcelain", "--untracked-files=no", "-z"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_git_env(),
        )

    def result(self) -> bool:
        """Wait for git: True when tracked files differ from HEAD."""
        out, _ = self._proc.communicate()
        return self._proc.returncode == 0 and bool(out.strip())

    def __enter__(self) -> DirtyCheck:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class GitRepo:
    """A git repository, found with :meth:`discover`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def discover(cls, path: Path) -> GitRepo:
        """The repository containing ``path``; SourceError when there is none."""
        if not path.is_dir():
            raise SourceError(f"{path}: no such directory")
        try:
            result = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"],
                cwd=path,
                capture_output=True,
                env=_git_env(),
                check=False,
            )
        except FileNotFoundError:
            raise SourceError("git is not installed; install it (apt-get install git)") from None
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            reason = detail[-1] if detail else "git rev-parse failed"
            if "not a git repository" in reason:
                raise SourceError(f"{path} is not inside a git repository; run graven in one (or git init)")
            raise SourceError(f"{path}: {reason}")
        return cls(Path(result.stdout.decode().strip()))

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                ["git", *args], cwd=self.root, capture_output=True, env=_git_env(), check=False
            )
        except OSError as exc:
            raise BackendError(f"cannot run git: {exc}") from exc
        if check and result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
            raise BackendError(f"git {args[0]} failed: {message.splitlines()[-1]}")
        return result

    def resolve(self, revision: str) -> str:
        """The full id of the commit that ``revision`` names, resolved once."""
        if not revision or "\n" in revision:
            raise NotFoundError(f"invalid revision {revision!r}")
        result = self._run(
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"{revision}^{{commit}}",
            check=False,
        )
        if result.returncode != 0:
            raise NotFoundError(
                f"unknown revision {revision!r}: not a commit in {self.root} "
                "(commit first, or name a branch, tag or commit id)"
            )
        return result.stdout.decode().strip()

    def read_file(self, commit: str, path: str) -> bytes | None:
        """The raw content of ``path`` in ``commit``, or None when it is not a file there."""
        # One git call: `cat-file blob` fails for a missing path and for a directory alike.
        result = self._run("cat-file", "blob", f"{commit}:{path}", check=False)
        return result.stdout if result.returncode == 0 else None

    def commit_time(self, commit: str) -> int:
        """The committer time of ``commit`` (seconds since the epoch)."""
        return int(self._run("show", "-s", "--format=%ct", commit).stdout.decode().strip())

    def ls_tree(self, commit: str) -> list[GitEntry]:
        """Every entry of the commit's tree, recursively; paths must be valid UTF-8."""
        out = self._run("ls-tree", "-r", "-z", "--full-tree", commit).stdout
        entries: list[GitEntry] = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid = meta.decode().split(" ")
            entries.append(GitEntry(mode, kind, oid, decode_path(raw_path)))
        return entries

    def start_dirty_check(self) -> DirtyCheck:
        """Start ``git status`` in the background (use as a context manager)."""
        return DirtyCheck(self.root)

    def describe_remote(self) -> str:
        """The repository's identity for records: the origin URL, else a file URL of its path."""
        result = self._run("config", "--get", "remote.origin.url", check=False)
        url = result.stdout.decode().strip()
        return url or self.root.as_uri()

    def cat_blobs(self, oids: Iterable[str]) -> Iterator[tuple[str, BlobReader]]:
        """Stream the blobs ``oids`` in order, each as a reader that must be consumed in turn."""
        wanted = list(oids)
        if not wanted:
            return
        proc = subprocess.Popen(
            # --buffer: no flush after every object; small pack windows bound git's mapped memory
            [
                "git",
                "-c",
                "core.packedGitWindowSize=32m",
                "-c",
                "core.packedGitLimit=64m",
                "cat-file",
                "--batch",
                "--buffer",
            ],
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_git_env(),
            bufsize=1 << 20,
        )
        assert proc.stdin is not None and proc.stdout is not None
        stdin = proc.stdin

        def feed() -> None:
            # A separate thread: git stops reading our input while its output pipe is full.
            try:
                stdin.write(b"".join(f"{oid}\n".encode() for oid in wanted))
                stdin.close()
            except OSError:
                pass

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            for oid in wanted:
                header = proc.stdout.readline().decode().split()
                if len(header) != 3 or header[1] != "blob":
                    raise BackendError(f"git cat-file cannot read blob {oid}: {' '.join(header)}")
                reader = BlobReader(proc.stdout, int(header[2]))
                yield oid, reader
                reader.drain()
                if proc.stdout.read(1) != b"\n":
                    raise BackendError("git cat-file output is malformed")
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()
            feeder.join()
