"""`make demo`'s script, run as `make demo` runs it (the venv's bin first on PATH), as a user without
root's DAC override: a developer's first command must work and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers_services import require_tool, unavailable

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.sh"


def _as_user() -> list[str]:
    """A prefix that takes root's DAC override away (permission bits then hold as for any user)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        unavailable("setpriv is needed to run the demo without root's DAC override")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_demo_runs_and_removes_everything_it_made(tmp_path: Path) -> None:
    for tool in ("git", "bwrap", "zstd"):
        require_tool(tool)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GRAVEN_", "GIT_")) or key == "GRAVEN_REQUIRE_SERVICES"
    }
    env.update(TMPDIR=str(tmpdir), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(
        [*_as_user(), "bash", str(DEMO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "demo finished: sha256:" in done.stdout
    assert "drift demo finished: prod matches sha256:" in done.stdout
    # its work directory held read-only releases: the demo made them writable again to remove them
    assert list(tmpdir.iterdir()) == []
