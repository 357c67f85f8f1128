"""Helpers shared by the benchmark scripts (run them as `python bench/NAME.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["GIT_PREP_ENV", "fmt", "git", "log", "replace_section", "timed"]

# Fixed identity and dates: the g1..gN commits get the same ids on every machine and every run.
GIT_PREP_ENV = {
    "GIT_AUTHOR_NAME": "graven-bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "graven-bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_AUTHOR_DATE": "2025-01-02T00:00:00Z",
    "GIT_COMMITTER_DATE": "2025-01-02T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def log(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


def fmt(seconds: float) -> str:
    """``0.1234`` -> ``123.4 ms``; a second and more in seconds."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def timed(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    ok: int = 0,
    sync_first: bool = False,
) -> float:
    """Wall time of one command; any exit status but ``ok`` stops the benchmark.

    ``sync_first`` writes back dirty data before the (untimed) start, so that one run's writeback does
    not slow the next one down.
    """
    if sync_first:
        os.sync()
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
        )
        seconds = time.perf_counter() - start
        if proc.returncode != ok:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err.read().decode()[-2000:]}")
    return seconds


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in ``repo``; its stdout, stripped."""
    out = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` (starting with ``heading``) into RESULTS.md in place of that section, else at the end."""
    old = path.read_text() if path.exists() else "# graven benchmark results\n"
    if heading in old:  # replace our section, keep whatever follows it
        start = old.index(heading)
        after = old.find("\n## ", start + len(heading))
        old = old[:start] + (old[after + 1 :] if after != -1 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)
