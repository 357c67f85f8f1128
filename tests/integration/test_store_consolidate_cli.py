"""Builds merge their packs as they accumulate; every artifact built before still verifies whole,
exports the same bytes, and the audit log is untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import git
from graven.store import local

Run = Callable[..., tuple[int, str, str]]


def test_builds_past_the_pack_limit_leave_every_artifact_intact(
    graven_home: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(local, "CONSOLIDATE_AT", 3)
    repo = make_repo(tmp_path / "repo", {f"app/m{i}.py": f"X = {i}\n" for i in range(20)})
    digests: list[str] = []
    exports: list[bytes] = []
    for n in range(8):
        (repo / "app" / "version.py").write_text(f"VERSION = {n}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"v{n}")
        code, out, err = run_cli("build", "-C", repo)
        assert code == 0, err
        digests.append(out.splitlines()[-1])
        if n == 0:
            assert run_cli("export", digests[0], "-o", tmp_path / "first.tar")[0] == 0
            exports.append((tmp_path / "first.tar").read_bytes())
    packs = sorted((graven_home / "objects" / "pack").glob("*.idx"))
    assert len(packs) <= 3
    for digest in digests:
        code, _out, err = run_cli("verify", digest)
        assert code == 0, err
    assert run_cli("export", digests[0], "-o", tmp_path / "again.tar")[0] == 0
    assert (tmp_path / "again.tar").read_bytes() == exports[0]
    code, _out, err = run_cli("log", "verify")
    assert code == 0, err
