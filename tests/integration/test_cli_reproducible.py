"""``graven build`` is a function of the commit only: clones, umasks, times, locales, a dirty or changing
working tree, and what was built before do not change the digest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import COMMIT_EPOCH, Executable, Symlink, commit_all, git, git_env, write_files
from helpers_services import require_tool, sandbox_python

REPO_FILES = {
    "README.md": "# demo\n",
    "app/main.py": "print('hello')\n",
    "app/data/table.csv": "a,b\n1,2\n",
    "bin/run.sh": Executable("#!/bin/sh\nexec python3 app/main.py\n"),
    "app/current": Symlink("main.py"),
    "zz/last.txt": b"\x00\x01binary\xff",
}


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escaping is valid TOML)."""
    return json.dumps(value)


def _steps_toml(*steps: str, outputs: str = '["out/"]') -> str:
    listed = ", ".join(_toml_str(s) for s in steps)
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{listed}]\noutputs = {outputs}\n'


PY = sandbox_python()
SIMPLE_STEP = (
    f"{PY} -c \"import pathlib; pathlib.Path('out').mkdir(); pathlib.Path('out/a.txt').write_text('x')\""
)

# A build step that writes down everything about its input tree and environment that could leak from
# the machine doing the build: modes and mtimes of every file and directory of the checkout, the
# locale, the time zone and the umask. With a reproducible checkout this output is a function of the
# commit alone.
PROBE_SCRIPT = """\
import json, os, pathlib, time
tree = {}
for dirpath, dirnames, filenames in os.walk('.'):
    dirnames.sort()
    for name in [dirpath] + [os.path.join(dirpath, f) for f in sorted(filenames + dirnames)]:
        st = os.lstat(name)
        tree[name] = [oct(st.st_mode), st.st_mtime_ns]
mask = os.umask(0)
os.umask(mask)
env = {k: os.environ.get(k) for k in ('TZ', 'LC_ALL', 'LANG', 'SOURCE_DATE_EPOCH')}
doc = {'tree': tree, 'env': env, 'umask': oct(mask), 'epoch': time.strftime('%c', time.localtime(0))}
out = pathlib.Path('out')  # created only now: it would change the mtime of '.'
out.mkdir()
(out / 'probe.json').write_text(json.dumps(doc, sort_keys=True, indent=1))
"""


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _clone(origin: Path, dest: Path, *, umask: int) -> Path:
    with _umask(umask):
        subprocess.run(
            ["git", "clone", "-q", "--no-hardlinks", str(origin), str(dest)],
            env=git_env(),
            check=True,
            capture_output=True,
        )
    return dest


def _touch_tree(root: Path, mtime: float) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)


def _build_json(run_cli: Callable[..., tuple[int, str, str]], *args: object) -> dict[str, object]:
    code, out, err = run_cli("build", "--json", *args)
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def _two_machines(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., tuple[int, str, str]],
    origin: Path,
    homes: tuple[Path, Path],
) -> tuple[dict[str, object], dict[str, object]]:
    """Clone ``origin`` twice under different umasks and checkout times; build each clone under its
    own umask, TZ and locale, into its own graven home; return both --json results. The second
    machine's home stays active."""
    a = _clone(origin, tmp_path / "machine-a" / "src", umask=0o022)
    b = _clone(origin, tmp_path / "elsewhere" / "deeper" / "machine-b", umask=0o077)
    _touch_tree(a, 1_000_000_000)
    _touch_tree(b, 2_000_000_000)
    assert (a / "README.md").stat().st_mode & 0o077 != (b / "README.md").stat().st_mode & 0o077
    results = []
    machines = (
        (a, homes[0], 0o022, "Asia/Tokyo", "C"),
        (b, homes[1], 0o077, "America/Los_Angeles", "C.UTF-8"),
    )
    for clone, home, mask, tz, lc in machines:
        monkeypatch.setenv("GRAVEN_HOME", str(home))
        monkeypatch.setenv("TZ", tz)
        monkeypatch.setenv("LC_ALL", lc)
        with _umask(mask):
            results.append(_build_json(run_cli, "-C", clone))
    return results[0], results[1]


def test_two_clones_give_the_same_digest(
    *,
    graven_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_repo: Callable[..., Path],
    new_home: Callable[[str], Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    origin = make_repo(tmp_path / "origin", REPO_FILES)
    first, second = _two_machines(tmp_path, monkeypatch, run_cli, origin, (graven_home, new_home("home-b")))
    assert first["commit"] == second["commit"]
    assert first["digest"] == second["digest"]
    assert first["source_date_epoch"] == COMMIT_EPOCH

    # The same files written in the opposite order, by another process, in a third place, under
    # another umask: the same commit, so the same artifact.
    with _umask(0o077):
        rebuilt = make_repo(tmp_path / "rewritten", dict(reversed(list(REPO_FILES.items()))))
    third = _build_json(run_cli, "-C", rebuilt)
    assert third["commit"] == first["commit"]
    assert third["digest"] == first["digest"]


def test_two_clones_with_build_steps_give_the_same_digest(
    *,
    graven_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_repo: Callable[..., Path],
    new_home: Callable[[str], Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    require_tool("bwrap")  # its pipeline has build steps
    origin = make_repo(tmp_path / "origin", REPO_FILES, _steps_toml(SIMPLE_STEP))
    first, second = _two_machines(tmp_path, monkeypatch, run_cli, origin, (graven_home, new_home("home-b")))
    assert first["digest"] == second["digest"]
    code, out, _ = run_cli("show", first["digest"], "--files", "--json")
    assert code == 0
    paths = [e["path"] for e in json.loads(out)["entries"]]
    assert paths == ["out/a.txt"]


def _probe(run_cli: Callable[..., tuple[int, str, str]], digest: object, out: Path) -> dict[str, Any]:
    code, _, err = run_cli("export", digest, "-o", out)
    assert code == 0, err
    with tarfile.open(out) as tar:
        member = tar.extractfile("out/probe.json")
        assert member is not None
        doc: dict[str, Any] = json.loads(member.read())
    return doc


def test_build_steps_see_the_same_checkout_on_every_machine(
    *,
    graven_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_repo: Callable[..., Path],
    new_home: Callable[[str], Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    require_tool("bwrap")  # its pipeline has build steps
    """Steps often archive or fingerprint their input (tar, zip, wheels); every mode and mtime of the
    checkout they run in, directories included, must come from the commit, not from the host."""
    files = {**REPO_FILES, "probe.py": PROBE_SCRIPT}
    origin = make_repo(tmp_path / "origin", files, _steps_toml(f"{PY} probe.py"))
    home_b = new_home("home-b")
    first, second = _two_machines(tmp_path, monkeypatch, run_cli, origin, (graven_home, home_b))
    if first["digest"] != second["digest"]:
        monkeypatch.setenv("GRAVEN_HOME", str(graven_home))
        probe_a = _probe(run_cli, first["digest"], tmp_path / "a.tar")
        monkeypatch.setenv("GRAVEN_HOME", str(home_b))
        probe_b = _probe(run_cli, second["digest"], tmp_path / "b.tar")
        paths = sorted(set(probe_a["tree"]) | set(probe_b["tree"]))
        differing = {
            p: (probe_a["tree"].get(p), probe_b["tree"].get(p))
            for p in paths
            if probe_a["tree"].get(p) != probe_b["tree"].get(p)
        }
        other = {k: (probe_a[k], probe_b[k]) for k in probe_a if k != "tree" and probe_a[k] != probe_b[k]}
        pytest.fail(
            f"build steps saw a host-dependent checkout ([mode, mtime_ns], a vs b): {differing} {other}"
        )


def test_dirty_working_tree_is_not_built_and_warns(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    repo = make_repo(tmp_path / "repo", REPO_FILES)
    committed = _build_json(run_cli, "-C", repo)
    assert committed["dirty_worktree"] is False

    (repo / "graven.toml").write_text('[artifact]\nname = "other"\ninclude = ["app/**"]\n')
    (repo / "README.md").write_text("# changed, not committed\n")
    (repo / "untracked.txt").write_text("never committed\n")
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    dirty = json.loads(out)
    assert dirty["digest"] == committed["digest"]
    assert dirty["name"] == "demo"
    assert dirty["dirty_worktree"] is True
    warnings = [line for line in err.splitlines() if line.startswith("graven: warning:")]
    assert len(warnings) == 1 and "uncommitted" in warnings[0], err

    # Plain output: the digest is the last stdout line, and the warning goes to stderr too.
    code, out, err = run_cli("build", cwd=repo)
    assert code == 0
    assert out.splitlines()[-1] == committed["digest"]
    assert "uncommitted" in err


def test_edits_during_a_build_do_not_leak_in(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    require_tool("bwrap")  # its pipeline has build steps
    steps = _steps_toml(
        f'{PY} -c "import time; time.sleep(1)"',
        "mkdir out && cp graven.toml README.md out/",
    )
    repo = make_repo(tmp_path / "repo", {"README.md": "committed readme\n"}, steps)
    committed_toml = (repo / "graven.toml").read_bytes()

    started = threading.Event()

    def edit() -> None:
        started.wait(5)
        time.sleep(0.3)  # inside the 1 s step
        (repo / "graven.toml").write_text(
            '[artifact]\nname = "evil"\n\n[build]\nsteps = ["mkdir out && echo evil > out/evil"]\n'
            'outputs = ["out/"]\n'
        )
        (repo / "README.md").write_text("edited during the build\n")
        write_files(repo, {"out/evil": "planted\n"})

    editor = threading.Thread(target=edit)
    editor.start()
    started.set()
    try:
        during = _build_json(run_cli, "-C", repo)
    finally:
        editor.join()
    assert (repo / "README.md").read_text() == "edited during the build\n"  # the edit did happen

    code, out, _ = run_cli("show", during["digest"], "--files", "--json")
    assert code == 0
    entries = {e["path"]: e for e in json.loads(out)["entries"]}
    assert set(entries) == {"out/README.md", "out/graven.toml"}
    assert entries["out/README.md"]["sha256"] == hashlib.sha256(b"committed readme\n").hexdigest()
    assert entries["out/graven.toml"]["sha256"] == hashlib.sha256(committed_toml).hexdigest()
    assert during["name"] == "demo"

    # And it is exactly what a build of the clean commit gives.
    git(repo, "checkout", "-q", "--", ".")
    (repo / "out" / "evil").unlink()
    clean = _build_json(run_cli, "-C", repo)
    assert clean["digest"] == during["digest"]


def _store_bytes(home: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(home / "objects"):
        if Path(dirpath).name == "tmp":
            continue
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in filenames)
    return total


def test_incremental_build_reads_only_the_changed_blob(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    import random

    rng = random.Random(7)
    files = {f"src/m{i:03d}.txt": rng.randbytes(2048).hex() + "\n" for i in range(200)}
    repo = make_repo(tmp_path / "repo", files)
    empty = _store_bytes(graven_home)
    v1 = _build_json(run_cli, "-C", repo)
    assert v1["file_count"] == 201
    assert v1["files_read"] == 201
    first_growth = _store_bytes(graven_home) - empty

    write_files(repo, {"src/m100.txt": "changed\n"})
    commit_all(repo, "v2", date="2024-02-01T00:00:00+00:00")
    before = _store_bytes(graven_home)
    v2 = _build_json(run_cli, "-C", repo)
    growth = _store_bytes(graven_home) - before
    assert v2["digest"] != v1["digest"]
    assert v2["files_read"] == 1  # only the changed blob is read from git
    assert v2["file_count"] == 201
    assert growth < first_growth / 10, (growth, first_growth)

    # Nothing is read for a rename, and rebuilding v1 reads nothing and gives the same digest.
    git(repo, "mv", "src/m000.txt", "src/renamed.txt")
    commit_all(repo, "v3", date="2024-03-01T00:00:00+00:00")
    v3 = _build_json(run_cli, "-C", repo)
    assert v3["files_read"] == 0
    again = _build_json(run_cli, "-C", repo, v1["commit"])
    assert again["digest"] == v1["digest"]
    assert again["files_read"] == 0

    # --no-cache re-reads everything and agrees with the cached build.
    fresh = _build_json(run_cli, "-C", repo, "--no-cache", v2["commit"])
    assert fresh["files_read"] == 201
    assert fresh["digest"] == v2["digest"]
    code, _, err = run_cli("verify", v2["digest"])
    assert code == 0, err
