"""Environment benchmarks (issue 4): deploy, next-version deploy and rollback of the django workload.

    .venv/bin/python bench/deploy_bench.py [--workloads DIR] [--repeat N] [--scratch DIR] [--keep]

Set-up (never timed): the django workload is cloned into SCRATCH and, for v1 and v2, a commit gK = vK +
graven.toml ([artifact] plus an [env.bench] section with a relative path) is made with a fixed identity
and date; one signing key is made and passed with GRAVEN_SIGNING_KEY; g1 and g2 are built into a
template GRAVEN_HOME, which every measured round copies (each round needs a fresh environment).

Figures, medians of N rounds, graven and baseline runs alternating within each round:

1. first deploy of g1 into an empty environment, vs ``rsync -a`` of the same tree (``git archive g1``
   extracted) into an empty directory: target <= 1.0x;
2. deploy of g2 (1% of files changed) while g1 is live, vs the first deploy of the same round: <= 0.4x;
3. rollback to g1 (its release still on disk, checked by stat) while g2 is live, vs the first deploy of
   the same round: <= 0.3x.

Each figure is measured through the CLI (a new process: interpreter start-up and imports included) and
in-process (``graven.service.deploy``, warmed up first). Results go to the section
"## Environments (issue 4)" at the end of bench/RESULTS.md (replaced if present, else appended).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import GIT_PREP_ENV, fmt, git, log, replace_section, timed

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
SECTION = "## Environments (issue 4)"
ENV = "bench"
TOML = f"""[artifact]
name = "django"

[env.{ENV}]
path = "{ENV}"
keep = 5
"""


def settle() -> None:
    """Write back dirty data before a timed run (untimed), so that one run's writeback does not slow
    the next one down; every graven and baseline run starts from the same state."""
    os.sync()


@dataclass
class Figure:
    name: str
    graven: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_what: str = ""
    target: float | None = None  # None: informational

    @property
    def ratio(self) -> float:
        return statistics.median(self.graven) / statistics.median(self.baseline)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "PASS" if self.ratio <= self.target else "**FAIL**"

    @property
    def target_text(self) -> str:
        return "info" if self.target is None else f"<= {self.target:g}x"


@dataclass
class Setup:
    scratch: Path
    graven: Path
    template: Path
    checkout: Path
    g1: str
    g2: str
    commits: dict[str, str]
    files: int
    size: int
    rounds: int = 0

    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("GRAVEN_DB_URL", None)
        env.pop("GRAVEN_DEPLOY_ROOT", None)
        env["GRAVEN_HOME"] = str(home)
        return env

    def fresh(self, tag: str) -> tuple[Path, Path]:
        """A copy of the template home and an empty deploy root."""
        self.rounds += 1
        base = self.scratch / "rounds" / f"{self.rounds:03d}-{tag}"
        home = base / "home"
        shutil.copytree(self.template, home, symlinks=True)
        root = base / "srv"
        root.mkdir()
        return home, root


def prepare(workloads: Path, scratch: Path) -> Setup:
    python = Path(sys.executable)
    graven = python.with_name("graven")
    source = workloads / "django"
    if not (source / ".git").is_dir():
        raise SystemExit(f"workload {source} is missing: run bench/make_workloads.sh (see bench/README.md)")
    env = dict(os.environ, **GIT_PREP_ENV, HOME=str(scratch))
    clone = scratch / "repos" / "django"
    clone.parent.mkdir(parents=True)
    log(f"preparing {clone} (g1, g2)")
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], env=env, check=True)
    git(clone, "config", "core.autocrlf", "false", env=env)
    commits: dict[str, str] = {}
    for k in (1, 2):
        git(clone, "checkout", "-q", "--detach", f"v{k}", env=env)
        (clone / "graven.toml").write_text(TOML)
        git(clone, "add", "graven.toml", env=env)
        git(clone, "-c", "commit.gpgsign=false", "commit", "-q", "-m", f"g{k}: v{k} + graven.toml", env=env)
        git(clone, "tag", f"g{k}", env=env)
        commits[f"g{k}"] = git(clone, "rev-parse", "HEAD", env=env)
    checkout = scratch / "checkout-g1"
    checkout.mkdir()
    archive = subprocess.Popen(["git", "-C", str(clone), "archive", "g1"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(checkout)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit("git archive g1 failed")
    keyhome = scratch / "signing"
    out = subprocess.run(
        [str(graven), "keys", "generate", "--json"],
        env=dict(os.environ, GRAVEN_HOME=str(keyhome)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.environ["GRAVEN_SIGNING_KEY"] = json.loads(out)["private_key"]
    template = scratch / "template-home"
    digests = []
    for tag in ("g1", "g2"):
        result = subprocess.run(
            [str(graven), "build", "-C", str(clone), tag, "--json"],
            env=dict(os.environ, GRAVEN_HOME=str(template)),
            capture_output=True,
            text=True,
            check=True,
        )
        digests.append(json.loads(result.stdout)["digest"])
    # the template's trust: the signing key's public half, as an operator would have it
    pub = subprocess.run(
        [str(graven), "keys", "export", "default"],
        env=dict(os.environ, GRAVEN_HOME=str(keyhome)),
        capture_output=True,
        check=True,
    ).stdout
    (scratch / "ci.pub").write_bytes(pub)
    subprocess.run(
        [str(graven), "keys", "trust", str(scratch / "ci.pub")],
        env=dict(os.environ, GRAVEN_HOME=str(template)),
        capture_output=True,
        check=True,
    )
    files = size = 0
    for dirpath, _dirs, names in os.walk(checkout):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
    return Setup(scratch, graven, template, checkout, digests[0], digests[1], commits, files, size)


def tree_of(top: Path) -> tuple[list[str], list[str]]:
    """The directories (parents first) and the files of ``top``, relative to it (untimed)."""
    dirs: list[str] = []
    files: list[str] = []
    for dirpath, dirnames, names in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        prefix = "" if rel == "." else rel + "/"
        dirs.extend(prefix + d for d in sorted(dirnames))
        files.extend(prefix + n for n in names)
    return dirs, files


def link_tree(src: Path, dest: Path, dirs: list[str], files: list[str]) -> float:
    """Wall time of the system calls a hard-linked release tree cannot do without: one ``mkdir`` per
    directory and one ``link`` per file, shared between two processes as graven shares them (no stat,
    no record, no verification). A reference, not a
    baseline: it shows how much of a next-version deploy is the file system's own cost."""
    # halves by path at the middle directory; the directories of the first half that the second needs
    # (its ancestors) are made first, and each file goes with its directory
    ordered = sorted(dirs)
    cut = ordered[len(ordered) // 2] if ordered else ""
    spine: set[str] = set()
    for d in ordered:
        if d >= cut:
            parent = os.path.dirname(d)
            while parent and parent < cut:
                spine.add(parent)
                parent = os.path.dirname(parent)
    mine = (
        [d for d in ordered if d < cut and d not in spine],
        [f for f in files if os.path.dirname(f) < cut],
    )
    theirs = ([d for d in ordered if d >= cut], [f for f in files if os.path.dirname(f) >= cut])
    os.sync()
    start = time.perf_counter()
    os.mkdir(dest)
    for d in sorted(spine):
        os.mkdir(f"{dest}/{d}")

    def work(part: tuple[list[str], list[str]]) -> None:
        for d in part[0]:
            os.mkdir(f"{dest}/{d}")
        for f in part[1]:
            os.link(f"{src}/{f}", f"{dest}/{f}")

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            work(theirs)
        except BaseException:
            code = 1
        os._exit(code)
    work(mine)
    _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit("the reference mkdir + link of the tree failed in its second process")
    return seconds


def inproc(home: Path, root: Path) -> Callable[[str, str | None], float]:
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import DeployOptions, deploy, rollback

    def act(what: str, digest: str | None) -> float:
        settle()
        start = time.perf_counter()
        with Context(home=Home(root=home)) as ctx:
            opts = DeployOptions(root=str(root))
            result = rollback(ctx, ENV, opts) if what == "rollback" else deploy(ctx, digest or "", ENV, opts)
        seconds = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"in-process {what} failed: {result.message}")
        return seconds

    return act


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_workloads = os.environ.get("GRAVEN_BENCH_WORKLOADS") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "graven-bench"
    )
    parser.add_argument("--workloads", type=Path, default=Path(default_workloads))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/graven-deploy-bench"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("git", "rsync", "cp") if shutil.which(tool) is None]
    if missing:  # the baselines: say so before any set-up, not as a traceback in the middle
        parser.error(f"{', '.join(missing)} not on PATH; install it (Debian: apt-get install -y rsync)")
    started = time.monotonic()
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    args.scratch.mkdir(parents=True)
    load_start = os.getloadavg()
    try:
        setup = prepare(args.workloads, args.scratch)
        figures = measure(setup, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    write_results(
        args.results, setup, figures, load_start=load_start, elapsed=time.monotonic() - started, n=args.repeat
    )
    return 1 if args.strict and any(f.target is not None and f.ratio > f.target for f in figures) else 0


def measure(s: Setup, repeat: int) -> list[Figure]:
    rsync = "rsync -a TREE/ DEST/ (TREE = `git archive g1` extracted)"
    cli_first = Figure("first deploy of g1, empty environment (CLI)", baseline_what=rsync, target=1.0)
    in_first = Figure("first deploy of g1, empty environment (in-process)", baseline_what=rsync, target=1.0)
    cli_next = Figure(
        "deploy g2 while g1 is live (CLI)", baseline_what="first deploy (CLI), same round", target=0.4
    )
    in_next = Figure(
        "deploy g2 while g1 is live (in-process)",
        baseline_what="first deploy (in-process), same round",
        target=0.4,
    )
    cli_back = Figure(
        "rollback to g1, release on disk (CLI)", baseline_what="first deploy (CLI), same round", target=0.3
    )
    in_back = Figure(
        "rollback to g1, release on disk (in-process)",
        baseline_what="first deploy (in-process), same round",
        target=0.3,
    )
    floor = Figure("reference: `cp -al` of the g1 tree (a hard-linked copy)", baseline_what=rsync)
    dirs, files = tree_of(s.checkout)
    calls = Figure(
        f"reference: mkdir + link of the g1 tree in two processes ({len(dirs)} directories, "
        f"{len(files)} links; no stat, no record)",
        baseline_what=rsync,
    )
    # warm the in-process path once (imports, first database open); not counted
    home, root = s.fresh("warmup")
    act = inproc(home, root)
    act("deploy", s.g1)
    act("deploy", s.g2)
    act("rollback", None)
    for r in range(repeat):
        log(f"round {r + 1}/{repeat}")
        steps: list[Callable[[], None]] = []

        def baseline(r: int = r) -> None:
            dest = s.scratch / "rounds" / f"rsync-{r:03d}"
            seconds = timed(["rsync", "-a", f"{s.checkout}/", f"{dest}/"], sync_first=True)
            for fig in (cli_first, in_first, floor, calls):
                fig.baseline.append(seconds)
            floor.graven.append(timed(["cp", "-al", str(dest), f"{dest}-linked"], sync_first=True))
            calls.graven.append(link_tree(dest, Path(f"{dest}-calls"), dirs, files))

        def cli() -> None:
            home, root = s.fresh("cli")
            env = s.env(home)
            g = str(s.graven)
            first = timed([g, "deploy", s.g1, ENV, "--root", str(root)], env=env, sync_first=True)
            nxt = timed([g, "deploy", s.g2, ENV, "--root", str(root)], env=env, sync_first=True)
            back = timed([g, "rollback", ENV, "--root", str(root)], env=env, sync_first=True)
            cli_first.graven.append(first)
            cli_next.graven.append(nxt)
            cli_next.baseline.append(first)
            cli_back.graven.append(back)
            cli_back.baseline.append(first)

        def inprocess() -> None:
            home, root = s.fresh("inproc")
            act = inproc(home, root)
            first = act("deploy", s.g1)
            nxt = act("deploy", s.g2)
            back = act("rollback", None)
            in_first.graven.append(first)
            in_next.graven.append(nxt)
            in_next.baseline.append(first)
            in_back.graven.append(back)
            in_back.baseline.append(first)

        steps = [baseline, cli, inprocess]
        if r % 2:
            steps.reverse()
        for step in steps:
            step()
    return [cli_first, in_first, cli_next, in_next, cli_back, in_back, floor, calls]


def write_results(
    path: Path,
    s: Setup,
    figures: list[Figure],
    *,
    load_start: tuple[float, float, float],
    elapsed: float,
    n: int,
) -> None:
    lines = [
        SECTION,
        "",
        f"Written by `bench/deploy_bench.py --repeat {n}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
        f"({os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end; {elapsed:.0f} s). Workload: django "
        f"g1 = {s.commits['g1'][:12]}, g2 = {s.commits['g2'][:12]} (v1/v2 + graven.toml with [env.{ENV}]); "
        f"{s.files} files, {s.size / 1e6:.1f} MB. Each round deploys into a fresh environment (a copy of "
        "one home holding both builds); medians of all rounds, nothing dropped.",
        "",
        "| benchmark | N | graven | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {len(f.graven)} | {fmt(statistics.median(f.graven))} | "
            f"{fmt(statistics.median(f.baseline))} | {f.ratio:.2f}x | {f.target_text} | {f.verdict} |"
        )
    lines += ["", "Baselines:", ""]
    lines += [f"- {f.name}: {f.baseline_what}" for f in figures]
    lines += ["", "Every measured run:", ""]
    for f in figures:
        lines.append(f"- {f.name}: graven [{', '.join(fmt(v) for v in f.graven)}]")
        lines.append(f"  baseline [{', '.join(fmt(v) for v in f.baseline)}]")
    by_name = {f.name.split(" (")[0]: f for f in figures if f.target is not None and "in-process" in f.name}
    cli_rollback = next(f for f in figures if f.name.startswith("rollback") and "(CLI)" in f.name)
    in_rollback = next(f for f in figures if f.name.startswith("rollback") and "in-process" in f.name)
    floor = next(f for f in figures if f.name.startswith("reference: `cp -al`"))
    calls = next(f for f in figures if f.name.startswith("reference: mkdir + link"))
    nxt = statistics.median(by_name["deploy g2 while g1 is live"].graven)
    first_in = statistics.median(by_name["first deploy of g1, empty environment"].graven)
    rsync = statistics.median(floor.baseline)
    fixed = statistics.median(cli_rollback.graven) - statistics.median(in_rollback.graven)
    lines += [
        "",
        "Reading the figures:",
        "",
        f"- the next-version deploy (in-process, median {fmt(nxt)}) is {nxt / rsync:.2f}x of `rsync -a`, "
        f"{nxt / statistics.median(floor.graven):.2f}x of `cp -al` of the same tree and "
        f"{nxt / statistics.median(calls.graven):.2f}x of the bare `mkdir` + `link` calls of a "
        f"hard-linked tree ({fmt(statistics.median(calls.graven))}, "
        f"{statistics.median(calls.graven) / first_in:.2f}x of graven's first deploy): the rest is "
        "graven's own work (a stat before and after each link, the records and their table, the "
        "signature and manifest, the plan, the copies). A first deploy makes the same directories, so "
        "their cost is on both sides of the ratio; graven's first deploy is itself "
        f"{first_in / rsync:.2f}x of rsync",
        f"- the fixed cost of a command (CLI minus in-process rollback) is {fmt(fixed)}: interpreter "
        "start-up and imports (cryptography only to sign the audit log's checkpoint: the provenance's "
        "signature comes from the memo of verified signatures), the database and the trust policy; "
        "it is most of the CLI rollback and decides the CLI ratios",
    ]
    lines += [
        "",
        "Notes:",
        "",
        "- a deploy verifies the signature against the trust policy for the environment, reads the "
        "environment's settings from the graven.toml named by the verified provenance, takes the "
        "manifest from the home's cache of validated manifests (the build left it there), copies every file "
        "from the store through a verified read (never a hard link to a store object), records each file's "
        "stat, renames the release into place and switches `current` with one rename (then fsyncs the "
        "directory); the next version hard-links files whose sha256, mode and recorded stat are unchanged "
        "from the live release and copies the rest; a rollback with its release on disk checks that release "
        "by stat (the size, mtime, ctime, mode and inode of every directory and file) and switches",
        "- CLI figures include interpreter start-up and imports; the in-process figures do not (they run "
        "in the harness after one warm-up deploy, each with a new Context)",
        "- `sync` (untimed) before every timed run, so that the writeback of one run does not slow the "
        "next; the machine's disk is shared and noisy: compare ratios within a round, not absolute times",
    ]
    text = "\n".join(lines) + "\n"
    replace_section(path, SECTION, text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
