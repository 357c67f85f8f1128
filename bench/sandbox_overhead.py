"""Sandbox overhead benchmark (issue 7): what running a build step in bubblewrap adds per step.

    python bench/sandbox_overhead.py [--repeat 20] [--json]

Times the step `true` N times through graven's own runners, exactly as a build runs a step: once with
``BubblewrapRunner`` (one bwrap process per step: namespaces, the read-only host mirror, the fixed
/build paths, a fresh /proc, /dev and /tmp, no capabilities) and once with ``HostRunner`` (the same
``/bin/sh -c true`` started directly, as with ``sandbox = "none"``). Runs alternate, after one warm-up
of each. The overhead is median(sandbox) - median(direct). Target: <= 100 ms per step.
The one-shot probe (``bwrap --unshare-all ... true``, once per graven process) is timed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from graven.build import sandbox
from graven.build.sandbox import (
    BubblewrapRunner,
    HostRunner,
    SandboxLayout,
    StepRunner,
    find_bwrap,
    host_root_entries,
    probe_bubblewrap,
)
from graven.build.steps import clean_environment

TARGET_MS = 100.0


def _time(runner: StepRunner, log: Path) -> float:
    with log.open("ab") as handle:
        start = time.perf_counter()
        code = runner.run("true", log=handle, timeout=60, network=False)
        elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"`true` exited with {code} through {runner.kind}; see {log}")
    return elapsed * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    bwrap = probe_bubblewrap(find_bwrap())
    with tempfile.TemporaryDirectory(prefix="graven-bench-sandbox-") as tmp:
        root = Path(tmp)
        for name in ("src", "work", "home", "tmp"):
            (root / name).mkdir()
        host_path = os.environ.get("PATH")
        # with the commit time, as a build makes it: the step's shell touches /tmp and /dev first
        layout = SandboxLayout(root / "src", root / "work", root / "home", host_root_entries(), epoch=0)
        sandboxed = BubblewrapRunner(
            bwrap,
            layout,
            clean_environment(home="/build/home", tmp="/tmp", source_date_epoch=0, host_path=host_path),
        )
        direct = HostRunner(
            root / "work",
            clean_environment(home=root / "home", tmp=root / "tmp", source_date_epoch=0, host_path=host_path),
        )
        log = root / "build.log"
        _time(sandboxed, log)
        _time(direct, log)
        boxed, bare = [], []
        for _ in range(args.repeat):
            boxed.append(_time(sandboxed, log))
            bare.append(_time(direct, log))
    probes = []
    for _ in range(5):
        start = time.perf_counter()
        if sandbox._probe(bwrap) is not None:
            raise SystemExit("the bubblewrap probe failed")
        probes.append((time.perf_counter() - start) * 1000.0)
    overhead = statistics.median(boxed) - statistics.median(bare)
    figures = {
        "repeat": args.repeat,
        "bwrap": bwrap,
        "sandbox_median_ms": round(statistics.median(boxed), 1),
        "direct_median_ms": round(statistics.median(bare), 1),
        "overhead_median_ms": round(overhead, 1),
        "sandbox_p90_ms": round(sorted(boxed)[int(0.9 * (len(boxed) - 1))], 1),
        "probe_median_ms": round(statistics.median(probes), 1),
        "target_ms": TARGET_MS,
        "ok": overhead <= TARGET_MS,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"`true` x{args.repeat} through {bwrap} vs directly (median, ms)")
        print(f"  sandboxed: {figures['sandbox_median_ms']:7.1f}   (p90 {figures['sandbox_p90_ms']})")
        print(f"  direct:    {figures['direct_median_ms']:7.1f}")
        print(f"  overhead:  {figures['overhead_median_ms']:7.1f}   target <= {TARGET_MS:.0f} ms: ", end="")
        print("ok" if figures["ok"] else "MISSED")
        print(f"  one-shot probe per graven process: {figures['probe_median_ms']:.1f}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
