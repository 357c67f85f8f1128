"""The Makefile's `.venv`: `make demo` and `make test` are a newcomer's first commands, and the next
ones after a first attempt went wrong. A `.venv` whose Python or pip does not run (venv creation cut
short by Ctrl-C, Debian's python3 -m venv failing without python3-venv after it made bin/python, a
venv of a Python since removed) is made again from scratch, not used as it is until the user finds
`rm -rf .venv` by themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_services import require_tool

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"

# stands for python3: records how it was called, and makes a venv whose python (and so pip) runs
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "{log}"
[ "$1 $2" = "-m venv" ] || exit 1
for dir; do :; done
case " $* " in *" --clear "*) rm -rf "$dir";; esac
mkdir -p "$dir/bin" && printf '#!/bin/sh\\nexit 0\\n' > "$dir/bin/python" && chmod +x "$dir/bin/python"
"""


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(MAKEFILE, project / "Makefile")
    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')
    return project


def _make_stamp(project: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "python.log"
    fake = tmp_path / "fake-python3"
    fake.write_text(FAKE_PYTHON.format(log=log))
    fake.chmod(0o755)
    # run as root, the Makefile installs python3-venv when venv creation fails: never here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "apt-get").chmod(0o755)
    done = subprocess.run(
        ["make", "-C", str(project), ".venv/.installed-stamp", f"PYTHON={fake}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MAKEFLAGS": "", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    return done, log.read_text() if log.exists() else ""


@pytest.mark.parametrize("state", ["without pip", "python removed"])
def test_a_venv_that_cannot_run_pip_is_made_again(tmp_path: Path, state: str) -> None:
    require_tool("make")
    project = _project(tmp_path)
    venv = project / ".venv"
    if state == "without pip":
        # what an interrupted `python3 -m venv` (or one without Debian's python3-venv) leaves
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    else:
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(tmp_path / "removed" / "python3.12")
    done, calls = _make_stamp(project, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-m venv --clear" in calls
    assert (venv / ".installed-stamp").exists()


def test_a_stamped_venv_whose_python_was_removed_is_made_again(tmp_path: Path) -> None:
    """The stamp is newer than pyproject.toml, so it alone would keep the venv: `make demo` then ran
    .venv/bin/graven and failed with 'cannot execute: required file not found' (the Python it was
    made with since uninstalled or upgraded away) until the user found `make clean` by themselves."""
    require_tool("make")
    project = _project(tmp_path)
    venv = project / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "removed" / "python3.11")
    stamp = venv / ".installed-stamp"
    stamp.touch()
    later = (project / "pyproject.toml").stat().st_mtime + 60
    os.utime(stamp, (later, later))
    done, calls = _make_stamp(project, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-m venv --clear" in calls
    assert (venv / "bin" / "python").exists()
    assert stamp.exists()


def test_a_working_venv_is_kept(tmp_path: Path) -> None:
    require_tool("make")
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    python = project / ".venv" / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    (project / ".venv" / "kept").touch()
    done, calls = _make_stamp(project, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls == ""
    assert (project / ".venv" / "kept").exists()


def test_as_root_python3_venv_is_installed_from_fresh_package_lists(tmp_path: Path) -> None:
    """A fresh Debian (a container image) has no package lists: apt-get install alone finds nothing."""
    require_tool("make")
    if os.geteuid() != 0:
        pytest.skip("the Makefile installs python3-venv only as root")
    project = _project(tmp_path)
    log = tmp_path / "apt.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # apt-get: finds python3-venv only after an update; python3 -m venv works only once it is installed
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\n'
        f'case "$1" in update) touch "{tmp_path}/lists";; '
        f'install) [ -e "{tmp_path}/lists" ] && touch "{tmp_path}/installed";; esac\n'
    )
    (bin_dir / "apt-get").chmod(0o755)
    fake = tmp_path / "fake-python3"
    fake.write_text(
        f'#!/bin/sh\n[ -e "{tmp_path}/installed" ] || exit 1\n'
        + FAKE_PYTHON.format(log=tmp_path / "python.log").removeprefix("#!/bin/sh\n")
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["make", "-C", str(project), ".venv/.installed-stamp", f"PYTHON={fake}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MAKEFLAGS": "", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr + log.read_text()
    assert (project / ".venv" / ".installed-stamp").exists()
