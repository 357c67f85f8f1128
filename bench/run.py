"""graven benchmark harness: graven against plain-tool baselines measured in the same run.

Usage (from the project root; ``make bench`` runs the first line)::

    .venv/bin/python bench/run.py [--workloads DIR] [--repeat N] [--only NAME ...] [--keep]

The workloads (``django``, ``large``, ``bin``) are made by ``bench/make_workloads.sh``; see bench/README.md.
Every figure is the median of all measured runs (nothing is dropped) and every baseline is measured in the
same run, interleaved with the graven runs, so that machine noise affects both alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from common import GIT_PREP_ENV

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
DEFAULT_RESULTS = BENCH_DIR / "RESULTS.md"

DJANGO_VERSIONS = 10
ZSTD = ["zstd", "-3", "-T1"]
TAR_DETERMINISTIC = [
    "tar",
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "-cf",
    "-",
    ".",
]
BIG_FILE_BYTES = 1 << 30
RSS_TARGET_BYTES = 150_000_000
STARTUP_MIN_REPEAT = 20


# ---------------------------------------------------------------------------------------------------
# Running and measuring processes
# ---------------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A command failed or the set-up is unusable."""


@dataclass(frozen=True)
class ProcResult:
    """One finished child process."""

    seconds: float
    maxrss_bytes: int  # wait4(): the largest single process of the child's tree
    hwm_bytes: int  # sampled VmHWM of the direct child itself (0 unless sampled)
    stdout: str


class _HwmSampler:
    """Polls ``/proc/PID/status`` for VmHWM (the peak RSS so far, which only grows) until stopped."""

    def __init__(self, pid: int, interval: float = 0.01, *, child: bool = False) -> None:
        self._pid = pid
        self._child = child  # sample the (first) child of ``pid``: the command under /usr/bin/time
        self._path = Path(f"/proc/{pid}/status")
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kib = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._child and not self._stop.is_set():
            try:
                children = Path(f"/proc/{self._pid}/task/{self._pid}/children").read_text().split()
            except OSError:
                return
            if children:
                self._path = Path(f"/proc/{children[0]}/status")
                break
            self._stop.wait(0.001)
        while not self._stop.is_set():
            try:
                text = self._path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                    break
            else:  # a zombie has no memory lines: the process has exited
                if "State:\tZ" in text:
                    return
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib * 1024


def _tail(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")[-2000:]


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    capture: bool = False,
    sample_hwm: bool = False,
) -> ProcResult:
    """Run ``argv`` to completion; wall time, peak RSS (wait4) and optionally stdout."""
    args = [str(a) for a in argv]
    # A child forked from this (large) harness starts with the harness's pages counted in its
    # ru_maxrss, so for memory figures the command runs under /usr/bin/time, a small parent.
    time_out = Path(tempfile.mkstemp(prefix="graven-rss-")[1]) if sample_hwm else None
    if time_out is not None and Path("/usr/bin/time").exists():
        args = ["/usr/bin/time", "-f", "%M", "-o", str(time_out), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out if capture else subprocess.DEVNULL,
            stderr=err,
        )
        sampler = _HwmSampler(proc.pid, child=args[0] == "/usr/bin/time") if sample_hwm else None
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        hwm = sampler.stop() if sampler else 0
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(args)} exited {proc.returncode} in {cwd}:\n{_tail(err)}")
        stdout = ""
        if capture:
            out.seek(0)
            stdout = out.read().decode("utf-8", "replace")
    maxrss = usage.ru_maxrss * 1024
    if time_out is not None:
        text = time_out.read_text().strip()
        time_out.unlink()
        if text:
            maxrss = int(text.splitlines()[-1]) * 1024
    return ProcResult(seconds, maxrss, hwm, stdout)


def run_pipeline(left: Sequence[str], right: Sequence[str], *, cwd: Path) -> float:
    """Time ``left | right > /dev/null`` (no shell in between)."""
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
        start = time.perf_counter()
        first = subprocess.Popen(left, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err1)
        second = subprocess.Popen(right, cwd=cwd, stdin=first.stdout, stdout=subprocess.DEVNULL, stderr=err2)
        assert first.stdout is not None
        first.stdout.close()
        rc2 = second.wait()
        rc1 = first.wait()
        seconds = time.perf_counter() - start
        if rc1 or rc2:
            raise BenchError(
                f"{' '.join(left)} | {' '.join(right)} failed ({rc1}, {rc2}) in {cwd}:\n"
                f"{_tail(err1)}{_tail(err2)}"
            )
    return seconds


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a set-up git command in ``repo``; its stdout."""
    result = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def apparent_bytes(root: Path) -> int:
    """The sum of the sizes of the regular files under ``root``."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
    return total


def du_bytes(root: Path) -> int:
    """``du -sk root`` in bytes (allocated blocks)."""
    out = subprocess.run(["du", "-sk", str(root)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) * 1024


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    name: str
    unit: str  # "s" or "B"
    graven: list[float]
    baseline: list[float] | None = None
    baseline_what: str = ""
    target: float | None = None  # a ratio, or with ``absolute`` a limit on the graven median
    absolute: bool = False

    @property
    def graven_median(self) -> float:
        return statistics.median(self.graven)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        return self.graven_median / base if base else None

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "info"
        return f"<= {fmt(self.target, self.unit)}" if self.absolute else f"<= {self.target:g}x"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        value = self.graven_median if self.absolute else self.ratio
        if value is None:
            return "-"
        return "PASS" if value <= self.target else "FAIL"

    @property
    def n(self) -> str:
        if self.baseline and len(self.baseline) != len(self.graven):
            return f"{len(self.graven)}/{len(self.baseline)}"
        return str(len(self.graven))


def fmt(value: float, unit: str) -> str:
    """Seconds as ms or s, bytes as MB (10^6)."""
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"
    return f"{value / 1e6:.2f} MB"


def fmt_ratio(ratio: float, target: float | None) -> str:
    """Two decimals, or three when two would hide on which side of the target the ratio is."""
    text = f"{ratio:.2f}"
    if target is not None and text == f"{target:.2f}":
        text = f"{ratio:.3f}"
    return f"{text}x"


def table_cells(row: Row) -> list[str]:
    base = row.baseline_median
    ratio = row.ratio
    return [
        row.name,
        row.n,
        fmt(row.graven_median, row.unit),
        fmt(base, row.unit) if base is not None else "-",
        fmt_ratio(ratio, row.target) if ratio is not None else "-",
        row.target_text,
        row.verdict,
    ]


HEADERS = ["benchmark", "N", "graven", "baseline", "ratio", "target", "result"]


def format_table(rows: Sequence[Row]) -> str:
    cells = [HEADERS] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = table_cells(row)
        cells[-1] = f"**{cells[-1]}**" if cells[-1] == "FAIL" else cells[-1]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The run: paths, environments, workloads
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A scratch clone of one workload with g1..gN = vK + graven.toml."""

    name: str
    clone: Path
    commits: dict[str, str]


@dataclass
class Bench:
    """State shared by the benchmarks of one run."""

    workloads: Path
    scratch: Path
    repeat: int
    python: Path
    graven: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prepared: dict[str, Workload] = field(default_factory=dict)
    _homes: int = 0
    _inproc_warm: bool = False

    # -- environments -----------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # graven must run from its .pyc files
        env.pop("GRAVEN_DB_URL", None)
        return env

    def graven_env(self, home: Path) -> dict[str, str]:
        env = self.base_env()
        env["GRAVEN_HOME"] = str(home)
        return env

    def prep_env(self) -> dict[str, str]:
        env = self.base_env()
        env.update(GIT_PREP_ENV)
        env["HOME"] = str(self.scratch)  # ignore the user's git configuration
        return env

    def new_home(self, *, create: bool = False) -> Path:
        """A fresh GRAVEN_HOME path; homes are deleted at the end, not between timed runs."""
        self._homes += 1
        home = self.scratch / "homes" / f"h{self._homes:04d}"
        if create:
            home.mkdir(parents=True)
        return home

    def make_signing_key(self) -> None:
        """One signing key outside every home, for all runs (GRAVEN_SIGNING_KEY), made untimed."""
        keyhome = self.scratch / "signing"
        try:
            out = run(
                [self.graven, "keys", "generate", "--json"], env=self.graven_env(keyhome), capture=True
            ).stdout
        except BenchError as exc:  # a graven without signing: nothing to set up
            self.log(f"no signing key made ({str(exc).splitlines()[-1]})")
            return
        key = json.loads(out)["private_key"]
        os.environ["GRAVEN_SIGNING_KEY"] = key  # read by in-process builds; copied into subprocess envs
        self.notes.append(
            "builds sign with one ed25519 key made before timing (GRAVEN_SIGNING_KEY=<file>), so a fresh "
            "GRAVEN_HOME needs no `graven keys generate`"
        )

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- workloads --------------------------------------------------------------------------------

    def workload(self, name: str, versions: int = 1) -> Workload:
        """Clone workload ``name`` and commit g1..g<versions> (each = v<k> + graven.toml), once."""
        if name in self.prepared:
            return self.prepared[name]
        source = self.workloads / name
        if not (source / ".git").is_dir():
            raise BenchError(
                f"workload {source} is missing: run bench/make_workloads.sh (see bench/README.md)"
            )
        clone = self.scratch / "repos" / name
        env = self.prep_env()
        self.log(f"preparing {clone} (g1..g{versions})")
        clone.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(source), str(clone)], env=env, check=True)
        git(clone, "config", "core.autocrlf", "false", env=env)
        commits: dict[str, str] = {}
        for k in range(1, versions + 1):
            git(clone, "checkout", "-q", "--detach", f"v{k}", env=env)
            (clone / "graven.toml").write_text(f'[artifact]\nname = "{name}"\n')
            git(clone, "add", "graven.toml", env=env)
            git(
                clone,
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "-m",
                f"g{k}: v{k} + graven.toml",
                env=env,
            )
            git(clone, "tag", f"g{k}", env=env)
            commits[f"g{k}"] = git(clone, "rev-parse", "HEAD", env=env)
        git(clone, "checkout", "-q", "--detach", "g1", env=env)  # HEAD = g1 for `git archive HEAD`
        workload = Workload(name, clone, commits)
        self.prepared[name] = workload
        self.notes.append(f"`{name}` commits: " + ", ".join(f"{t}={c[:12]}" for t, c in commits.items()))
        return workload

    def checkout(self, wl: Workload, tag: str = "g1") -> Path:
        """``git archive TAG`` extracted into a directory (no .git): the export baseline's input."""
        dest = self.scratch / "checkouts" / f"{wl.name}-{tag}"
        if not dest.exists():
            dest.mkdir(parents=True)
            archive = subprocess.Popen(["git", "-C", str(wl.clone), "archive", tag], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
            if archive.wait() != 0:
                raise BenchError(f"git archive {tag} failed in {wl.clone}")
        return dest

    # -- graven, both ways ------------------------------------------------------------------------

    def cli_build(
        self, home: Path, repo: Path, rev: str, *, sample_hwm: bool = False, no_cache: bool = False
    ) -> ProcResult:
        return run(
            [self.graven, "build", "-C", repo, rev, *(["--no-cache"] if no_cache else [])],
            env=self.graven_env(home),
            capture=True,
            sample_hwm=sample_hwm,
        )

    def cli_export(self, home: Path, digest: str, out: Path) -> tuple[float, int]:
        seconds = run([self.graven, "export", digest, "-o", out], env=self.graven_env(home)).seconds
        size = out.stat().st_size
        out.unlink()
        return seconds, size

    def warm_inproc(self) -> None:
        """Import graven and run one unmeasured build + export, so that in-process runs are warm."""
        if self._inproc_warm:
            return
        wl = self.workload("django", DJANGO_VERSIONS)
        home = self.new_home()
        digest = self.inproc_build(home, wl.clone, "g1")[1]
        self.inproc_export(home, digest, self.scratch / "warmup.tar.zst")
        self._inproc_warm = True

    def inproc_build(self, home: Path, repo: Path, rev: str) -> tuple[float, str]:
        from graven.home import Home
        from graven.service.build import build
        from graven.service.context import Context

        # closing the Context is timed: SQLite's last close checkpoints the WAL into graven.db and
        # fsyncs it (several ms after a cold build), which the CLI build pays before it exits too
        start = time.perf_counter()
        with Context(home=Home(root=home)) as ctx:
            result = build(ctx, path=repo, revision=rev)
        seconds = time.perf_counter() - start
        return seconds, result.digest

    def inproc_export(self, home: Path, digest: str, out: Path) -> float:
        from graven.home import Home
        from graven.service.artifacts import resolve_digest
        from graven.service.context import Context
        from graven.service.transfer import export_artifact

        start = time.perf_counter()
        with Context(home=Home(root=home)) as ctx:
            export_artifact(ctx, resolve_digest(ctx, digest), out)
        seconds = time.perf_counter() - start
        out.unlink()
        return seconds


# ---------------------------------------------------------------------------------------------------
# The benchmarks
# ---------------------------------------------------------------------------------------------------

GIT_ARCHIVE = "`git archive HEAD | zstd -3 -T1 > /dev/null`"
TAR_ZSTD = "`tar --sort=name ... -cf - . | zstd -3 -T1 > /dev/null` of a checkout"


def bench_cold(b: Bench) -> None:
    """1. Cold build (fresh GRAVEN_HOME per run) of django and large, CLI and in-process."""
    b.warm_inproc()
    for name, versions in (("django", DJANGO_VERSIONS), ("large", 1)):
        wl = b.workload(name, versions)
        base: list[float] = []
        cli: list[float] = []
        inproc: list[float] = []
        from_git: list[float] = []
        for i in range(b.repeat):
            base.append(run_pipeline(["git", "archive", "HEAD"], ZSTD, cwd=wl.clone))
            cli.append(b.cli_build(b.new_home(), wl.clone, "g1").seconds)
            inproc.append(b.inproc_build(b.new_home(), wl.clone, "g1")[0])
            if name == "django":
                from_git.append(b.cli_build(b.new_home(), wl.clone, "g1", no_cache=True).seconds)
            b.log(
                f"cold/{name} #{i + 1}: baseline {base[-1]:.3f}s cli {cli[-1]:.3f}s "
                f"in-process {inproc[-1]:.3f}s" + (f" --no-cache {from_git[-1]:.3f}s" if from_git else "")
            )
        for label, values in (("CLI", cli), ("in-process", inproc)):
            b.rows.append(Row(f"1 cold build {name} ({label})", "s", values, base, GIT_ARCHIVE, 1.5))
        if from_git:
            b.rows.append(Row(f"1 cold build {name}, --no-cache (CLI)", "s", from_git, base, GIT_ARCHIVE))
    b.notes.append(
        "cold builds run in a clone whose working tree is g1 (HEAD detached at g1): blobs are taken from "
        "the working tree where a file hashes to the commit's blob id, as in any checkout "
        "(graven.sources.worktree); the `--no-cache` row reads every blob from git instead (info)"
    )


def bench_incremental(b: Bench) -> None:
    """2. Build g2 right after g1 into the same home vs the cold build of g1 (paired, same home)."""
    b.warm_inproc()
    wl = b.workload("django", DJANGO_VERSIONS)
    cold_cli: list[float] = []
    inc_cli: list[float] = []
    cold_in: list[float] = []
    inc_in: list[float] = []
    for i in range(b.repeat):
        home = b.new_home()
        cold_cli.append(b.cli_build(home, wl.clone, "g1").seconds)
        inc_cli.append(b.cli_build(home, wl.clone, "g2").seconds)
        home = b.new_home()
        cold_in.append(b.inproc_build(home, wl.clone, "g1")[0])
        inc_in.append(b.inproc_build(home, wl.clone, "g2")[0])
        b.log(
            f"incremental #{i + 1}: cli g1 {cold_cli[-1]:.3f}s g2 {inc_cli[-1]:.3f}s, "
            f"in-process g1 {cold_in[-1]:.3f}s g2 {inc_in[-1]:.3f}s"
        )
    what = "cold build of g1"
    b.rows.append(Row("2 incremental g2 after g1, django (CLI)", "s", inc_cli, cold_cli, what, 0.2))
    b.rows.append(Row("2 incremental g2 after g1, django (in-process)", "s", inc_in, cold_in, what, 0.2))


def bench_export(b: Bench) -> None:
    """3. ``graven export`` to .tar.zst vs deterministic GNU tar | zstd of an extracted checkout."""
    b.warm_inproc()
    for name, versions in (("django", DJANGO_VERSIONS), ("large", 1)):
        wl = b.workload(name, versions)
        tree = b.checkout(wl)
        home = b.new_home()
        digest = b.cli_build(home, wl.clone, "g1").stdout.split()[-1]
        out = b.scratch / f"export-{name}.tar.zst"
        base: list[float] = []
        cli: list[float] = []
        inproc: list[float] = []
        for i in range(b.repeat):
            base.append(run_pipeline(TAR_DETERMINISTIC, ZSTD, cwd=tree))
            seconds, size = b.cli_export(home, digest, out)
            cli.append(seconds)
            inproc.append(b.inproc_export(home, digest, out))
            b.log(
                f"export/{name} #{i + 1}: baseline {base[-1]:.3f}s cli {cli[-1]:.3f}s "
                f"in-process {inproc[-1]:.3f}s"
            )
        b.notes.append(f"`graven export` of {name} g1 wrote {size:,} bytes of .tar.zst")
        for label, values in (("CLI", cli), ("in-process", inproc)):
            b.rows.append(Row(f"3 export {name} .tar.zst ({label})", "s", values, base, TAR_ZSTD, 1.1))


def _store_sizes(home: Path) -> tuple[int, int, int, int]:
    """(apparent, du) of the store = GRAVEN_HOME without ``cache/``; apparent bytes in objects/ and
    in cache/ (the parsed-manifest cache: derived, capped, safe to delete, so not the store)."""
    cache = home / "cache"
    cached = (apparent_bytes(cache), du_bytes(cache)) if cache.exists() else (0, 0)
    return (
        apparent_bytes(home) - cached[0],
        du_bytes(home) - cached[1],
        apparent_bytes(home / "objects"),
        cached[0],
    )


def bench_store(b: Bench) -> None:
    """4. Store size after g1..g10 vs after g1 alone, and vs git's packed repository."""
    wl = b.workload("django", DJANGO_VERSIONS)
    home = b.new_home()
    b.cli_build(home, wl.clone, "g1")
    one = _store_sizes(home)
    for k in range(2, DJANGO_VERSIONS + 1):
        b.cli_build(home, wl.clone, f"g{k}")
    ten = _store_sizes(home)
    mirror = b.scratch / "repos" / "django-mirror.git"
    env = b.prep_env()
    subprocess.run(
        ["git", "clone", "-q", "--mirror", "--no-local", str(wl.clone), str(mirror)], env=env, check=True
    )
    git(mirror, "repack", "-a", "-d", "-q", env=env)
    pack_dir = mirror / "objects" / "pack"
    pack = (apparent_bytes(pack_dir), du_bytes(pack_dir))
    git_what = "git pack (`clone --mirror --no-local` + `repack -a -d`)"
    b.rows += [
        Row("4 store django g1..g10 vs g1 (apparent)", "B", [ten[0]], [one[0]], "store after g1 alone", 1.2),
        Row("4 store django g1..g10 vs g1 (du -sk)", "B", [ten[1]], [one[1]], "store after g1 alone", 1.2),
        Row("4 store django g1..g10 vs git (apparent)", "B", [ten[0]], [pack[0]], git_what, 2.0),
        Row("4 store django g1..g10 vs git (du -sk)", "B", [ten[1]], [pack[1]], git_what, 2.0),
        Row(
            "4 GRAVEN_HOME with cache/ after g1..g10 (apparent)",
            "B",
            [ten[0] + ten[3]],
            [one[0] + one[3]],
            "the same after g1 alone",
        ),
    ]
    b.notes.append(
        "store = GRAVEN_HOME (objects/, graven.db, keys/) without cache/, the parsed-manifest cache "
        "(derived from the store, at most 32 entries and 64 MiB, safe to delete; docs/formats/store-v1.md). "
        f"After g1: {one[0]:,} B apparent ({one[2]:,} B in objects/, {one[0] - one[2]:,} B graven.db and "
        f"keys), {one[1]:,} B du; cache/ {one[3]:,} B. After g1..g10: {ten[0]:,} B apparent ({ten[2]:,} B "
        f"in objects/, {ten[0] - ten[2]:,} B graven.db and keys), {ten[1]:,} B du; cache/ {ten[3]:,} B. "
        "git objects/pack (g1..g10 + v1..v10 history, default repack, not --aggressive): "
        f"{pack[0]:,} B apparent, {pack[1]:,} B du."
    )
    b.log(f"store: g1 {one}, g1..g10 {ten}, git pack {pack}")


def _make_big_repo(b: Bench) -> Path:
    repo = b.scratch / "repos" / "big"
    env = b.prep_env()
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main", env=env)
    big = repo / "big.bin"
    rng = random.Random(20250101)
    b.log(f"writing {BIG_FILE_BYTES:,} pseudo-random bytes to {big}")
    with big.open("wb") as handle:
        for _ in range(BIG_FILE_BYTES >> 20):
            handle.write(rng.randbytes(1 << 20))
    os.utime(big, (1_700_000_000, 1_700_000_000))  # older than the index: `git status` will not rehash it
    (repo / "graven.toml").write_text('[artifact]\nname = "big"\n')
    git(repo, "-c", "core.compression=0", "add", "big.bin", "graven.toml", env=env)
    git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "1 GiB file", env=env)
    git(repo, "tag", "g1", env=env)
    return repo


def bench_rss(b: Bench) -> None:
    """5. Peak RSS of a cold ``graven build`` of a tree holding a 1 GiB file."""
    repo = _make_big_repo(b)
    tree_rss: list[float] = []
    own_rss: list[float] = []
    seconds: list[float] = []
    try:
        for i in range(b.repeat):
            home = b.new_home()
            result = b.cli_build(home, repo, "g1", sample_hwm=True)
            shutil.rmtree(home)  # 1 GiB each; only memory is judged here
            tree_rss.append(result.maxrss_bytes)
            own_rss.append(result.hwm_bytes)
            seconds.append(result.seconds)
            b.log(
                f"rss #{i + 1}: wait4 max {result.maxrss_bytes / 1e6:.1f} MB, graven VmHWM "
                f"{result.hwm_bytes / 1e6:.1f} MB, {result.seconds:.2f}s"
            )
    finally:
        shutil.rmtree(repo)
    b.notes.append(
        "peak RSS: `wait4` (what `/usr/bin/time -f %M` reports) is the largest single process of graven's "
        "tree, git children included; VmHWM is sampled every 10 ms from /proc for the graven (python) "
        "process alone"
    )
    b.rows += [
        Row(
            "5 peak RSS, 1 GiB file (wait4, process tree)",
            "B",
            tree_rss,
            target=RSS_TARGET_BYTES,
            absolute=True,
        ),
        Row("5 peak RSS, 1 GiB file (graven VmHWM)", "B", own_rss, target=RSS_TARGET_BYTES, absolute=True),
        Row("5 build time, 1 GiB file (CLI)", "s", seconds),
    ]


def bench_startup(b: Bench) -> None:
    """6. ``graven --version`` and ``graven artifacts`` on an empty home vs ``python -c pass``."""
    n = max(STARTUP_MIN_REPEAT, b.repeat)
    home = b.new_home(create=True)
    env = b.graven_env(home)
    base: list[float] = []
    version: list[float] = []
    listing: list[float] = []
    for _ in range(n):
        base.append(run([b.python, "-c", "pass"], env=env).seconds)
        version.append(run([b.graven, "--version"], env=env).seconds)
        listing.append(run([b.graven, "artifacts"], env=env).seconds)
    if any(home.iterdir()):
        b.notes.append(
            f"`graven artifacts` on an empty home created: {sorted(p.name for p in home.iterdir())}"
        )
    what = f"`{b.python} -c pass`"
    b.rows.append(Row("6 `graven --version`", "s", version, base, what, 3.0))
    b.rows.append(Row("6 `graven artifacts`, empty home", "s", listing, base, what, 3.0))
    b.log(f"startup: python {statistics.median(base):.4f}s version {statistics.median(version):.4f}s")


def bench_bin(b: Bench) -> None:
    """7. Cold build of the bin workload (3 x 100 MiB random + a tarball): informational."""
    wl = b.workload("bin")
    base: list[float] = []
    cli: list[float] = []
    for i in range(b.repeat):
        base.append(run_pipeline(["git", "archive", "HEAD"], ZSTD, cwd=wl.clone))
        cli.append(b.cli_build(b.new_home(), wl.clone, "g1").seconds)
        b.log(f"bin #{i + 1}: baseline {base[-1]:.3f}s cli {cli[-1]:.3f}s")
    b.rows.append(Row("7 cold build bin (CLI)", "s", cli, base, GIT_ARCHIVE))


BENCHMARKS: dict[str, Callable[[Bench], None]] = {
    "cold": bench_cold,
    "incremental": bench_incremental,
    "export": bench_export,
    "store": bench_store,
    "rss": bench_rss,
    "startup": bench_startup,
    "bin": bench_bin,
}


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine_info(b: Bench) -> list[tuple[str, str]]:
    model = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(PROJECT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return [
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", str(os.cpu_count())),
        ("cpu", model),
        ("kernel", platform.release()),
        ("python", f"{platform.python_version()} ({b.python})"),
        ("graven", f"{_graven_version()} (checkout {commit or '?'})"),
        (
            "tools",
            f"{_version(['git', '--version'])}; {_version(['zstd', '--version'])}; "
            f"{_version(['tar', '--version'])}",
        ),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def _graven_version() -> str:
    import graven

    return graven.__version__


def write_results(path: Path, b: Bench, info: list[tuple[str, str]], argv: list[str], elapsed: float) -> None:
    lines = ["# graven benchmark results", ""]
    lines.append(
        f"Written by `bench/run.py {' '.join(argv)}` (see bench/README.md for what each line measures)."
    )
    lines.append("")
    lines += [f"- **{k}**: {v}" for k, v in info]
    lines.append(f"- **load average at end**: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    lines.append(
        f"- **scratch dir**: {b.scratch}; **workloads**: {b.workloads}; **run time**: {elapsed:.0f} s"
    )
    lines += ["", "## Results", ""]
    lines.append(
        "Medians of N runs (N = graven runs/baseline runs when they differ); "
        "ratio = graven median / baseline median. Times are wall clock; sizes and RSS in MB = 10^6 bytes."
    )
    lines += ["", markdown_table(b.rows), "", "## Baselines", ""]
    for row in b.rows:
        if row.baseline_what:
            lines.append(f"- {row.name}: {row.baseline_what}")
    lines += ["", "## Every measured run (nothing dropped)", ""]
    for row in b.rows:
        g = ", ".join(fmt(v, row.unit) for v in row.graven)
        lines.append(f"- {row.name}: graven [{g}]")
        if row.baseline:
            lines.append(f"  baseline [{', '.join(fmt(v, row.unit) for v in row.baseline)}]")
    if b.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in b.notes]
    path.write_text("\n".join(lines) + "\n" + _other_sections(path))


def _other_sections(path: Path) -> str:
    """The sections other benchmark scripts wrote (headed "## ... (issue N)"), kept as they are."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    kept: list[str] = []
    keep = False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = "(issue " in line
        if keep:
            kept.append(line)
    return ("\n" + "\n".join(kept) + "\n") if kept else ""


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    default_workloads = os.environ.get("GRAVEN_BENCH_WORKLOADS") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "graven-bench"
    )
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workloads",
        type=Path,
        default=Path(default_workloads),
        help="directory holding django/, large/, bin/ from make_workloads.sh "
        "(default: $GRAVEN_BENCH_WORKLOADS or ${TMPDIR:-/tmp}/graven-bench)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path(os.environ.get("GRAVEN_BENCH_DIR") or "/tmp/graven-bench-run"),
        help="scratch directory, emptied first (default: $GRAVEN_BENCH_DIR or /tmp/graven-bench-run)",
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where to write RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory afterwards")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any target is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.only = names or list(BENCHMARKS)
    return args


def precompile(env: dict[str, str], python: Path) -> None:
    """Write .pyc files for graven and its dependencies, so that no timed run compiles anything."""
    import graven

    paths = [*graven.__path__, sysconfig.get_paths()["purelib"]]
    subprocess.run(
        [str(python), "-m", "compileall", "-q", "-j0", *paths],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = parse_args(args_list)
    for tool in ("git", "zstd", "tar", "du"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not on PATH")
    python = Path(sys.executable)
    graven = python.parent / "graven"
    if not graven.exists():
        raise BenchError(f"{graven} not found: run bench/run.py with the project's venv python (make bench)")
    scratch: Path = args.scratch.absolute()
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    b = Bench(
        workloads=args.workloads.absolute(), scratch=scratch, repeat=args.repeat, python=python, graven=graven
    )
    info = machine_info(b)
    precompile(b.base_env(), python)
    b.make_signing_key()
    started = time.perf_counter()
    try:
        for name in args.only:
            b.log(f"== {name}")
            BENCHMARKS[name](b)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(format_table(b.rows))
    write_results(args.results, b, info, args_list, elapsed)
    b.log(f"wrote {args.results}")
    failed = [r.name for r in b.rows if r.verdict == "FAIL"]
    if failed:
        b.log(f"{len(failed)} target(s) missed: {'; '.join(failed)}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
