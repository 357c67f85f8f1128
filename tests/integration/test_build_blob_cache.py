"""graven build without steps: the blob cache is trusted only for objects the store has; start-up."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import commit_all, git

Run = Callable[..., tuple[int, str, str]]

APP = {"app/main.py": "print('main')\n", "app/util.py": "X = 1\n", "README.md": "hello\n"}


def _build(run_cli: Run, *args: object) -> dict[str, object]:
    code, out, err = run_cli("build", "--json", *args)
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


def test_a_cached_digest_whose_object_is_not_stored_is_read_again(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP)
    first = _build(run_cli, "-C", repo)
    assert first["files_read"] == 4  # graven.toml too
    assert _build(run_cli, "-C", repo)["files_read"] == 0

    # The cache says main.py's blob is content the store never held (as when another home filled a
    # shared database): that entry is not trusted, the blob is read from git again.
    main_oid = git(repo, "rev-parse", "HEAD:app/main.py").strip()
    absent = b"never stored"
    with sqlite3.connect(graven_home / "graven.db") as db:
        db.execute(
            "UPDATE git_blob_cache SET sha256 = ?, size = ? WHERE git_oid = ?",
            (hashlib.sha256(absent).hexdigest(), len(absent), main_oid),
        )
    db.close()
    # another graven.toml: no earlier build of it carries entries forward, every blob goes through
    # the cache (graven.toml's new blob and main.py are read; util.py and README.md are not)
    (repo / "graven.toml").write_text((repo / "graven.toml").read_text() + "# changed\n")
    commit_all(repo, "another graven.toml")
    again = _build(run_cli, "-C", repo)
    assert again["files_read"] == 2
    code, _, err = run_cli("verify", again["digest"])  # main.py's entry has its true digest
    assert code == 0, err


def test_a_plain_build_does_not_import_the_step_machinery() -> None:
    code = (
        "import sys, graven.service.build as b; from graven.build.sandbox import SANDBOX_NONE; "
        "assert b._SANDBOX_NONE == SANDBOX_NONE; sys.modules.pop('graven.build.sandbox'); "
        "import graven.service.build; "
        "print(sorted(m for m in ('graven.service.hermetic', 'graven.build.compare', "
        "'graven.build.sandbox', 'graven.build.tree', 'graven.build.workspace', 'tempfile') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
