"""`graven drift` finds and names every kind of tampering, never raises a false alarm, and `graven heal`
restores the release so that a full check is clean again."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ProgressRecorder, assert_cli_error, assert_counts_up_to
from graven.model.manifest import FileEntry
from helpers_deploy import World, append_to, env_toml, make_world, staging_prod, tree_problems
from helpers_repo import run_cli

Tamper = Callable[[Path], None]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    made.commit({"app/current.py": "->main.py"})
    yield made
    made.close()


def writable(path: Path) -> Any:
    """Run a change inside a read-only directory and put its mode back (a careful intruder)."""

    class _Ctx:
        def __enter__(self) -> None:
            path.chmod(0o755)

        def __exit__(self, *_: object) -> None:
            path.chmod(0o555)

    return _Ctx()


def rewrite(path: Path, data: bytes, *, keep_times: bool = False) -> None:
    before = os.lstat(path)
    mode = before.st_mode & 0o777
    with writable(path.parent):
        path.chmod(0o644)
        path.write_bytes(data)
        path.chmod(mode)
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` does


def drift(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = run_cli(capsys, "drift", "--json", *args)
    return code, json.loads(out)


def found(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(d["path"], d["kind"]) for env in doc["environments"] for d in env["differences"]}


def edit(release: Path) -> None:
    rewrite(release / "app/main.py", b"print('hellO')\n")


def append(release: Path) -> None:
    target = release / "app/main.py"
    rewrite(target, target.read_bytes() + b"import os\n")


def truncate(release: Path) -> None:
    rewrite(release / "app/main.py", b"")


def same_size_touch_r(release: Path) -> None:
    rewrite(release / "app/main.py", b"print('HELLO')\n", keep_times=True)


def chmod_plus_x(release: Path) -> None:
    (release / "app/main.py").chmod(0o555)


def chmod_minus_x(release: Path) -> None:
    (release / "bin/run").chmod(0o444)


def delete(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/main.py").unlink()


def add(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/backdoor.py").write_text("import os\n")


def file_to_symlink(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/main.py").unlink()
        (release / "app/main.py").symlink_to("/etc/hostname")


def retarget_symlink(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/current.py").unlink()
        (release / "app/current.py").symlink_to("__init__.py")


def file_to_directory(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/main.py").unlink()
        (release / "app/main.py").mkdir()
        (release / "app/main.py/inner.py").write_text("import os\n")


def symlink_to_directory(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/current.py").unlink()
        (release / "app/current.py").mkdir()
        (release / "app/current.py/inner.py").write_text("import os\n")


def writable_release(release: Path) -> None:
    release.chmod(0o755)


CASES: list[tuple[Tamper, set[tuple[str, str]]]] = [
    (edit, {("app/main.py", "modified")}),
    (append, {("app/main.py", "modified")}),
    (truncate, {("app/main.py", "modified")}),
    (same_size_touch_r, {("app/main.py", "modified")}),
    (chmod_plus_x, {("app/main.py", "mode")}),
    (chmod_minus_x, {("bin/run", "mode")}),
    (delete, {("app/main.py", "removed")}),
    (add, {("app/backdoor.py", "added")}),
    (file_to_symlink, {("app/main.py", "type")}),
    (retarget_symlink, {("app/current.py", "target")}),
    # the default check names what is in the directory too, as --full does
    (file_to_directory, {("app/main.py", "type"), ("app/main.py/inner.py", "added")}),
    (symlink_to_directory, {("app/current.py", "type"), ("app/current.py/inner.py", "added")}),
    (writable_release, {(".", "mode")}),
]


@pytest.mark.parametrize(("tamper", "expected"), CASES, ids=[c[0].__name__ for c in CASES])
def test_every_tampering_is_found_named_and_healed(
    world: World, capsys: pytest.CaptureFixture[str], tamper: Tamper, expected: set[tuple[str, str]]
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    assert drift(capsys)[0] == 0  # the first check after the deploy records what it verified
    release = world.env_dir("staging") / "current"
    tamper(release.resolve())
    for mode in ((), ("--full",)):
        code, doc = drift(capsys, *mode)
        assert code == 1 and found(doc) == expected, (mode, doc)
    code, out, _ = run_cli(capsys, "drift", "staging")
    assert code == 1 and "DRIFT" in out and next(iter(expected))[0] in out
    code, out, _ = run_cli(capsys, "heal", "staging", "--plan")
    assert code == 0 and "nothing was changed" in out
    assert drift(capsys)[0] == 1
    code, out, _ = run_cli(capsys, "heal", "staging")
    assert code == 0 and "healed" in out
    assert tree_problems(release, world.manifest(digest)) == []
    assert drift(capsys, "--full")[0] == 0
    assert drift(capsys)[0] == 0 and drift(capsys, "staging", "--full")[0] == 0


def test_current_swapped_to_another_release_or_an_unknown_one(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    env = world.env_dir("staging")
    (env / "current").unlink()
    (env / "current").symlink_to(f"releases/{v1.removeprefix('sha256:')}")
    code, doc = drift(capsys)
    assert code == 1 and found(doc) == {("current", "current")}
    unknown = "e" * 64
    shutil.copytree(env / "releases" / v1.removeprefix("sha256:"), env / "releases" / unknown, symlinks=True)
    (env / "current").unlink()
    (env / "current").symlink_to(f"releases/{unknown}")
    code, doc = drift(capsys)
    assert code == 1 and found(doc) == {("current", "unknown-release")}
    (env / "config").unlink()
    (env / "config").symlink_to("current/config/prod.toml")
    assert found(drift(capsys)[1]) == {("current", "unknown-release"), ("config", "config")}
    assert run_cli(capsys, "heal", "staging")[0] == 0
    assert world.live("staging") == v2
    assert os.readlink(env / "config") == "current/config/staging.toml"
    assert drift(capsys, "--full")[0] == 0


def test_no_false_alarm_after_deploy_promote_rollback_heal_or_touch(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from graven.service.deploy import promote, rollback

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert drift(capsys)[0] == 0  # right after the deploy (racy records are hashed)
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    assert drift(capsys)[0] == 0 and drift(capsys, "--full")[0] == 0
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    assert drift(capsys)[0] == 0
    assert rollback(world.ctx(), "staging", world.options()).ok
    code, doc = drift(capsys, "staging")
    assert code == 0 and doc["environments"][0]["digest"] == v1
    release = (world.env_dir("staging") / "current").resolve()
    target = release / "app/main.py"
    os.utime(target)  # `touch`: new mtime and ctime, same bytes
    code, doc = drift(capsys)
    assert code == 0 and doc["environments"][1]["hashed"] >= 1, doc
    os.utime(target, (0, 0))  # `touch -d @0`
    time.sleep(0.02)  # one clock tick: a change in the tick of a check stays "racy" (hashed each time)
    assert drift(capsys)[0] == 0
    assert drift(capsys)[1]["environments"][1]["hashed"] == 0  # verified once, trusted by stat again
    append(release)
    assert drift(capsys)[0] == 1
    assert run_cli(capsys, "heal", "staging")[0] == 0
    assert drift(capsys)[0] == 0 and drift(capsys, "--full")[0] == 0
    from graven.service.environments import unhold

    unhold(world.ctx(), "staging")
    v3 = world.version(3)  # the deploy after a heal may hard-link the healed files: still exact
    assert world.deploy(v3, "staging").ok
    assert drift(capsys)[0] == 0 and drift(capsys, "--full")[0] == 0


def test_ignore_globs_and_runtime_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    envs = staging_prod()
    envs["staging"]["ignore"] = ["var/**", "*.pid"]
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    try:
        world.commit({"var/.keep": ""})
        digest = world.build()
        assert world.deploy(digest, "staging").ok
        release = (world.env_dir("staging") / "current").resolve()
        with writable(release / "var"):
            (release / "var/cache").mkdir()
            (release / "var/cache/data.db").write_bytes(b"x" * 100)
            (release / "var/.keep").unlink()
        with writable(release):
            (release / "service.pid").write_text("42\n")
            (release / "other.txt").write_text("no\n")
        code, doc = drift(capsys)
        assert code == 1 and found(doc) == {("other.txt", "added")}
        assert run_cli(capsys, "heal", "staging")[0] == 0
        assert (release / "var/cache/data.db").exists() and (release / "service.pid").exists()
        assert not (release / "other.txt").exists()
        assert drift(capsys, "--full")[0] == 0
    finally:
        world.close()


def test_a_removed_release_directory_is_rebuilt(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = (world.env_dir("staging") / "current").resolve()
    for directory, _dirs, _files in os.walk(release):
        os.chmod(directory, 0o755)
    shutil.rmtree(release)
    code, doc = drift(capsys)
    assert code == 1 and found(doc) == {(".", "removed")}
    assert run_cli(capsys, "heal", "staging")[0] == 0
    assert tree_problems(release, world.manifest(digest)) == []
    assert drift(capsys, "--full")[0] == 0 and drift(capsys)[0] == 0


def test_a_release_rebuilt_whole_draws_its_progress_on_a_terminal_and_clears_it(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding a removed release of 13,411 files took 3.4 s without a word, where a deploy of the
    same tree draws its progress: heal draws it too, and clears it before its result."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = (world.env_dir("staging") / "current").resolve()
    for directory, _dirs, _files in os.walk(release):
        os.chmod(directory, 0o755)
    shutil.rmtree(release)
    files = sum(1 for entry in world.manifest(digest).entries if isinstance(entry, FileEntry))
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0 and "(the release directory is rebuilt)" in out, (out, err)
    assert f"\r\x1b[Krebuilding release: {files}/{files}" in err, err
    assert err.endswith("\r\x1b[K"), err  # cleared: the result's first line starts a clean line


def test_files_healed_one_by_one_report_their_progress(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that is there is healed file by file (each fsynced: seconds for thousands), which said
    nothing: heal reports the files written of those the plan writes, and on a terminal draws them on
    stderr and clears the line; stdout (the --json result) holds none of it."""
    from graven.service import drift as svc
    from graven.service.drift_heal import HEAL_STAGE

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = (world.env_dir("staging") / "current").resolve()
    changed = ["app/main.py", "bin/run", "config/staging.toml"]

    def tamper() -> None:
        for rel in changed:
            rewrite(release / rel, b"tampered\n")

    tamper()
    recorder = ProgressRecorder()
    result = svc.heal(world.ctx(recorder), "staging")
    assert result.ok and not result.rebuilt and result.stats is not None
    assert sorted(result.stats.written) == changed
    assert recorder.of(HEAL_STAGE) == [(n, 3) for n in range(4)]
    # the full checks before and after the heal report their own stage (test_a_full_check_...)
    assert {stage for stage, _, _ in recorder.calls} == {HEAL_STAGE, "hashing the files of staging"}

    tamper()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, out, err = run_cli(capsys, "heal", "staging", "--json")
    assert code == 0 and sorted(json.loads(out)["written"]) == changed, (out, err)
    assert f"\r\x1b[K{HEAL_STAGE}: 3/3" in err, err
    assert err.endswith("\r\x1b[K"), err  # cleared: the result's first line starts a clean line


def test_a_full_check_reports_the_files_it_has_hashed(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graven drift --full` hashes every file of every live release (minutes for a large one) and said
    nothing meanwhile: each environment's check reports its files from 0 to the manifest's count, and
    on a terminal the CLI draws it on stderr and clears it before the result (stdout: JSON only)."""
    from graven.service import drift as svc

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    files = sum(1 for entry in world.manifest(digest).entries if isinstance(entry, FileEntry))
    recorder = ProgressRecorder()
    (report,) = svc.check(world.ctx(recorder), ["staging"], full=True)
    assert report.clean, report
    assert_counts_up_to(recorder.of("hashing the files of staging"), files)

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, out, err = run_cli(capsys, "drift", "--full", "--json")
    assert code == 0 and json.loads(out)["clean"], (out, err)
    assert f"\r\x1b[Khashing the files of staging: {files}/{files}" in err, err
    assert err.endswith("\r\x1b[K"), err  # cleared before the result


def test_a_stat_check_reports_the_changed_files_it_hashes(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graven drift` (stat mode) hashes every file whose stat changed (a release whose files were all
    touched: as long as a full check) and said nothing meanwhile: it reports them from 0 to their
    count, drawn on a terminal and cleared before the result. A clean release hashes nothing and
    reports nothing."""
    from graven.service import drift as svc

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    stage = "hashing the changed files of staging"
    recorder = ProgressRecorder()
    (report,) = svc.check(world.ctx(recorder), ["staging"])
    assert report.clean and recorder.of(stage) == [], (report, recorder.calls)

    release = (world.env_dir("staging") / "current").resolve()
    changed = ["app/main.py", "bin/run", "config/staging.toml"]
    for rel in changed:
        rewrite(release / rel, b"tampered\n")
    recorder = ProgressRecorder()
    (report,) = svc.check(world.ctx(recorder), ["staging"])
    assert not report.clean
    assert recorder.of(stage) == [(0, 3), (3, 3)], recorder.calls

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, out, err = run_cli(capsys, "drift", "--json")
    assert code == 1 and not json.loads(out)["clean"], (out, err)
    assert f"\r\x1b[K{stage}: 3/3" in err, err
    assert err.endswith("\r\x1b[K"), err  # cleared before the result


def test_a_check_of_a_moved_away_environment_never_makes_its_directory_again(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CLI review: `drift` and `heal --plan` made PATH/.graven/drift/clock again where the
    environment's directory had been (moved away; an unmounted volume: its mount point)."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    staging = world.env_dir("staging")
    os.rename(staging, staging.with_name("staging.moved"))
    code, _doc = drift(capsys)
    assert code == 1
    run_cli(capsys, "heal", "staging", "--plan", "--root", str(world.root))
    assert not staging.exists(), sorted(p.name for p in staging.rglob("*"))


def test_records_and_audit_log(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    release = (world.env_dir("staging") / "current").resolve()
    add(release)
    assert drift(capsys)[0] == 1
    assert drift(capsys)[0] == 1  # the same drift again: recorded once
    assert run_cli(capsys, "heal", "staging")[0] == 0
    with world.ctx().db.connect() as conn:
        events = [
            (r.event, r.result) for r in conn.execute("SELECT event, result FROM drift_events ORDER BY id")
        ]
        log = [
            (json.loads(r.entry)["event"], json.loads(r.entry)["result"], r.env, r.artifact)
            for r in conn.execute("SELECT entry, event, env, artifact FROM log_entries ORDER BY idx")
            if r.event in ("drift", "heal")
        ]
    assert events == [("found", "drift"), ("heal", "ok"), ("resolved", "clean")]
    assert log == [
        ("drift", "found", "staging", digest),
        ("heal", "started", "staging", digest),  # logged before the environment changes
        ("heal", "ok", "staging", digest),
        ("drift", "resolved", "staging", digest),
    ]
    assert run_cli(capsys, "log", "verify")[0] == 0


def test_bad_input_exits_2(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "drift", "nowhere")
    assert code == 2 and "never been deployed" in err and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "drift")
    assert code == 0 and "no live environments" in out
    assert_cli_error(run_cli(capsys, "heal", "staging"), 2, "environment staging has never been deployed")
    assert_cli_error(run_cli(capsys, "drift", "BAD NAME"), 2, "invalid environment name 'BAD NAME'")
    assert_cli_error(run_cli(capsys, "watch", "--interval", "0"), 2, "--interval: '0' must be more than zero")


def test_speed_of_the_fast_check_does_not_depend_on_reading_files(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.commit({f"data/{i}.bin": os.urandom(2048) for i in range(200)})
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    time.sleep(0.02)
    assert drift(capsys)[0] == 0
    doc = drift(capsys)[1]["environments"][0]
    assert doc["hashed"] == 0 and doc["directories_listed"] == 0 and doc["files"] > 200


def _forge_records(world: World, env: Path, release: Path, key: bytes) -> None:
    """What an intruder who can write PATH does after editing a file: record its new stat as the
    deployed one (in the deploy's stat table, signed with ``key``) and drop the drift cache."""
    from graven.deploy.recordkey import KEY_FILE
    from graven.deploy.statdb import StatTable

    real_key = (world.home / "keys" / KEY_FILE).read_bytes()
    table = StatTable.load(env / ".graven" / "stat", real_key)  # reading is easy: the format is public
    assert table.inodes
    for path in (release / "app/main.py", release / "app"):
        st = os.lstat(path)
        sha = table.inodes[st.st_ino][0] if st.st_ino in table.inodes else "0" * 64
        table.record(st, sha)
    table.save(env / ".graven" / "stat", key)
    shutil.rmtree(env / ".graven" / "drift", ignore_errors=True)


def test_forged_stat_records_do_not_hide_a_change(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    release = (env / "current").resolve()
    time.sleep(0.02)  # past the racy window of the deploy's records
    assert drift(capsys)[0] == 0
    same_size_touch_r(release)
    # the control: records signed with the home's own key are trusted by stat (that is what makes
    # the default check fast), so the key, 0600 in the graven home, is what keeps them honest
    from graven.deploy.recordkey import KEY_FILE

    key_file = world.home / "keys" / KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    _forge_records(world, env, release, key_file.read_bytes())
    time.sleep(0.02)
    assert drift(capsys, "staging")[0] == 0
    assert drift(capsys, "staging", "--full")[0] == 1  # --full trusts no record
    # the intruder has no access to the graven home, so not to its key
    _forge_records(world, env, release, b"\x00" * 32)
    code, doc = drift(capsys, "staging")
    assert code == 1 and found(doc) == {("app/main.py", "modified")}, doc


def test_a_rollback_never_switches_to_a_tampered_release_behind_forged_records(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from graven.service.deploy import rollback

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    env = world.env_dir("staging")
    old = (env / "current").resolve()
    assert world.deploy(world.version(2), "staging").ok
    same_size_touch_r(old)
    _forge_records(world, env, old, b"\x00" * 32)
    assert rollback(world.ctx(), "staging", world.options()).ok
    assert world.live("staging") == v1
    assert tree_problems(env / "current", world.manifest(v1)) == []  # rebuilt from the store
    assert drift(capsys, "staging", "--full")[0] == 0


def test_watch_draws_no_progress_between_its_lines(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """watch --heal rebuilds releases as heal does, but its output is one line per check on stdout: its
    reporter says warnings only, also on a terminal."""
    from graven.service import drift_watch

    seen: list[Any] = []
    monkeypatch.setattr(drift_watch, "run_watch", lambda ctx, *_args, **_kw: seen.append(ctx.reporter))
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert run_cli(capsys, "watch", "--heal")[0] == 0
    (reporter,) = seen
    reporter.progress("rebuilding release", 1, 2)
    assert capsys.readouterr().err == ""


def test_watch_of_a_home_without_live_environments_says_so_once(world: World) -> None:
    """`graven watch` with nothing deployed (or the wrong GRAVEN_HOME) was silent forever."""
    import threading

    from graven.drift.watch import WatchOptions
    from graven.service.drift_watch import run_watch

    class Said:
        def __init__(self) -> None:
            self.warnings: list[str] = []

        def warn(self, message: str) -> None:
            self.warnings.append(message)

        def progress(self, stage: str, done: int, total: int | None) -> None:
            pass

    stop = threading.Event()
    stop.set()  # the loop never runs: what is said is said before it
    said = Said()
    run_watch(world.ctx(said), WatchOptions(interval=30.0), stop, out=lambda _line: None)
    assert said.warnings == [
        f"no live environments yet (home {world.home}); watching for the first deployment (every 30 s)"
    ]
    assert world.deploy(world.build(), "staging").ok
    said.warnings.clear()
    run_watch(world.ctx(said), WatchOptions(interval=30.0), stop, out=lambda _line: None)
    assert said.warnings == []


def test_heal_counts_one_file_in_the_singular(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """`graven heal` said "write 1 files" for the one file it rewrote."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    append_to((world.env_dir("staging") / "current").resolve() / "app/main.py", b"evil()\n")
    code, out, _ = run_cli(capsys, "heal", "staging")
    assert code == 0, out
    said = "staging: 1 difference; did remove 0, create or fix 0 directories, write 1 file and 0 symlinks"
    assert said in out
