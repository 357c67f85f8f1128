"""Proving reproducibility: ``graven build --check`` (two builds, the second varied) and
``graven verify DIGEST --rebuild`` (rebuild from the recorded commit and inputs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import blob_cache_tag, git_env
from helpers_services import require_tool, sandbox_python, unavailable


@pytest.fixture(autouse=True)
def _unsandboxed_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's sandbox = "none" builds run as an operator who allows them."""
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")


Run = Callable[..., tuple[int, str, str]]
PY = sandbox_python()

APP = {"app/main.py": "print('hi')\n", "app/util.py": "X = 1\n", "app/sub/more.py": "Y = 2\n"}
STAMP = f"{PY} -c \"import time; open('out/stamp.txt', 'w').write(str(time.time_ns()))\""


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require_tool("bwrap")


def _toml(*steps: str, extra: str = "") -> str:
    listed = ", ".join(json.dumps(s) for s in steps)
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{listed}]\noutputs = ["out/"]\n{extra}'


def _artifacts(run_cli: Run) -> list[dict[str, object]]:
    code, out, _ = run_cli("artifacts", "--json")
    assert code == 0
    listed: list[dict[str, object]] = json.loads(out)
    return listed


def test_check_passes_for_a_deterministic_build_and_stores_it(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    # The bundled example's step: the .pyc files are hash-based (SOURCE_DATE_EPOCH) and compiled in
    # sorted order, so neither the time, the path nor the creation order shows.
    steps = ("python3 -m compileall -q -d app app", "mkdir out && cp -r app out/ && ls -R app > out/listing")
    repo = make_repo(tmp_path / "repo", APP, _toml(*steps))
    code, out, err = run_cli("build", "-C", repo, "--check")
    assert code == 0, err
    assert "reproducible: a second build gave the same manifest" in err
    digest = out.strip().splitlines()[-1]
    assert [a["digest"] for a in _artifacts(run_cli)] == [digest]
    code, out, _ = run_cli("build", "-C", repo, "--check", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["digest"] == digest and doc["check"]["reproducible"] is True


def test_check_catches_a_step_that_writes_the_current_time_and_names_the_path(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out && cp -r app out/", STAMP))
    code, out, err = run_cli("build", "-C", repo, "--check")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("differs: out/stamp.txt: content (sha256 ")
    assert len(lines) == 2, err  # only that path differs; then one error line
    assert lines[1].startswith("graven: error: not reproducible: 1 path differs between two builds of ")
    assert "the build path" in lines[1] and "file creation order" in lines[1]
    assert _artifacts(run_cli) == []  # nothing is stored when the check fails

    code, out, _ = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 1
    check = json.loads(out)["check"]
    assert check["reproducible"] is False
    assert [(d["path"], d["differs"][0]) for d in check["differences"]] == [("out/stamp.txt", "content")]

    # Without --check the same pipeline builds (and is stored): --check is what catches it.
    assert run_cli("build", "-C", repo)[0] == 0


def test_check_adds_the_diffoscope_summary_where_it_is_installed(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "diffoscope"  # a stand-in with diffoscope's command line: --text - A B
    fake.write_text(
        '#!/bin/sh\necho "--- $4"\necho "+++ $5"\necho "-$(cat "$4")"\necho "+$(cat "$5")"\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out", STAMP))
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("differs: out/stamp.txt: content")
    assert lines[1].startswith("    --- /") and lines[1].endswith("/out/stamp.txt")
    assert lines[3].startswith("    -1") and lines[4].startswith("    +1")  # time_ns() values


def test_diffoscope_runs_in_the_sandbox_the_steps_ran_in(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """diffoscope parses what the commit's steps made (a commit can make its build differ on purpose
    and feed diffoscope's parsers what it likes): it ran on the host with graven's environment, its
    home (keys, store) and the network in reach. It runs as the steps did: the home hidden, nothing
    of graven's environment, the host read-only."""
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "diffoscope"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "home entries: $(ls -A {graven_home} | wc -l)"\n'
        'echo "secret: ${GRAVEN_REGISTRY_PASSWORD:-none}"\n'
        f"touch {tmp_path}/written-by-diffoscope 2>/dev/null\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "pw-of-the-registry")
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out", STAMP))
    assert len(list(graven_home.iterdir())) > 0
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 1
    assert "    home entries: 0" in err, err
    assert "    secret: none" in err and "pw-of-the-registry" not in err, err
    assert not (tmp_path / "written-by-diffoscope").exists()  # (the sandbox's own /tmp took it)


def test_check_catches_path_leaks_when_there_is_no_sandbox(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    steps = ("mkdir out && pwd > out/where && umask > out/umask && hostname > out/host",)
    sandboxed = make_repo(tmp_path / "a", APP, _toml(*steps))
    code, _, err = run_cli("build", "-C", sandboxed, "--check")
    assert code == 1
    differing = sorted(line.split(":")[1].strip() for line in err.splitlines() if line.startswith("differs:"))
    assert differing == ["out/host", "out/umask"]  # the path is fixed in the sandbox; hostname, umask vary

    bare = make_repo(tmp_path / "b", APP, _toml(*steps, extra='sandbox = "none"\n'))
    code, _, err = run_cli("build", "-C", bare, "--check")
    assert code == 1
    assert "differs: out/where: content" in err  # the host build path leaks without a sandbox


def test_check_without_a_sandbox_never_claims_it_varied_the_hostname(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """On the host (sandbox = "none") a step sees the host's hostname in both builds: nothing can vary
    it there. --check passed a step that records it in silence and, when something else differed,
    said it had varied the hostname."""
    extra = 'sandbox = "none"\n'
    leaks = make_repo(tmp_path / "a", APP, _toml("mkdir out && hostname > out/host", extra=extra))
    code, _, err = run_cli("build", "-C", leaks, "--check")
    assert code == 0, err  # not caught, and cannot be on this host: then say so
    assert 'sandbox = "none"' in err and "hostname" in err and "not varied" in err, err

    stamps = make_repo(tmp_path / "b", APP, _toml("mkdir out", STAMP, extra=extra))
    code, out, err = run_cli("build", "-C", stamps, "--check", "--json")
    assert code == 1
    variations = json.loads(out)["check"]["variations"]
    assert "umask (002)" in variations and "hostname" not in variations, variations


@pytest.mark.parametrize("extra", ["", 'sandbox = "none"\n'])
def test_check_catches_a_step_that_records_how_many_cpus_it_may_use(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, extra: str
) -> None:
    """``nproc`` (and ``make -j$(nproc)``, Go's and Rust's parallelism) follows the CPUs the process
    may run on: --check's second build gave the steps the same ones, so such a step passed."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to vary")
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out && nproc > out/cpus", extra=extra))
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 1, err
    check = json.loads(out)["check"]
    assert [d["path"] for d in check["differences"]] == ["out/cpus"]
    assert any("CPUs" in v for v in check["variations"]), check["variations"]


def test_a_step_failing_only_in_the_varied_build_is_named_as_the_check_s_second_build(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """A step that fails only under --check's variations (one that asserts the umask, the hostname)
    said only "build step 1 failed": the same as a broken pipeline, though `graven build` passes."""
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out && cp -r app out/", 'test "$(umask)" = 0022'))
    code, out, err = run_cli("build", "-C", repo, "--check")
    assert code == 1 and out == "", err
    [line] = err.strip().splitlines()
    assert line.startswith("graven: error: the second build of --check failed where the first passed"), err
    assert "umask (002)" in line and "build step 2" in line, err
    assert _artifacts(run_cli) == []
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 1 and "the second build of --check" in json.loads(out)["error"]["message"]
    assert run_cli("build", "-C", repo)[0] == 0


def _clone(origin: Path, dest: Path) -> Path:
    subprocess.run(
        ["git", "clone", "-q", str(origin), str(dest)], env=git_env(), check=True, capture_output=True
    )
    return dest


def test_verify_rebuild_confirms_the_digest_from_the_recorded_repository_or_another_clone(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    steps = ("python3 -m compileall -q app", "mkdir out && cp -r app out/")
    repo = make_repo(tmp_path / "repo", APP, _toml(*steps))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    code, out, err = run_cli("verify", digest, "--rebuild")
    assert code == 0, err
    assert out.startswith(f"ok {digest}") and "same digest" in out

    # The recorded repository is gone: say how to point at another clone; then use it.
    clone = _clone(repo, tmp_path / "elsewhere" / "clone")
    shutil.rmtree(repo)
    code, _, err = run_cli("verify", digest, "--rebuild")
    assert code == 2 and "pass -C REPO" in err
    code, out, err = run_cli("verify", digest, "--rebuild", "-C", clone, "--json")
    assert code == 0, err
    rebuild = json.loads(out)["rebuild"]
    assert rebuild["ok"] and rebuild["rebuilt"] == digest and rebuild["differences"] == []
    code, _, err = run_cli("verify", digest, "-C", clone)
    assert code == 2 and "only used with --rebuild" in err


def test_verify_rebuild_fails_and_names_the_differing_path(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out && cp -r app out/", STAMP))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    code, out, err = run_cli("verify", digest, "--rebuild")
    assert code == 1 and out == ""
    assert "differs: out/stamp.txt: content (sha256" in err
    assert err.strip().splitlines()[-1].startswith("graven: error: rebuild of ")
    assert f"not {digest} (1 differing path)" in err
    code, out, _ = run_cli("verify", digest, "--rebuild", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["rebuild"]["differences"][0]["path"] == "out/stamp.txt"
    code, _, err = run_cli("verify", digest)  # the stored artifact itself is fine
    assert code == 0, err


def test_a_rebuild_whose_step_fails_says_it_was_the_rebuild_and_is_logged(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """A step failing in the rebuild (a tool gone or changed since) said only "build step 1 failed":
    not that the stored artifact verified, nor that this was the rebuild of the recorded commit; and,
    unlike a rebuild that gave another digest, it was not in the audit log as a failed verify."""
    import sqlite3

    script = tmp_path / "step.sh"
    script.write_text("mkdir -p out && echo x > out/x\n")
    repo = make_repo(tmp_path / "repo", APP, _toml(f"sh {script}", extra='sandbox = "none"\n'))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    built = json.loads(out)
    digest, commit = built["digest"], built["commit"]
    script.write_text("exit 3\n")
    code, out, err = run_cli("verify", digest, "--rebuild")
    assert code == 1 and out == "", err
    [line] = err.strip().splitlines()
    assert line.startswith(
        f"graven: error: {digest} was not rebuilt: the rebuild of {commit[:12]} failed: "
    ), err
    assert "build step 1" in line and "exit code 3" in line, err
    with sqlite3.connect(graven_home / "graven.db") as db:
        [entry] = db.execute("SELECT entry FROM log_entries ORDER BY idx DESC LIMIT 1").fetchone()
    db.close()
    logged = json.loads(entry)
    assert logged["event"] == "verify-failure" and "the rebuild of" in logged["reason"]
    assert "last lines" not in logged["reason"]
    code, out, _ = run_cli("verify", digest, "--rebuild", "--json")
    assert code == 1 and "was not rebuilt: the rebuild of" in json.loads(out)["error"]["message"]


def test_rebuild_notes_are_shown_escaped(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """A note quotes what a tool printed for --version (where the steps run): a control character in
    it reached the terminal as it was (an escape sequence could clear the screen or draw lines)."""
    tool = tmp_path / "tools" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho 'mytool 1.0'\n")
    tool.chmod(0o755)
    extra = f'sandbox = "none"\ntools = ["{tool}"]\n'
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out && cp -r app out/", extra=extra))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    tool.write_text("#!/bin/sh\nprintf 'mytool 2.0\\033[2J\\n'\n")
    code, out, err = run_cli("verify", digest, "--rebuild")
    assert code == 0, err  # the tool is not used: the same digest, and a note that it changed
    assert "\x1b" not in err
    assert "note: tool " in err and "@2.0\\x1b[2J (" in err, err


def test_check_of_a_build_without_steps_reads_every_file_again(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    import hashlib
    import sqlite3

    from conftest import git

    repo = make_repo(tmp_path / "repo", APP)
    assert run_cli("build", "-C", repo)[0] == 0  # fills the blob cache
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 0, err
    assert json.loads(out)["check"]["reproducible"] is True

    # A poisoned cache entry (main.py's blob said to be util.py's content) is caught by --check, even
    # one with a valid tag (a row without one is not used at all: test_build_blob_cache).
    main_oid = git(repo, "rev-parse", "HEAD:app/main.py").strip()
    util = APP["app/util.py"].encode()
    sha = hashlib.sha256(util).hexdigest()
    tag = blob_cache_tag(graven_home, main_oid, sha, len(util))
    with sqlite3.connect(graven_home / "graven.db") as db:
        db.execute(
            "UPDATE git_blob_cache SET sha256 = ?, size = ?, tag = ? WHERE git_oid = ?",
            (sha, len(util), tag, main_oid),
        )
    db.close()
    code, _, err = run_cli("build", "-C", repo, "--check")
    assert code == 1
    assert "differs: app/main.py: content" in err and "the blob cache" in err


def test_verify_rebuild_of_a_plain_build_reads_git_again(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", APP)
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]
    code, out, err = run_cli("verify", digest, "--rebuild", "--json")
    assert code == 0, err
    assert json.loads(out)["rebuild"]["sandbox"] == "none"


def test_rebuild_never_runs_steps_an_untrusted_provenance_names(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An archive and attestation from elsewhere (a key this home does not trust): verify --rebuild
    must refuse before running anything, even though the commit is in the repository given."""
    marker = tmp_path / "ran"
    step = f"touch {marker}; mkdir -p out && echo x > out/x"
    repo = make_repo(tmp_path / "repo", APP, _toml(step, extra='sandbox = "none"\n'))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    marker.unlink()
    archive, envelope = tmp_path / "a.tar", tmp_path / "a.json"
    assert run_cli("export", digest, "-o", archive, "--attestation", envelope)[0] == 0
    other = tmp_path / "other-home"  # trusts no key at all
    monkeypatch.setenv("GRAVEN_HOME", str(other))
    assert run_cli("import", archive, "--attestation", envelope)[0] == 0
    code, out, err = run_cli("verify", digest, "--rebuild", "-C", repo)
    assert code == 1 and "not rebuilt, as its provenance does not verify" in err, err
    assert len([line for line in err.splitlines() if line.startswith("graven: error:")]) == 1, err
    assert not marker.exists()  # nothing from the untrusted pipeline ran
    code, out, err = run_cli("verify", digest, "--rebuild", "-C", repo, "--json")
    assert code == 1 and json.loads(out)["rebuild"] is None
    assert not marker.exists()


def test_a_repository_given_with_c_that_lacks_the_commit_is_named_without_suggesting_c(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, '[artifact]\nname = "demo"\n')
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    other = make_repo(tmp_path / "other", {"b.txt": "b\n"}, '[artifact]\nname = "demo"\n')
    code, _, err = run_cli("verify", json.loads(out)["digest"], "--rebuild", "-C", other)
    assert code == 2 and err.count("\n") == 1, err
    assert f"is not in {other}; fetch it there" in err and "pass -C REPO" not in err, err


def test_the_origin_url_is_recorded_without_credentials(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, '[artifact]\nname = "demo"\n')
    subprocess.run(
        ["git", "-C", str(repo), "remote", "add", "origin", "https://ci-token:ghp_S3CRET@example.com/x.git"],
        check=True,
        env=git_env(),
    )
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["repository"] == "https://example.com/x.git"
    code, out, _ = run_cli("show", doc["digest"], "--provenance", "--json")
    assert code == 0 and "S3CRET" not in out and "ci-token" not in out


@pytest.fixture
def disk_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR on a disk (not tmpfs), read again by tempfile."""
    import tempfile

    from graven.mounts import file_system_type

    disk = tmp_path / "tmpdir"
    disk.mkdir()
    if file_system_type(disk) == "tmpfs":  # pragma: no cover - pytest's own temp dir is on a disk here
        unavailable("this machine's temporary files are on tmpfs: the test needs a disk there")
    monkeypatch.setenv("TMPDIR", str(disk))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return disk


@pytest.mark.usefixtures("graven_home", "disk_tmpdir")
def test_check_catches_a_step_that_depends_on_the_order_directories_list_in(
    tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 lists a directory by a hash of the names, whatever order they were made in; tmpfs by
    creation. A step whose output follows that order (find, os.walk, a tar of a directory) built the
    same commit differently on a CI machine with TMPDIR on tmpfs and a laptop on ext4, and --check on
    ext4 said "reproducible" (reversing creation order changes nothing there). The second build now
    runs on a file system of the other kind."""
    from graven.service import hermetic
    from helpers_mounts import mounted_tmpfs

    files = {f"app/m{i:02d}.py": f"X = {i}\n" for i in range(24)}
    repo = make_repo(tmp_path / "repo", files, _toml("mkdir out && find app -type f > out/found.txt"))
    with mounted_tmpfs(tmp_path / "shm") as shm:
        monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(shm),))
        monkeypatch.setattr(hermetic, "_MIN_FREE", 0)
        code, _, err = run_cli("build", "-C", repo, "--check")
        assert list(shm.iterdir()) == []  # the second build's directory is removed
    assert code == 1, err
    assert err.startswith("differs: out/found.txt: content"), err
    assert f"the build directory's file system ({shm}: directories list in another order)" in err


def test_the_check_uses_another_file_system_only_where_a_step_can_run(
    tmp_path: Path, disk_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """None when there is no tmpfs, when it is mounted noexec (a step could not run a file of its
    checkout there) or has no room: the check then varies creation order only, and does not say it
    varied the file system."""
    from graven.service import hermetic
    from helpers_mounts import mounted_tmpfs

    monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(tmp_path / "missing"),))
    monkeypatch.setattr(hermetic, "_MIN_FREE", 0)
    assert hermetic.other_file_system_dir() is None
    monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(disk_tmpdir),))
    assert hermetic.other_file_system_dir() is None  # the same kind as TMPDIR's
    with mounted_tmpfs(tmp_path / "noexec", "noexec") as noexec:
        monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(noexec),))
        assert hermetic.other_file_system_dir() is None
    with mounted_tmpfs(tmp_path / "shm") as shm:
        monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(shm),))
        assert hermetic.other_file_system_dir() == shm
        monkeypatch.setattr(hermetic, "_MIN_FREE", 1 << 40)
        assert hermetic.other_file_system_dir() is None


def test_the_check_skips_a_tmpfs_others_could_write_or_a_container_could_not_hold(
    tmp_path: Path, disk_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A /dev/shm writable by others and not sticky made `build --check` fail outright (the build
    directory's own check refused it) instead of passing it over; and a tmpfs's free space says
    nothing of a container's memory limit, which its pages count against."""
    from graven.service import hermetic
    from helpers_mounts import mounted_tmpfs

    monkeypatch.setattr(hermetic, "_MIN_FREE", 1 << 20)
    with mounted_tmpfs(tmp_path / "shm") as shm:
        monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(shm),))
        assert hermetic.other_file_system_dir() == shm
        shm.chmod(0o777)  # not sticky: another user could swap the build there
        assert hermetic.other_file_system_dir() is None
        shm.chmod(0o1777)
        assert hermetic.other_file_system_dir() == shm
        monkeypatch.setattr(hermetic, "_memory_headroom", lambda: 1 << 19)
        assert hermetic.other_file_system_dir() is None


def test_memory_headroom_is_the_least_a_cgroup_or_its_parents_allow(tmp_path: Path) -> None:
    from graven.service import hermetic

    mounted = tmp_path / "sys-fs-cgroup"
    unlimited = 1 << 62

    def write(directory: Path, **files: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (directory / name.replace("_", ".", 1)).write_text(text + "\n")

    cgroups = tmp_path / "cgroup"
    cgroups.write_text("0::/box/job\n")  # v2: the job's own limit, then its parent's smaller one
    write(mounted / "box" / "job", memory_max="max", memory_current="100")
    assert hermetic._memory_headroom(cgroups, mounted) == unlimited
    write(mounted / "box", memory_max=str(3 << 30), memory_current=str(1 << 30))
    assert hermetic._memory_headroom(cgroups, mounted) == 2 << 30
    write(mounted / "box" / "job", memory_max=str(1 << 30), memory_current=str(1 << 29))
    assert hermetic._memory_headroom(cgroups, mounted) == 1 << 29
    cgroups.write_text("4:memory:/docker/abc\n0::/\n")  # v1, as in many containers
    write(
        mounted / "memory" / "docker" / "abc", memory_limit_in_bytes=str(4 << 30), memory_usage_in_bytes="0"
    )
    assert hermetic._memory_headroom(cgroups, mounted) == 4 << 30
    assert hermetic._memory_headroom(tmp_path / "missing", mounted) == unlimited


def test_a_rebuild_killed_during_diffoscope_leaves_nothing_for_good(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify --rebuild wrote the recorded files for diffoscope in $TMPDIR/graven-rebuild-*: one killed
    with SIGKILL left them there for good. They go to the store's tmp/, where the next rebuild (or
    build, import, push, pull) removes them; the killed rebuild's workspace is reclaimed as ever."""
    import contextlib
    import signal
    import sys
    import tempfile
    import time

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))  # in-process: gettempdir() caches it
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "diffoscope"
    # it runs in the sandbox, where it can write nothing the test sees: found by its command line
    fake.write_text("#!/bin/sh\nexec sleep 60.25\n")

    def started() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0060.25\x00":
                    return True
        return False

    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    repo = make_repo(tmp_path / "repo", APP, _toml("mkdir out", STAMP))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.strip().splitlines()[-1]

    proc = subprocess.Popen(
        [sys.executable, "-m", "graven", "verify", digest, "--rebuild"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        reached = started()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _, err_bytes = proc.communicate()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the stand-in diffoscope it started
    assert reached, err_bytes.decode()
    store_tmp = graven_home / "objects" / "tmp"
    assert [entry.name.split("-")[0] for entry in store_tmp.iterdir()] == ["rebuild"]
    assert not [entry for entry in system_tmp.iterdir() if entry.name.startswith("graven-rebuild-")]

    fake.write_text("#!/bin/sh\nexit 1\n")
    code, _, err = run_cli("verify", digest, "--rebuild")
    assert code == 1 and "differs: out/stamp.txt: content" in err
    assert list(store_tmp.iterdir()) == []
    assert list(system_tmp.iterdir()) == []  # the killed rebuild's workspace was reclaimed too
