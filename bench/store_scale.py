"""Commands on a small artifact in a large store: does their cost follow the artifact, or the store?

    .venv/bin/python bench/store_scale.py [--objects N] [--repeat N] [--scratch DIR] [--keep]

A team's GRAVEN_HOME keeps every object of every build: after a year of builds it holds millions. A
deploy, a rollback or a verify of one artifact should cost what that artifact costs, whatever else the
store holds. Set-up (never timed): a small repository (200 files, graven.toml with one environment per
round) with one commit per round; two homes build the same commits with the CLI; the "large" home's
store then receives N filler objects (default 1,000,000, ~40 bytes each, added through the store's own
batch, so in packs as builds leave them). Each round then runs, through the CLI, in each home (the order
alternates per round): a deploy of commit k into a fresh environment (every object read from the
store), a deploy of commit k+1 there, a rollback, a verify of the artifact, and a build of a new commit
(one file changed). Wall time and the peak RSS of the process (wait4) are compared as large / small.

Targets are graven's own (no issue sets them): deploy, rollback and verify <= 1.5x; the build is info
(a build asks the store about every object it adds, and loads the whole index to answer).
Results go to the section "## Large stores (issue 2 and 4: ...)" of bench/RESULTS.md (replaced if
present; bench/run.py keeps it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import GIT_PREP_ENV, fmt, git, log, replace_section
from run import run  # wall time, wait4's peak RSS, stdout

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
SECTION = "## Large stores (issue 2 and 4: one small artifact among many objects)"
FILES = 200
STEPS = ("deploy (new release)", "deploy (next version)", "rollback", "verify", "build (one file changed)")
TARGETS = {"deploy (new release)": 1.5, "deploy (next version)": 1.5, "rollback": 1.5, "verify": 1.5}


def objects_in(home: Path) -> int:
    """The number of objects the pack indexes of a home list (read from their headers)."""
    from graven.store.local import IDX_MAGIC

    total = 0
    for idx in (home / "objects" / "pack").glob("*.idx"):
        with idx.open("rb") as handle:
            head = handle.read(len(IDX_MAGIC) + 8)
        total += int.from_bytes(head[len(IDX_MAGIC) :], "big")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--scratch", type=Path, default=Path(os.environ.get("TMPDIR") or "/tmp") / "graven-store-scale"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-write", action="store_true", help="print, do not write bench/RESULTS.md")
    args = parser.parse_args()
    python = Path(sys.executable)
    graven = str(python.with_name("graven"))
    scratch: Path = args.scratch.absolute()
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    started = time.time()
    load_start = os.getloadavg()
    try:
        repo = scratch / "repo"
        (repo / "app").mkdir(parents=True)
        genv = dict(os.environ, **GIT_PREP_ENV, HOME=str(scratch))
        git(repo, "init", "-q", env=genv)
        for i in range(FILES):
            (repo / "app" / f"f{i}.txt").write_text(f"file {i}\n" * 20)
        envs = "".join(f'\n[env.r{k}]\npath = "r{k}"\n' for k in range(args.repeat + 1))
        (repo / "graven.toml").write_text(f'[artifact]\nname = "small"\n{envs}')
        commits = []
        for k in range(args.repeat + 2):
            (repo / "app" / "f0.txt").write_text(f"version {k}\n")
            git(repo, "add", "-A", env=genv)
            git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", f"c{k}", env=genv)
            commits.append(git(repo, "rev-parse", "HEAD", env=genv))
        homes = {"small": scratch / "home-small", "large": scratch / "home-large"}
        envs_of = {name: dict(os.environ, GRAVEN_HOME=str(home)) for name, home in homes.items()}
        for env in envs_of.values():
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env.pop("GRAVEN_DB_URL", None)
        digests: dict[str, list[str]] = {}
        for name, env in envs_of.items():
            run([graven, "keys", "generate"], env=env)  # the home's own signing key, trusted by it
            digests[name] = [
                json.loads(
                    run([graven, "build", "-C", str(repo), c, "--json"], env=env, capture=True).stdout
                )["digest"]
                for c in commits
            ]
        if digests["small"] != digests["large"]:
            raise SystemExit("the two homes built different digests")
        log(f"adding {args.objects:,} filler objects to the large home's store")
        # in a process of its own: this one stays small, and the commands it starts (forked from it)
        # start with its size, which wait4's peak RSS would count
        fill = (
            "import sys; from pathlib import Path; from graven.store.local import LocalStore\n"
            "store = LocalStore.at(Path(sys.argv[1]))\n"
            "with store.batch() as batch:\n"
            "    for i in range(int(sys.argv[2])):\n"
            "        batch.add(b'filler object %d\\n' % i * 2)\n"
            "store.close()\n"
        )
        subprocess.run(
            [str(python), "-c", fill, str(homes["large"] / "objects"), str(args.objects)], check=True
        )
        # a new commit per round for the build step, made now (git's time is not graven's)
        extra = []
        for k in range(args.repeat):
            (repo / "app" / "f1.txt").write_text(f"round {k}\n")
            git(repo, "-c", "commit.gpgsign=false", "commit", "-qam", f"b{k}", env=genv)
            extra.append(git(repo, "rev-parse", "HEAD", env=genv))
        root = {name: scratch / f"srv-{name}" for name in homes}
        for path in root.values():
            path.mkdir()
        wall: dict[tuple[str, str], list[float]] = {}
        rss: dict[tuple[str, str], list[float]] = {}
        for k in range(args.repeat):
            order = ["small", "large"] if k % 2 == 0 else ["large", "small"]
            for name in order:
                env, srv, d = envs_of[name], str(root[name]), digests[name]
                steps = [
                    [graven, "deploy", d[k], f"r{k}", "--root", srv],
                    [graven, "deploy", d[k + 1], f"r{k}", "--root", srv],
                    [graven, "rollback", f"r{k}", "--root", srv],
                    [graven, "verify", d[k]],
                    [graven, "build", "-C", str(repo), extra[k]],
                ]
                for step, argv in zip(STEPS, steps, strict=True):
                    os.sync()
                    done = run(argv, env=env)
                    wall.setdefault((step, name), []).append(done.seconds)
                    rss.setdefault((step, name), []).append(done.maxrss_bytes / 1e6)
        stored = objects_in(homes["large"])
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for step in STEPS:
        small = statistics.median(wall[(step, "small")])
        large = statistics.median(wall[(step, "large")])
        ratio = large / small
        target = TARGETS.get(step)
        result = "-" if target is None else ("PASS" if ratio <= target else "**FAIL**")
        rows.append(
            f"| {step} | {args.repeat} | {fmt(large)} | {fmt(small)} | {ratio:.2f}x | "
            f"{'info' if target is None else f'<= {target}x'} | {result} | "
            f"{statistics.median(rss[(step, 'large')]):.0f} / "
            f"{statistics.median(rss[(step, 'small')]):.0f} MB |"
        )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_end = os.getloadavg()
    text = "\n".join(
        [
            SECTION,
            "",
            f"Written by `bench/store_scale.py --objects {args.objects} --repeat {args.repeat}` on {now} "
            f"({os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in load_start)} at start, "
            f"{' '.join(f'{x:.2f}' for x in load_end)} at end; {time.time() - started:.0f} s). "
            f"One artifact of {FILES + 1} files, the same commands in a home that holds only its builds "
            f"(baseline) and in one whose store also holds {stored:,} objects in all; medians of all "
            "rounds, CLI, nothing dropped. "
            "Targets are graven's own: a command on one artifact costs what the artifact costs.",
            "",
            "| command, small artifact | N | large store | small store | ratio | target | result "
            "| peak RSS large / small |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Every measured run (large store, then small):",
            "",
            *(
                f"- {step}: [{', '.join(fmt(x) for x in wall[(step, 'large')])}] / "
                f"[{', '.join(fmt(x) for x in wall[(step, 'small')])}]"
                for step in STEPS
            ),
            "",
        ]
    )
    print(text)
    if not args.no_write:
        replace_section(RESULTS, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
