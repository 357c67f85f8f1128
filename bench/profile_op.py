"""Profile one graven operation in-process with cProfile, on the same scratch clones as bench/run.py.

Usage::

    .venv/bin/python bench/profile_op.py cold|incremental|export [--workload django|large] [--top 30]

``cold`` profiles ``build(g1)`` into a fresh home, ``incremental`` ``build(g2)`` after an unprofiled
``build(g1)``, ``export`` ``export_artifact`` of g1. One unprofiled warm-up of the same operation runs
first, so the profile shows steady-state work, not imports. Output: the top functions by cumulative and
by own time, and the wall time of the profiled call (cProfile itself adds overhead).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

from run import DJANGO_VERSIONS, Bench, BenchError, parse_args


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["cold", "incremental", "export"])
    parser.add_argument("--workload", default="django", choices=["django", "large", "bin"])
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--dump", type=Path, help="also write the raw profile here (for pstats/snakeviz)")
    parser.add_argument("--workloads", help="as for bench/run.py")
    parser.add_argument(
        "--scratch", default=os.environ.get("GRAVEN_BENCH_DIR", "/tmp/graven-bench-run") + "-prof"
    )
    args = parser.parse_args()
    run_args = parse_args(
        [*(["--workloads", args.workloads] if args.workloads else []), "--scratch", args.scratch]
    )
    python = Path(sys.executable)
    scratch = Path(run_args.scratch).absolute()
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    b = Bench(
        workloads=run_args.workloads.absolute(),
        scratch=scratch,
        repeat=1,
        python=python,
        graven=python.parent / "graven",
    )
    try:
        b.make_signing_key()
        versions = DJANGO_VERSIONS if args.workload == "django" else 1
        wl = b.workload(args.workload, versions)
        b.warm_inproc()
        out = scratch / "out.tar.zst"
        profiler = cProfile.Profile()
        if args.what == "cold":
            b.inproc_build(b.new_home(), wl.clone, "g1")
            home = b.new_home()
            start = time.perf_counter()
            profiler.runcall(b.inproc_build, home, wl.clone, "g1")
        elif args.what == "incremental":
            home = b.new_home()
            b.inproc_build(home, wl.clone, "g1")
            b.inproc_build(home, wl.clone, "g2")
            home = b.new_home()
            b.inproc_build(home, wl.clone, "g1")
            start = time.perf_counter()
            profiler.runcall(b.inproc_build, home, wl.clone, "g2")
        else:
            home = b.new_home()
            digest = b.inproc_build(home, wl.clone, "g1")[1]
            b.inproc_export(home, digest, out)
            start = time.perf_counter()
            profiler.runcall(b.inproc_export, home, digest, out)
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.what} {args.workload}: {wall:.3f} s wall under cProfile")
    stats = pstats.Stats(profiler)
    if args.dump:
        stats.dump_stats(args.dump)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
