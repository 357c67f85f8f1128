"""Signing benchmark (issue 3): what signing adds to a build and checking adds to a verify.

    python bench/signing_bench.py [--repo DIR] [--repeat 20]

Builds the workload repository once (in-process, fresh GRAVEN_HOME), then times, N times each, the
exact calls that `graven build` and `graven verify` make for provenance: building and signing the
statement (`sign_provenance`), and checking the stored envelope against the trust policy
(`check_provenance`, which reads the envelope from the store, verifies the DSSE signature and the subject).
Target: each adds <= 20 ms. The whole verify (re-hashing every object) is timed too, for scale.
Each signing run signs a statement of its own (a new invocation id, as every build has) and adds the
envelope in a store batch, as a build does. In-process figures: a CLI command also imports
``cryptography`` (~6.5 ms, bench/PROFILING.md section 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from graven.build.sandbox import SANDBOX_NONE
from graven.home import Home
from graven.runtime import random_uuid
from graven.service.artifacts import verify_artifact
from graven.service.build import build
from graven.service.context import Context
from graven.service.provenance import (
    check_provenance,
    load_policy,
    provenance_inputs,
    resolve_signing_key,
    sign_provenance,
)
from graven.signing.keys import KeyStore
from graven.signing.trust import store_trusted_key


def prepare(repo: Path, scratch: Path) -> Path:
    clone = scratch / "repo"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (clone / "graven.toml").write_text('[artifact]\nname = "bench"\n')
    env = {
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@x",
        "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "add", "graven.toml"], cwd=clone, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "graven"], cwd=clone, check=True, env=env)
    return clone


def main() -> None:
    parser = argparse.ArgumentParser()
    workloads = os.environ.get("GRAVEN_BENCH_WORKLOADS") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "graven-bench"
    )
    parser.add_argument("--repo", type=Path, default=Path(workloads) / "django")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        clone = prepare(args.repo, scratch)
        home = Home(root=scratch / "home")
        keys = KeyStore(home.keys)
        keys.generate("default")
        store_trusted_key(home.trust, keys.export_public("default"))
        with Context(home=home) as ctx:
            result = build(ctx, path=clone, revision="HEAD")
            key = resolve_signing_key(ctx)
            sign_ms, check_ms, verify_ms = [], [], []
            from graven.model.digest import Digest

            digest = Digest.parse(result.digest)
            for _ in range(args.repeat):
                # a new invocation each time, as each build is: a new statement, a new envelope to store
                # (the same inputs would sign to the same bytes, already stored after the first run)
                inputs = provenance_inputs(
                    name=result.name,
                    digest=result.digest,
                    repository=result.repository,
                    revision=result.revision,
                    commit=result.commit,
                    source_date_epoch=result.source_date_epoch,
                    sandbox=SANDBOX_NONE,
                    invocation_id=random_uuid(),
                    started_on=result.started_at,
                    finished_on=result.finished_at,
                    pipeline_digest=result.pipeline_digest,
                )
                start = time.perf_counter()
                envelope = sign_provenance(key, inputs)
                with ctx.store.batch() as batch:  # as graven build adds it
                    batch.add(envelope.to_json())
                sign_ms.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                outcome = check_provenance(ctx, digest, policy=load_policy(ctx))
                check_ms.append((time.perf_counter() - start) * 1000)
                assert outcome.ok, outcome.reason
            for _ in range(3):
                start = time.perf_counter()
                assert verify_artifact(ctx, digest).ok
                verify_ms.append((time.perf_counter() - start) * 1000)
    print(f"files: {result.file_count}")
    print(f"sign + store provenance: median {statistics.median(sign_ms):.2f} ms (target <= 20 ms)")
    print(
        f"check provenance (read, DSSE verify, trust, subject): median {statistics.median(check_ms):.2f} ms "
        "(target <= 20 ms)"
    )
    print(f"for scale, re-hashing the artifact in verify: median {statistics.median(verify_ms):.0f} ms")


if __name__ == "__main__":
    main()
