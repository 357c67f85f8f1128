"""Audit log benchmarks (issue 6): append throughput and `graven log verify` of a 1,000,000-entry log.

    python bench/log_bench.py [--entries 1000000] [--appends 3000] [--repeat 3]

Append throughput goes through the real API (`AuditLog.record`: one transaction, one signed
checkpoint per entry) on SQLite. The large log is made with bulk inserts of exactly what `append`
writes (entries, leaf hashes, a signed checkpoint per size, the compact-range state), then verified
with the real `graven log verify` command. Inclusion proof sizes are checked against 32*ceil(log2 n).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from graven.core.checkpoint import Checkpoint, sign_checkpoint
from graven.core.merkle import CompactRange
from graven.home import Home
from graven.model.logentry import LogEntry, LogEvent
from graven.service.context import Context


def append_throughput(appends: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, Context(home=Home(root=Path(tmp))) as ctx:
        ctx.audit.record(LogEvent("deploy"))  # schema, key, origin
        start = time.perf_counter()
        for i in range(appends):
            ctx.audit.record(LogEvent("deploy", env="prod", artifact=f"sha256:{i:064x}", reason="bench"))
        return appends / (time.perf_counter() - start)


def make_large_log(home: Path, entries: int) -> None:
    with Context(home=Home(root=home)) as ctx:
        ctx.audit.record(LogEvent("deploy", reason="first"))  # schema, key and origin the normal way
        key = ctx.audit._signing_key(create=False).private
        assert isinstance(key, Ed25519PrivateKey)
        origin = ctx.audit.origin()
    db = __import__("sqlite3").connect(home / "graven.db", isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    (first,) = db.execute("SELECT entry FROM log_entries WHERE idx = 0").fetchone()
    compact = CompactRange()
    compact.append(hashlib.sha256(b"\x00" + first.encode()).digest())
    batch_e, batch_c = [], []
    db.execute("BEGIN")
    for index in range(1, entries):
        entry = LogEntry.of(
            LogEvent("deploy", env="prod", artifact=f"sha256:{index:064x}", reason="bench"),
            index=index,
            time=f"2026-01-01T00:00:00.{index % 1000000:06d}Z",
            actor="bench@host",
        )
        data = entry.to_bytes()
        leaf = hashlib.sha256(b"\x00" + data).digest()
        compact.append(leaf)
        root = compact.root()
        note = sign_checkpoint(Checkpoint(origin, compact.size, root), origin, key)
        batch_e.append((index, data.decode(), leaf.hex(), entry.time, entry.event, entry.artifact, entry.env))
        batch_c.append((compact.size, root.hex(), note))
        if len(batch_e) >= 20000:
            db.executemany("INSERT INTO log_entries VALUES (?,?,?,?,?,?,?)", batch_e)
            db.executemany("INSERT INTO log_checkpoints VALUES (?,?,?)", batch_c)
            batch_e, batch_c = [], []
    db.executemany("INSERT INTO log_entries VALUES (?,?,?,?,?,?,?)", batch_e)
    db.executemany("INSERT INTO log_checkpoints VALUES (?,?,?)", batch_c)
    db.execute(
        "UPDATE log_state SET size = ?, frontier = ?",
        (compact.size, ",".join(h.hex() for h in compact.hashes)),
    )
    db.execute("COMMIT")
    db.close()


def time_cli(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "GRAVEN_HOME": str(home)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "graven", *args], env=env, capture_output=True, text=True, check=False
    )
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rates = [append_throughput(args.appends) for _ in range(args.repeat)]
    print(
        f"append throughput (SQLite, signed checkpoint each): median {statistics.median(rates):.0f}/s "
        f"over {args.repeat} runs of {args.appends} (target >= 1000/s)"
    )

    with tempfile.TemporaryDirectory(dir=os.environ.get("GRAVEN_BENCH_DIR")) as tmp:
        home = Path(tmp)
        start = time.perf_counter()
        make_large_log(home, args.entries)
        print(f"made a {args.entries}-entry log in {time.perf_counter() - start:.0f} s")
        times = []
        for _ in range(args.repeat):
            elapsed, done = time_cli(home, "log", "verify", "--json")
            report = json.loads(done.stdout)
            assert report["ok"] and report["size"] == args.entries, report
            times.append(elapsed)
        print(
            f"graven log verify, {args.entries} entries: median {statistics.median(times):.1f} s "
            f"(target <= 30 s); runs {[round(t, 1) for t in times]}"
        )
        worst = 0
        for index in (0, args.entries // 2, args.entries - 1):
            _, done = time_cli(home, "log", "prove", str(index))
            proof = json.loads(done.stdout)
            size = 32 * len(proof["proof"])
            worst = max(worst, size)
            assert size <= 32 * math.ceil(math.log2(args.entries))
        print(
            f"inclusion proof: at most {worst} bytes (bound 32*ceil(log2 n) = "
            f"{32 * math.ceil(math.log2(args.entries))})"
        )


if __name__ == "__main__":
    main()
