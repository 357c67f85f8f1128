"""The benchmark scripts stay runnable: each answers --help (which imports everything it uses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")


def test_every_script_is_listed() -> None:
    assert {"run.py", "deploy_bench.py", "drift_bench.py", "log_bench.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_answers_help(script: str) -> None:
    argv = [sys.executable, str(BENCH / script), "--help"]
    done = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
