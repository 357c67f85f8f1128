"""graven build without steps: the blob cache is trusted only for objects the store has; start-up."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import blob_cache_tag, commit_all, git

Run = Callable[..., tuple[int, str, str]]


def set_blob_cache_row(home: Path, oid: str, content: bytes, *, tag: str | None = "valid") -> None:
    """Make the blob cache of ``home`` say that blob ``oid`` is ``content``; its tag is the one the
    home's record key gives (``tag="valid"``), or ``tag`` itself."""
    sha, size = hashlib.sha256(content).hexdigest(), len(content)
    if tag == "valid":
        tag = blob_cache_tag(home, oid, sha, size)
    with sqlite3.connect(home / "graven.db") as db:
        db.execute(
            "INSERT OR REPLACE INTO git_blob_cache (git_oid, sha256, size) VALUES (?, ?, ?)", (oid, sha, size)
        )
        if tag is not None:
            db.execute("UPDATE git_blob_cache SET tag = ? WHERE git_oid = ?", (tag, oid))
    db.close()


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
    # (tagged under the home's record key: a row without a valid tag is not trusted either way)
    main_oid = git(repo, "rev-parse", "HEAD:app/main.py").strip()
    absent = b"never stored"
    set_blob_cache_row(graven_home, main_oid, absent)
    # another graven.toml: no earlier build of it carries entries forward, every blob goes through
    # the cache (graven.toml's new blob and main.py are read; util.py and README.md are not)
    (repo / "graven.toml").write_text((repo / "graven.toml").read_text() + "# changed\n")
    commit_all(repo, "another graven.toml")
    again = _build(run_cli, "-C", repo)
    assert again["files_read"] == 2
    code, _, err = run_cli("verify", again["digest"])  # main.py's entry has its true digest
    assert code == 0, err


@pytest.mark.parametrize("forged", ["none", "copied", "another key"])
def test_a_blob_cache_row_the_record_key_did_not_tag_never_changes_what_a_build_signs(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, forged: str
) -> None:
    """A red-team review: whoever could write graven.db (a shared PostgreSQL) but not the home's keys
    mapped the reviewed commit's blob of run.sh to an older, malicious content the store held; the
    next build signed that content as the commit's, verify said ok and deploy shipped it."""
    repo = make_repo(tmp_path / "repo", {"run.sh": "echo MALICIOUS\n"})
    _build(run_cli, "-C", repo)  # the malicious content is in the store now
    (repo / "run.sh").write_text("echo safe\n")
    commit_all(repo, "reviewed")
    oid = git(repo, "rev-parse", "HEAD:run.sh").strip()
    tag = {"none": None, "copied": _a_genuine_tag(graven_home), "another key": _another_keys_tag(oid)}[forged]
    set_blob_cache_row(graven_home, oid, b"echo MALICIOUS\n", tag=tag)

    built = _build(run_cli, "-C", repo)
    assert built["files_read"] == 1  # run.sh's blob, read again from git
    with sqlite3.connect(graven_home / "graven.db") as db:  # and its row replaced, with a valid tag
        row = db.execute("SELECT sha256, size, tag FROM git_blob_cache WHERE git_oid = ?", (oid,)).fetchone()
    db.close()
    safe = hashlib.sha256(b"echo safe\n").hexdigest()
    assert row == (safe, 10, blob_cache_tag(graven_home, oid, safe, 10))
    again = _build(run_cli, "-C", repo)  # a hit now
    assert again["files_read"] == 0 and again["digest"] == built["digest"]
    assert built["digest"] == _build(run_cli, "-C", repo, "--no-cache")["digest"]


def _a_genuine_tag(home: Path) -> str:
    """The tag of another row of the blob cache (a genuine one)."""
    with sqlite3.connect(home / "graven.db") as db:
        tag: str = db.execute("SELECT tag FROM git_blob_cache WHERE tag IS NOT NULL").fetchone()[0]
    db.close()
    return tag


def _another_keys_tag(oid: str) -> str:
    sha = hashlib.sha256(b"echo MALICIOUS\n").hexdigest()
    message = f"{oid}\0{sha}\0{15}".encode()
    return hmac.new(b"k" * 32, b"graven.blobcache/v1\0" + message, "sha256").hexdigest()


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


def _plant(repo: Path, oid: str, content: bytes) -> None:
    """An object file for ``oid`` holding ``content`` (which is not what ``oid`` names)."""
    import zlib

    path = repo / ".git" / "objects" / oid[:2] / oid[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zlib.compress(b"blob %d\0" % len(content) + content))


def test_a_planted_object_is_refused_and_never_reaches_another_repositorys_build(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """git cat-file returns an object file's bytes without hashing them: a repository whose store
    names a blob id with other bytes made graven remember the id as that content (the blob cache
    serves every repository of the home), and a clean repository built later got the planted bytes."""
    victim = make_repo(tmp_path / "victim", {"lib.js": "export const ok = true;\n"})
    oid = git(victim, "rev-parse", "HEAD:lib.js").strip()
    other = make_repo(tmp_path / "other", {"README.md": "other\n"}, '[artifact]\nname = "other"\n')
    _plant(other, oid, b"alert(1)//evil\n")
    git(other, "update-index", "--add", "--cacheinfo", f"100644,{oid},vendor/lib.js")
    git(other, "commit", "-q", "-m", "vendor")
    code, _out, err = run_cli("build", "-C", other, "--no-cache")  # git's bytes, not the working tree's
    assert code == 1, err
    assert f"git object {oid} does not hash to its id" in err and len(err.splitlines()) == 1
    code, _out, err = run_cli("build", "-C", other)
    assert code == 1, err
    clean = _build(run_cli, "-C", victim)
    fresh = _build(run_cli, "-C", victim, "--no-cache")
    assert clean["digest"] == fresh["digest"]


def test_a_planted_empty_object_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "content\n"})
    oid = git(repo, "rev-parse", "HEAD:a.txt").strip()
    (repo / ".git" / "objects" / oid[:2] / oid[2:]).unlink()  # the loose object git wrote
    _plant(repo, oid, b"")
    code, _out, err = run_cli("build", "-C", repo, "--no-cache")
    assert code == 1 and "does not hash to its id" in err, err


def test_a_name_no_file_system_takes_is_refused_at_build(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """git trees have no length limits: a 300-byte name was built and exported, and import refused it."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    oid = git(repo, "rev-parse", "HEAD:a.txt").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{oid},{'n' * 300}")
    git(repo, "commit", "-q", "-m", "long")
    code, out, err = run_cli("build", "-C", repo)
    assert code == 2 and out == "", err
    assert "a name of 300 bytes; at most 255 are allowed" in err and len(err.splitlines()) == 1


def test_a_build_that_cannot_use_the_record_key_says_its_caches_are_not_used(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """A record key others may read is refused (deploy and drift say so); the build went on without
    its caches, reading every file again, and said nothing."""
    repo = make_repo(tmp_path / "repo", APP)
    assert _build(run_cli, "-C", repo)["files_read"] == 4
    key = graven_home / "keys" / "records.hmac"
    key.chmod(0o644)
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    assert json.loads(out)["files_read"] == 4  # nothing trusted from the cache
    (warning,) = err.splitlines()
    assert warning == (
        f"graven: warning: the build's caches are not used: the record key {key} is readable by others "
        f"(mode 0644); run chmod 600 {key}"
    )
    key.chmod(0o600)
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert (code, err, json.loads(out)["files_read"]) == (0, "", 0)
