"""A hook's output goes to a temp file (a pipe would kill the daemons it starts): its disk use is capped
while it runs, and what graven reports says when output was dropped."""

from __future__ import annotations

import time
from pathlib import Path

from pytest import MonkeyPatch

from graven.deploy import hooks
from graven.deploy.hook_result import HookResult
from graven.deploy.hooks import run_health, run_hook

MIB = 1024 * 1024
# what the hook's stdout holds on disk, written after each MiB it prints (by the hook itself)
_USAGE = 'stat -L -c "%b %B" /proc/$$/fd/1 >> usage'


def _peak(path: Path) -> int:
    return max(
        int(blocks) * int(unit) for blocks, unit in (line.split() for line in path.read_text().splitlines())
    )


def test_a_hook_printing_100_mib_never_holds_much_more_than_the_cap_on_disk(tmp_path: Path) -> None:
    command = (
        f"for i in $(seq 100); do head -c {MIB} /dev/zero | tr '\\0' y; {_USAGE}; done; echo; echo all done"
    )
    result = run_hook(command, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.ok, result.describe()
    assert _peak(tmp_path / "usage") <= hooks.OUTPUT_CAP + 8 * MIB, (tmp_path / "usage").read_text()
    assert result.output.endswith("all done\n")  # the end is kept whole
    assert result.dropped > 60 * MIB, result.dropped
    assert result.describe().startswith("exit 0: all done (output past ")


def test_a_fast_flood_is_capped_and_the_outcome_and_daemons_are_unchanged(tmp_path: Path) -> None:
    """`yes | head -c 200M` as fast as the disk takes it, then a failure: still exit 3 with its last
    line; a daemon the hook started lives on (no pipe to lose); the file ends near the cap."""
    command = (
        f"yes | head -c {200 * MIB}; sleep 0.3; {_USAGE}; "
        "(sleep 0.5; echo alive > daemon) >/dev/null 2>&1 & echo; echo broken >&2; exit 3"
    )
    result = run_hook(command, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 3
    assert result.describe().startswith("exit 3: broken (output past 16.0 MiB:")
    assert _peak(tmp_path / "usage") <= hooks.OUTPUT_CAP + 8 * MIB, (tmp_path / "usage").read_text()
    deadline = time.monotonic() + 10
    while not (tmp_path / "daemon").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "daemon").read_text() == "alive\n"


def test_short_output_is_not_marked_and_health_keeps_the_mark(tmp_path: Path) -> None:
    assert run_hook("echo fine; exit 1", cwd=tmp_path, env={}, timeout=10).describe() == "exit 1: fine"
    flooded = run_health(
        f"yes | head -c {40 * MIB}; echo; echo sick; exit 1",
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=60, retries=1, interval=0,
    )  # fmt: skip
    assert flooded.attempts == 2 and flooded.dropped > 0
    assert "output past 16.0 MiB" in flooded.describe()
    assert HookResult("x", 2, "end\n", 1.0, dropped=3 * MIB).describe() == (
        "exit 2: end (output past 16.0 MiB: its first 3.0 MiB dropped)"
    )


def test_where_no_hole_can_be_punched_the_output_is_rewound(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    def cannot(fd: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(hooks, "_punch_hole", cannot)
    command = (
        f"for i in $(seq 60); do head -c {MIB} /dev/zero | tr '\\0' y; {_USAGE}; done; echo; echo all done"
    )
    result = run_hook(command, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.ok and result.output.endswith("\nall done\n") and "\x00" not in result.output
    assert _peak(tmp_path / "usage") <= hooks.OUTPUT_CAP + 8 * MIB, (tmp_path / "usage").read_text()
    assert result.dropped >= 40 * MIB
