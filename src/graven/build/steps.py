"""Running ``[build]`` steps (and ``[build.fetch]`` steps) through a runner, in a clean environment.

The runner decides where a step runs (:mod:`graven.build.sandbox`: bubblewrap, or the host when the
pipeline says ``sandbox = "none"``); this module decides what it sees and how failures are reported.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from graven.build.sandbox import StepRunner
from graven.errors import BuildError

__all__ = ["PINNED_ENV", "clean_environment", "ensure_dirs", "run_steps"]

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
LOG_TAIL_LINES = 20

# What graven sets itself; [build] env cannot pass these through from the host.
PINNED_ENV = frozenset(
    {"PATH", "HOME", "TMPDIR", "TZ", "LC_ALL", "LANG", "SOURCE_DATE_EPOCH", "PYTHONHASHSEED"}
)


def clean_environment(
    *,
    home: Path | str,
    tmp: Path | str,
    source_date_epoch: int,
    host_path: str | None,
    passed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment a step sees: the pinned values, PATH, and the ``passed`` variables.

    ``passed`` are the host values of the names in ``[build] env`` (only those that are set).
    """
    env = {
        "PATH": host_path or DEFAULT_PATH,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "PYTHONHASHSEED": "0",
    }
    for key, value in (passed or {}).items():
        if key not in PINNED_ENV:
            env[key] = value
    return env


def run_steps(
    steps: Sequence[str],
    *,
    runner: StepRunner,
    log_path: Path,
    timeout: int,
    phase: str = "build",
    network: bool = False,
) -> None:
    """Run each step with ``/bin/sh -c`` through ``runner``; the first failure raises BuildError.

    The error is one line: ``<phase> step N ('...') failed with exit code X; last lines: ...``.
    """
    with log_path.open("ab") as log:
        for number, step in enumerate(steps, start=1):
            label = "" if phase == "build" else f"[{phase}] "
            log.write(f"$ {label}{step}\n".encode())
            log.flush()
            try:
                code = runner.run(step, log=log, timeout=timeout, network=network)
            except subprocess.TimeoutExpired:
                raise BuildError(f"{phase} step {number} ({step!r}) timed out after {timeout} s") from None
            if code != 0:
                log.flush()
                raise BuildError(
                    f"{phase} step {number} ({step!r}) failed with exit code {code}; "
                    f"last lines: {_tail(log_path)}"
                )


def _tail(path: Path) -> str:
    lines = path.read_bytes().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return " | ".join(line for line in lines if line.strip())[-2000:]


def ensure_dirs(*paths: Path) -> None:
    """Create directories (0755)."""
    for path in paths:
        os.makedirs(path, mode=0o755, exist_ok=True)
