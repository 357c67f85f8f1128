"""Review fixes of drift, heal and watch, end to end: a heal that cannot clean up leaves no record that
hides the rest, a failing self-heal backs off, a watcher waits (not spins) while a deployer holds the
lock, graven never writes through a symlink under PATH/.graven, and ignore globs never hide the
release directory or a file."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_drift_watch import wait_for
from test_watch_review import watching

from graven.drift.watch import WatchOptions
from graven.errors import BackendError, PolicyError
from helpers_deploy import World, env_toml, make_world, opened_up, staging_prod
from helpers_mounts import mounted_bind
from helpers_repo import run_cli
from helpers_services import unavailable

APP_FILES: dict[str, bytes | str | None] = {
    "out/app/main.py": "print('app')\n",
    "out/app/util.py": "X = 1\n",
    "out/var/.keep": "",
    "out/top.py": "TOP = 1\n",
}


def ignoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ignore: list[str]) -> tuple[World, str]:
    """A world whose staging ignores ``ignore``, with ``out/`` deployed there."""
    envs = staging_prod()
    envs["staging"]["ignore"] = ignore
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    world.commit(APP_FILES)
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    return world, digest


def drift(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = run_cli(capsys, "drift", "--json", *args)
    return code, json.loads(out)


def found(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(d["path"], d["kind"]) for env in doc["environments"] for d in env["differences"]}


def release_of(world: World) -> Path:
    return (world.env_dir("staging") / "current").resolve()


def plant_evil(release: Path) -> Path:
    """A directory added next to the code, holding an ignored file and a payload."""
    app = release / "out/app"
    app.chmod(0o755)
    evil = app / "evil"
    evil.mkdir()
    (evil / "x.pid").write_text("1\n")
    (evil / "payload.py").write_text("2\n")
    return evil


# -- 1. a heal that cannot clean up --------------------------------------------------------------


def test_a_heal_that_leaves_a_directory_behind_does_not_hide_it_from_the_fast_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world, _digest = ignoring(tmp_path, monkeypatch, ["out/var/**", "**/*.pid"])
    try:
        release = release_of(world)
        time.sleep(0.02)
        assert drift(capsys)[0] == 0
        evil = plant_evil(release)
        code, _out, err = run_cli(capsys, "heal", "staging")
        assert code == 1 and "still differs" in err
        assert (evil / "x.pid").exists() and not (evil / "payload.py").exists()
        time.sleep(0.02)  # past the racy window of every record the heal made
        with opened_up(evil):
            (evil / "backdoor.py").write_text("import os\n")
        for mode in ((), ("--full",), ()):
            code, doc = drift(capsys, *mode)
            assert code == 1 and ("out/app/evil/backdoor.py", "added") in found(doc), (mode, doc)
    finally:
        world.close()


def test_a_failed_heal_leaves_no_directory_record_that_vouches_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``__pycache__`` next to the code, with ``**/*.pyc`` ignored: the heal cannot remove it, and the
    deploy's stat table must not say that ``out/app`` holds exactly graven's entries."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import DIR_SHA, StatTable

    world, _digest = ignoring(tmp_path, monkeypatch, ["**/*.pyc"])
    try:
        release = release_of(world)
        app = release / "out/app"
        app.chmod(0o755)
        (app / "__pycache__").mkdir()
        (app / "__pycache__/main.cpython-311.pyc").write_bytes(b"\0" * 8)
        (app / "__pycache__/stray.py").write_text("x\n")
        (app / "main.py").chmod(0o644)  # something the heal does fix, in the same directory
        assert run_cli(capsys, "heal", "staging")[0] == 1
        layout = EnvLayout(world.env_dir("staging"))
        table = StatTable.load(layout.stat_file, world.ctx().record_key)
        for directory in (app, app / "__pycache__"):
            record = table.inodes.get(os.lstat(directory).st_ino)
            assert record is None or record[0] != DIR_SHA, directory
        assert table.matches(os.lstat(app / "main.py"), table.inodes[os.lstat(app / "main.py").st_ino][0])
        time.sleep(0.02)
        with opened_up(app / "__pycache__"):
            (app / "__pycache__/later.py").write_text("import os\n")
        code, doc = drift(capsys)
        assert code == 1 and ("out/app/__pycache__/later.py", "added") in found(doc), doc
    finally:
        world.close()


def test_an_interrupted_heal_records_its_outcome(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or SIGTERM after `heal started` was logged: the heal is recorded as failed (as a deploy
    records an interrupted health check), so the log never shows a heal that started and never ended
    although graven could say how it ended."""
    from graven.service import drift_heal

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    victim = release_of(world) / "app" / "main.py"
    victim.chmod(0o644)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(drift_heal, "apply_heal", interrupted)
    with pytest.raises(KeyboardInterrupt):
        drift_heal.heal(world.ctx(), "staging")
    with world.ctx().db.connect() as conn:
        entries = [
            json.loads(entry)
            for (entry,) in conn.execute("SELECT entry FROM log_entries WHERE event = 'heal' ORDER BY idx")
        ]
        events = [row[0] for row in conn.execute("SELECT result FROM drift_events WHERE event = 'heal'")]
    assert [e["result"] for e in entries] == ["started", "failed"], entries
    assert "interrupted" in entries[-1]["reason"], entries[-1]
    assert events == ["failed"]


def _heal_results(world: World) -> list[str]:
    with world.ctx().db.connect() as conn:
        return [
            json.loads(entry)["result"]
            for (entry,) in conn.execute("SELECT entry FROM log_entries WHERE event = 'heal' ORDER BY idx")
        ]


def test_a_second_ctrl_c_while_an_interrupted_heal_is_recorded_does_not_cut_the_record(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of an interrupted heal was not shielded as a deployment's is: a second Ctrl-C (or a
    SIGTERM after the Ctrl-C) while it was written left `heal started` in the log with no end."""
    import signal

    from graven.service import drift_heal

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    (release_of(world) / "app" / "main.py").chmod(0o644)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    real = drift_heal._record_heal

    def signalled_again(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, as the record starts
        real(*args, **kwargs)

    monkeypatch.setattr(drift_heal, "apply_heal", interrupted)
    monkeypatch.setattr(drift_heal, "_record_heal", signalled_again)
    with pytest.raises(KeyboardInterrupt):
        drift_heal.heal(world.ctx(), "staging")
    assert _heal_results(world) == ["started", "failed"]


def test_a_heal_interrupted_in_the_check_after_it_is_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the full check that follows the heal's writes left `heal started` without an end."""
    from graven.service import drift_heal

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    (release_of(world) / "app" / "main.py").chmod(0o644)
    from graven.service.drift_check import check_once as real

    calls = [0]

    def second_interrupted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(drift_heal, "check_once", second_interrupted)
    with pytest.raises(KeyboardInterrupt):
        drift_heal.heal(world.ctx(), "staging")
    assert calls[0] == 2
    assert _heal_results(world) == ["started", "failed"]
    assert drift_heal.heal(world.ctx(), "staging").ok  # written whole: nothing left to heal


# -- 2. a self-heal that keeps failing ------------------------------------------------------------


def plant_immutable(release: Path) -> Path:
    """An added file that even root cannot remove (``chattr +i``): every heal fails."""
    app = release / "out/app"
    app.chmod(0o755)
    stuck = app / "stuck.py"
    stuck.write_text("import os\n")
    done = subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False)
    if done.returncode != 0:
        unavailable(f"chattr +i is not available here: {done.stderr.decode().strip()}")
    return stuck


@pytest.mark.parametrize("plant", [plant_evil, plant_immutable], ids=["leftover", "immutable"])
def test_watch_heal_backs_off_when_the_heal_cannot_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plant: Callable[[Path], Path]
) -> None:
    world, _digest = ignoring(tmp_path, monkeypatch, ["out/var/**", "**/*.pid"])
    planted: Path | None = None
    try:
        release = release_of(world)
        lines: list[str] = []
        heal_times: list[float] = []
        second_heal = threading.Event()
        opts = WatchOptions(interval=1.0, heal=True, as_json=True, full_every=3600)

        def out(line: str) -> None:
            lines.append(line)
            if json.loads(line)["type"] == "heal":
                heal_times.append(time.monotonic())
                if len(heal_times) == 2:
                    second_heal.set()

        with watching(world, opts, out) as (thread, errors):
            assert wait_for(lambda: any(json.loads(line)["type"] == "check" for line in lines))
            planted = plant(release)
            assert second_heal.wait(timeout=15), lines
        assert not thread.is_alive() and not errors, errors
        docs = [json.loads(line) for line in lines]
        heals = [d for d in docs if d["type"] == "heal"]
        # heal at once, then not before the interval (1 s), then not before twice the interval
        assert not heals[0]["ok"] and not heals[1]["ok"]
        assert [h["retry_in"] for h in heals[:2]] == [1.0, 2.0], heals
        assert heal_times[1] - heal_times[0] >= 0.9, heal_times
        # and in between, a check after the heal and the periodic one (not a loop checking at once)
        at = [i for i, d in enumerate(docs) if d["type"] == "heal"]
        between = [d for d in docs[at[0] : at[1]] if d["type"] == "check"]
        assert 1 <= len(between) <= 4, between
        with world.ctx().db.connect() as conn:
            results = [
                json.loads(entry)["result"]
                for (entry,) in conn.execute(
                    "SELECT entry FROM log_entries WHERE event = 'heal' ORDER BY idx"
                )
            ]
        assert results.count("failed") == len(heals) and results.count("started") == len(heals)
    finally:
        if planted is not None and plant is plant_immutable:
            subprocess.run(["chattr", "-i", str(planted)], check=False)
        world.close()


# -- 3. a watcher waits while a deployer holds the lock -------------------------------------------


def test_a_heal_a_deployment_holds_off_says_why_and_when_it_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A postponed heal's JSON line was {"type", "env", "ok": false}: a script saw that it did not run,
    not why nor when the next one would."""
    from graven.service import drift_watch

    world, _digest = ignoring(tmp_path, monkeypatch, ["out/var/**"])
    release = release_of(world)
    tries: list[float] = []

    def held(*_args: object, **_kwargs: object) -> object:
        tries.append(time.monotonic())
        raise PolicyError("staging is being deployed by t (pid 1); try again when it is done")

    monkeypatch.setattr(drift_watch, "heal", held)
    lines: list[str] = []
    opts = WatchOptions(interval=1.0, heal=True, as_json=True, full_every=3600)
    with watching(world, opts, lines.append) as (thread, errors):
        assert wait_for(lambda: any(json.loads(line)["type"] == "check" for line in lines))
        main = release / "out/app/main.py"
        main.chmod(0o644)
        main.write_text("print('changed')\n")
        assert wait_for(lambda: len(tries) >= 2, timeout=15), lines
    assert not thread.is_alive() and not errors, errors
    heals = [json.loads(line) for line in lines if json.loads(line)["type"] == "heal"]
    assert heals[0] == {
        "type": "heal",
        "env": "staging",
        "ok": False,
        "error": "staging is being deployed by t (pid 1); try again when it is done",
        "retry_in": 1.0,
    }
    assert tries[1] - tries[0] >= 0.9  # not before it said


def test_the_watcher_waits_instead_of_spinning_while_the_check_lock_is_held(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graven.deploy.layout import EnvLayout
    from graven.deploy.lock import EnvLock
    from graven.service import drift_watch
    from graven.service.drift import run_watch

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    layout = EnvLayout(world.env_dir("staging"))
    refused: list[float] = []  # when a check found the lock held
    third_refusal = threading.Event()
    from graven.service.drift_check import check_target as real  # what drift_watch calls

    def counting(*args: Any, **kwargs: Any) -> Any:
        try:
            return real(*args, **kwargs)
        except PolicyError:
            refused.append(time.monotonic())
            if len(refused) == 3:
                third_refusal.set()
            raise

    reads: list[float] = []
    from graven.service.drift_targets import live_targets as real_targets  # what drift_watch calls

    def counting_targets(*args: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        return real_targets(*args, **kwargs)

    monkeypatch.setattr(drift_watch, "check_target", counting)
    monkeypatch.setattr(drift_watch, "live_targets", counting_targets)
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=run_watch,
        args=(world.ctx(), WatchOptions(interval=60, as_json=True), stop),
        kwargs={"out": lines.append},
        daemon=True,
    )
    thread.start()
    try:
        assert wait_for(lambda: len(lines) >= 1)
        release = (layout.root / "current").resolve()
        lock = EnvLock(layout.lock, env="staging", actor="test", since="now")
        lock.acquire(wait=False)
        try:
            release.joinpath("app").chmod(0o755)  # an inotify event: the watcher wants to check now
            assert wait_for(lambda: len(refused) >= 1)
            for name in ("main.py", "__init__.py"):  # more events while it waits
                release.joinpath("app", name).chmod(0o644)
                release.joinpath("app", name).chmod(0o444)
            assert third_refusal.wait(timeout=15)
            attempts = refused[:3]
            loops = sum(attempts[0] <= t <= attempts[2] for t in reads)
            release.joinpath("app").chmod(0o555)
        finally:
            lock.release()
        # one attempt every 0.2 s while the lock is held, whatever events come (not thousands)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert min(gaps) >= 0.19, gaps
        assert loops <= 6, loops  # each round of the loop reads what is live from the database
        assert wait_for(lambda: any(json.loads(x)["type"] == "check" for x in lines[1:]))
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()


# -- 4. symlinks under PATH/.graven -----------------------------------------------------------------


def test_a_symlinked_drift_directory_is_not_written_through(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    meta = world.env_dir("staging") / ".graven"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if (meta / "drift").exists():
        for item in (meta / "drift").iterdir():
            item.unlink()
        (meta / "drift").rmdir()
    (meta / "drift").symlink_to(elsewhere)
    for mode in ((), ("--full",)):
        assert drift(capsys, *mode)[0] == 0  # the check still works, it just records nothing
    assert list(elsewhere.iterdir()) == []
    assert (meta / "drift").is_symlink()


def test_a_symlinked_graven_directory_is_not_written_through(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    moved = tmp_path / "moved-meta"
    (env / ".graven").rename(moved)
    (env / ".graven").symlink_to(moved)
    before = sorted(p.name for p in moved.iterdir())
    assert drift(capsys)[0] == 0
    assert sorted(p.name for p in moved.iterdir()) == before  # no drift/ made there
    release = (env / "current").resolve()
    (release / "app/main.py").chmod(0o644)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code != 0 and ".graven" in err
    assert (release / "app/main.py").stat().st_mode & 0o777 == 0o644  # nothing was done


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    v2 = world.version(2)
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    for name in ("lock", "lock.check"):
        (env / ".graven" / name).unlink()
        (env / ".graven" / name).symlink_to(victim)
        release = (env / "current").resolve()
        (release / "app/main.py").chmod(0o644)
        code, _out, err = run_cli(capsys, "heal", "staging")
        assert code != 0 and str(env / ".graven" / name) in err, err
        assert victim.read_text() == "precious\n"
        assert (release / "app/main.py").stat().st_mode & 0o777 == 0o644
        with pytest.raises(BackendError, match=name):
            world.deploy(v2, "staging")
        assert victim.read_text() == "precious\n"
        (env / ".graven" / name).unlink()
        (env / ".graven" / name).write_text("")
        assert run_cli(capsys, "heal", "staging")[0] == 0


def test_the_attic_is_never_reached_through_a_symlink(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = world.env_dir("staging")
    outside = tmp_path / "outside"
    outside.mkdir()
    drift_dir = env / ".graven" / "drift"
    drift_dir.mkdir(exist_ok=True)
    (drift_dir / "attic").symlink_to(outside)
    (env / "config").unlink()
    (env / "config").write_text("port = 1\n")  # a file where graven's symlink belongs
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code != 0 and "attic" in err, err
    assert list(outside.iterdir()) == []
    assert (env / "config").read_text() == "port = 1\n"


# -- 5. ignore globs never hide the release directory or a file -------------------------------------


def test_an_ignore_glob_does_not_hide_the_release_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world, _digest = ignoring(tmp_path, monkeypatch, ["**/.*"])
    try:
        release = release_of(world)
        release.chmod(0o777)
        for mode in ((), ("--full",)):
            code, doc = drift(capsys, *mode)
            assert code == 1 and found(doc) == {(".", "mode")}, (mode, doc)
        assert run_cli(capsys, "heal", "staging")[0] == 0
        assert release.stat().st_mode & 0o777 == 0o555
        assert drift(capsys, "--full")[0] == 0
    finally:
        world.close()


def test_an_ignore_glob_for_what_is_below_does_not_hide_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world, _digest = ignoring(tmp_path, monkeypatch, ["out/*/**"])
    try:
        release = release_of(world)
        top = release / "out/top.py"
        top.chmod(0o644)
        top.write_text("TOP = 2\n")
        (release / "out/app/main.py").chmod(0o644)  # below out/*/: ignored
        for mode in ((), ("--full",)):
            code, doc = drift(capsys, *mode)
            assert code == 1 and found(doc) == {("out/top.py", "mode"), ("out/top.py", "modified")}, doc
        assert run_cli(capsys, "heal", "staging")[0] == 0
        assert top.read_text() == "TOP = 1\n"
        assert (release / "out/app/main.py").stat().st_mode & 0o777 == 0o644  # left alone
    finally:
        world.close()


@pytest.mark.parametrize("ignore", [["config/**"], ["**/*.toml"], ["config/"]])
def test_an_ignore_glob_does_not_hide_the_environments_own_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ignore: list[str]
) -> None:
    """PATH/config exposes config/staging.toml: an ignore glob that matches it (or the directory it lies
    in) must not hide an edit of the very file the environment runs with, nor keep heal from it."""
    world, _digest = ignoring(tmp_path, monkeypatch, ignore)
    try:
        release = release_of(world)
        config = release / "config/staging.toml"
        with opened_up(config, config.parent):
            config.write_text('port = 9999\nbanner = "edited"\n')
        (release / "config/prod.toml").chmod(0o644)  # another environment's config: still ignored
        for mode in ((), ("--full",)):
            code, doc = drift(capsys, *mode)
            assert code == 1, (mode, doc)
            assert ("config/staging.toml", "modified") in found(doc), (mode, doc)
            assert ("config/prod.toml", "mode") not in found(doc), (mode, doc)
        assert run_cli(capsys, "heal", "staging")[0] == 0
        assert config.read_text() == 'port = 8001\nbanner = "staging"\n'
        assert (world.env_dir("staging") / "config").read_text() == config.read_text()
    finally:
        world.close()


def test_a_heal_that_waited_for_a_deployment_heals_the_new_release_not_back_to_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """heal --wait read what was live before taking the lock: a deployment finishing meanwhile was
    'healed' back to the release it had just replaced."""
    import threading
    import time as _time

    from graven.service.drift_heal import heal
    from helpers_deploy import make_world

    world = make_world(tmp_path, monkeypatch)
    try:
        v1 = world.build()
        assert world.deploy(v1, "staging").ok
        v2 = world.version(2)
        from graven.home import Home
        from graven.service.context import Context, NullReporter
        from graven.service.deploy import deploy

        class _SlowAfterLocking(NullReporter):
            def progress(self, stage: str, done: int, total: int | None) -> None:
                if stage == "deploy:locked":
                    _time.sleep(1)  # the lock is held and nothing is recorded yet (no pending row)

        def run() -> None:
            with Context(home=Home(root=world.home), reporter=_SlowAfterLocking()) as ctx:
                done.append(deploy(ctx, v2, "staging", world.options()))

        done: list[object] = []
        deployer = threading.Thread(target=run)
        deployer.start()
        _time.sleep(0.4)
        slow = v2
        result = heal(world.ctx(), "staging", wait=True)
        deployer.join()
        assert world.live("staging") == slow, result
        assert not result.before  # nothing to heal once the new release is live
    finally:
        world.close()


def test_a_name_that_is_not_utf8_is_reported_logged_and_healed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file named with a byte that is no UTF-8 (also in an ignored directory, which the clean
    check still compares) crashed drift, heal and watch: its path could not be sorted, recorded or
    printed. It is reported with the byte as \\xNN, in JSON too, logged, and heal removes it."""
    world, _digest = ignoring(tmp_path, monkeypatch, ["out/var/**"])
    release = release_of(world)
    for where in ("out/app", "out/var"):
        mode = (release / where).stat().st_mode
        (release / where).chmod(0o755)
        with open(os.path.join(os.fsencode(release / where), b"a\xff\x1b.py"), "wb") as handle:
            handle.write(b"x")
        (release / where).chmod(mode)
    code, doc = drift(capsys, "staging")
    assert code == 1
    assert found(doc) == {("out/app/a\\xff\x1b.py", "added")}
    code, out, err = run_cli(capsys, "drift", "staging")
    assert code == 1 and "out/app/a\\xff\\x1b.py" in out and "\x1b" not in out, (out, err)
    code, out, err = run_cli(capsys, "log", "--json")
    assert code == 0 and "a\\\\xff\\\\x1b.py" in out, out  # the log's reason: escaped, then JSON
    code, out, err = run_cli(capsys, "heal", "staging", "--json")
    assert code == 0, err
    assert os.listdir(os.fsencode(release / "out/app")).count(b"a\xff\x1b.py") == 0
    assert drift(capsys, "staging")[0] == 0
    # what heal removed, in its --json and in its drift_events row: the byte as \xNN (as in
    # `differences`), never a lone surrogate, which strict JSON readers refuse
    assert json.loads(out)["removed"] == ["out/app/a\\xff\x1b.py"], out
    with world.ctx().db.connect() as conn:
        (detail,) = conn.execute("SELECT detail FROM drift_events WHERE event = 'heal'").scalars()
    assert json.loads(detail)["removed"] == ["out/app/a\\xff\x1b.py"]
    detail.encode("utf-8")  # no surrogate


def test_an_owner_or_extended_attributes_graven_never_gave_are_drift_and_healed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chown, a file capability or a user.* attribute leave content and mode alone, so drift said
    clean, and the re-hash made the new stat the verified one. They only move the ctime: the check now
    looks at the owner and the extended attributes of such a file (and of every file in --full), and
    heal replaces it."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    expected: set[tuple[str, str]] = set()
    main, util, top = release / "out/app/main.py", release / "out/app/util.py", release / "out/top.py"
    with opened_up(main):  # user.* attributes need write access
        os.setxattr(main, "user.note", b"planted")
    expected.add(("out/app/main.py", "attributes"))
    if os.geteuid() == 0:
        os.chown(util, 65534, -1)
        os.setxattr(top, "security.capability", bytes.fromhex("0100000201000000000000000000000000000000"))
        expected |= {("out/app/util.py", "attributes"), ("out/top.py", "attributes")}
    for mode in ((), ("--full",), ()):  # the quick check twice: a first look must not make it clean
        code, doc = drift(capsys, "staging", *mode)
        assert code == 1 and found(doc) == expected, (mode, doc)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err
    assert os.listxattr(main) == [] and util.stat().st_uid == release.stat().st_uid
    for mode in ((), ("--full",)):
        assert drift(capsys, "staging", *mode)[0] == 0


def test_an_acl_a_default_acl_gave_is_not_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deploy directory's default ACL gives every new file a system.posix_acl_access attribute: the
    full check reported every file, and heal could not make it go away."""
    import struct

    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    # a group entry for gid 4321 (read), as `setfacl -m g:4321:r` writes it
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident)
        for tag, perm, ident in (
            (1, 4, 0xFFFFFFFF),
            (4, 4, 0xFFFFFFFF),
            (8, 4, 4321),
            (0x10, 4, 0xFFFFFFFF),
            (0x20, 4, 0xFFFFFFFF),
        )
    )
    main = release / "out/app/main.py"
    try:
        os.setxattr(main, "system.posix_acl_access", acl)
    except OSError as exc:
        unavailable(f"no ACLs on this file system: {exc.strerror}")
    assert "system.posix_acl_access" in os.listxattr(main)
    for mode in ((), ("--full",)):
        code, doc = drift(capsys, "staging", *mode)
        assert code == 0, (mode, doc)


def test_a_damaged_object_does_not_stop_the_rest_of_a_heal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Heal stopped at the first file whose store object was damaged, leaving every other difference
    (here a file it could restore) as it was."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    pack = next((world.home / "objects" / "pack").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    at = data.find(b"TOP = 1\n")  # small objects are stored raw
    assert at > 0
    data[at] ^= 0x01
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    for rel, text in (("out/top.py", "TOP = 2\n"), ("out/app/util.py", "X = 2\n")):
        path = release / rel
        mode = path.parent.stat().st_mode
        path.parent.chmod(0o755)
        path.chmod(0o644)
        path.write_text(text)
        path.chmod(0o444)
        path.parent.chmod(mode)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 1 and "cannot restore 1 file(s)" in err and "out/top.py" in err, err
    assert (release / "out/app/util.py").read_text() == "X = 1\n"  # healed all the same


def test_a_damaged_object_does_not_stop_the_heal_of_current_config_and_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A heal that could not restore one file (its store object damaged) said "the rest is healed", but
    left `current` pointing where the drift put it (another release of the environment, an older one)
    and `config` as it was, and saved no record of the files it wrote."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    world, first = ignoring(tmp_path, monkeypatch, [])
    world.commit({"out/top.py": "TOP = 2\n"})
    second = world.build()
    assert world.deploy(second, "staging").ok
    env = world.env_dir("staging")
    release = release_of(world)
    # the pack that holds it (two builds made two: which one a glob lists first is the file system's)
    (pack,) = [p for p in (world.home / "objects" / "pack").glob("*.pack") if b"X = 1\n" in p.read_bytes()]
    data = bytearray(pack.read_bytes())
    at = data.find(b"X = 1\n")  # small objects are stored raw
    assert at > 0
    data[at] ^= 0x01
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    for rel, text in (("out/app/util.py", "X = 2\n"), ("out/app/main.py", "import os\n")):
        with opened_up((release / rel).parent):
            (release / rel).chmod(0o644)
            (release / rel).write_text(text)
            (release / rel).chmod(0o444)
    (env / "current").unlink()
    (env / "current").symlink_to(f"releases/{first.removeprefix('sha256:')}")  # the older release
    (env / "config").unlink()
    (env / "config").symlink_to("/etc/hostname")
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 1 and "cannot restore 1 file(s)" in err and "out/app/util.py" in err, err
    assert (release / "out/app/main.py").read_text() == "print('app')\n"
    assert os.readlink(env / "current") == f"releases/{second.removeprefix('sha256:')}"
    assert os.readlink(env / "config") == "current/config/staging.toml"
    table = StatTable.load(EnvLayout(env).stat_file, world.ctx().record_key)
    main = os.lstat(release / "out/app/main.py")
    assert table.inodes.get(main.st_ino, ("",))[0] == hashlib.sha256(b"print('app')\n").hexdigest()
    code, doc = drift(capsys)
    assert code == 1 and found(doc) == {("out/app/util.py", "modified")}, doc


def test_a_file_or_link_replaced_by_a_directory_holding_ignored_files_does_not_stop_the_heal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of the release replaced by a directory holding an ignored file: the heal keeps that file,
    so the directory stays, and writing the file there failed with "cannot heal ...: a directory there
    should have been removed first". Every path after it was left as the drift made it: an intruder
    could keep a backdoor in place through every heal (and `graven watch --heal`) by planting such a
    directory at a path that sorts first. The heal writes everything else; the check after it names
    what stays (exit 1, "still differs")."""
    world, _digest = ignoring(tmp_path, monkeypatch, ["**/*.pid"])
    try:
        world.commit({"out/app/link.py": "->main.py"})
        digest = world.build()
        assert world.deploy(digest, "staging").ok
        release = release_of(world)
        with opened_up(release / "out/app"):
            for name in ("main.py", "link.py"):
                (release / "out/app" / name).unlink()
                (release / "out/app" / name).mkdir()
                (release / "out/app" / name / "x.pid").write_text("1\n")
        top = release / "out/top.py"  # after out/app/ in the plan: the backdoor
        with opened_up(top.parent):
            top.chmod(0o644)
            top.write_text("import os\n")
            top.chmod(0o444)
        code, _out, err = run_cli(capsys, "heal", "staging")
        assert code == 1 and "still differs after the heal" in err, err
        assert top.read_text() == "TOP = 1\n"
        assert (release / "out/app/main.py/x.pid").exists() and (release / "out/app/link.py/x.pid").exists()
        code, doc = drift(capsys, "--full")
        assert code == 1 and found(doc) == {("out/app/main.py", "type"), ("out/app/link.py", "type")}, doc
    finally:
        world.close()


def test_a_damaged_artifact_in_one_environment_does_not_hide_the_others(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """One environment's damaged manifest object stopped `graven drift` with one error: no report for
    the healthy ones. It is now that environment's error (exit 1), and the others are checked."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok and world.deploy(v1, "prod").ok
    v2 = world.version(2)
    assert world.deploy(v2, "staging").ok
    import shutil

    shutil.rmtree(world.home / "cache", ignore_errors=True)  # the parsed manifests: read the store
    pack = next(
        p for p in (world.home / "objects" / "pack").glob("*.pack") if bytes.fromhex(v2[7:]) in p.read_bytes()
    )
    data = bytearray(pack.read_bytes())
    at = data.find(bytes.fromhex(v2[7:]))
    data[at + 32 + 1 + 8 + 8 + 40] ^= 0xFF  # inside the record's payload
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    code, out, _err = run_cli(capsys, "drift", "--full", "--json")
    doc = json.loads(out)
    by_env = {e["env"]: e for e in doc["environments"]}
    assert code == 1 and not doc["clean"]
    assert by_env["prod"]["clean"] and by_env["prod"]["error"] is None
    assert not by_env["staging"]["clean"] and by_env["staging"]["error"], by_env["staging"]
    code, out, _err = run_cli(capsys, "drift", "--full")
    assert code == 1 and "staging: ERROR, the check failed" in out and "prod: clean" in out, out


def test_a_chowned_file_in_a_release_on_disk_is_not_vouched_for_by_a_rollback(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stat check of a release on disk re-hashed a file whose ctime moved, found its content, and
    recorded it as good: a chown (or a capability) made before a rollback then passed every quick
    check. The release is rebuilt instead."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    old = (world.env_dir("staging") / "current").resolve()
    assert world.deploy(world.version(2), "staging").ok
    target = next(p for p in old.rglob("*") if p.is_file())
    os.chown(target, 65534, -1)
    code, _out, err = run_cli(capsys, "rollback", "staging", "--reason", "back", "--root", str(world.root))
    assert code == 0, err
    live = (world.env_dir("staging") / "current").resolve()
    assert (live / target.relative_to(old)).stat().st_uid == live.stat().st_uid
    assert drift(capsys, "staging")[0] == 0 and drift(capsys, "staging", "--full")[0] == 0


def test_files_and_directories_graven_makes_are_never_world_writable_under_umask_000(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under umask 000 the environment's directories were made 0777, and the location check then
    refused them."""
    import stat as stat_module

    v1 = world.build()
    old = os.umask(0)
    try:
        assert world.deploy(v1, "staging").ok
        code, _out, err = run_cli(capsys, "keys", "revoke", "b" * 64)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat_module.S_IMODE(world.env_dir("staging").stat().st_mode) & 0o022 == 0
    assert stat_module.S_IMODE((world.home / "trust" / "revoked").stat().st_mode) == 0o644
    assert drift(capsys, "staging")[0] == 0


def test_watch_stops_when_its_reader_goes_away(world: World, tmp_path: Path) -> None:
    """`graven watch | head -1` never ended: its lines went to a dropped stdout for ever."""
    import sys

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    script = (
        f'"{sys.executable}" -m graven.cli.main watch --interval 1s staging 2>/dev/null | head -1 >/dev/null;'
        ' echo "${PIPESTATUS[0]}"'
    )
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "GRAVEN_HOME": str(world.home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stdout.strip() == "141", (result.stdout, result.stderr)


def test_a_chowned_directory_is_drift_and_heal_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner was compared for files only: `chown nobody dir` (whose new owner could replace what
    is in it) was clean, also after a full check had seen it once (its record was cached)."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    os.chown(release / "out/app", 65534, -1)
    os.setxattr(release / "out/var", "user.note", b"x")
    expected = {("out/app", "attributes"), ("out/var", "attributes")}
    for mode in ((), ("--full",), (), ("--full",), ()):  # a full check must not cache them as good
        code, doc = drift(capsys, "staging", *mode)
        assert code == 1 and expected <= found(doc), (mode, doc)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err
    assert (release / "out/app").stat().st_uid == release.stat().st_uid
    assert os.listxattr(release / "out/var") == []
    for mode in ((), ("--full",)):
        assert drift(capsys, "staging", *mode)[0] == 0, mode


def owners(release: Path) -> dict[str, int]:
    """The owner of every path below the release directory (not of the release directory itself)."""
    return {str(path.relative_to(release)): path.lstat().st_uid for path in release.rglob("*")}


def test_a_chowned_release_directory_is_drift_of_that_path_alone_and_heal_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The release directory's owner was the reference for every other path: after `chown 12345` of
    PATH/releases/<hex> alone, the default check said clean, --full reported every other path as
    'owner uid 0 (deployed as 12345)' and heal gave every directory to 12345, then failed. The
    deployer's uid is recorded in the stat table: only '.' is drift, and heal gives it back."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    before = owners(release)
    assert drift(capsys, "staging")[0] == 0  # a clean snapshot, which must not answer for it either
    os.chown(release, 12345, -1)
    for mode in ((), ("--full",), ()):
        code, doc = drift(capsys, "staging", *mode)
        assert code == 1 and found(doc) == {(".", "attributes")}, (mode, doc)
        (diff,) = doc["environments"][0]["differences"]
        assert diff["actual"] == f"owner uid 12345 (deployed as {os.geteuid()})", (mode, diff)
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err
    assert "create or fix 1 directory," in out.splitlines()[0], out  # the release directory's owner
    assert release.lstat().st_uid == os.geteuid()
    assert owners(release) == before  # nothing else changed hands
    for mode in ((), ("--full",), ()):
        assert drift(capsys, "staging", *mode)[0] == 0, mode


def test_a_release_chowned_whole_is_drift_of_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the deployer's uid recorded, `chown -R` of a whole release is no longer a new reference:
    every path is named, and heal (as root) gives the release back to the deployer."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    everything = [release, *release.rglob("*")]
    for path in everything:
        os.lchown(path, 12345, -1)
    expected = {(".", "attributes")} | {(str(p.relative_to(release)), "attributes") for p in everything[1:]}
    for mode in ((), ("--full",)):
        code, doc = drift(capsys, "staging", *mode)
        assert code == 1 and found(doc) == expected, (mode, doc)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err
    assert {p.lstat().st_uid for p in [release, *release.rglob("*")]} == {os.geteuid()}
    for mode in ((), ("--full",)):
        assert drift(capsys, "staging", *mode)[0] == 0, mode


def test_a_deploy_does_not_take_back_a_release_whose_directory_another_user_owns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release on disk was checked against its own directory's owner: one chowned to another user
    (who could then replace what is in it) was taken as it was by a rollback or a new deploy of it."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.deploy import deploy

    class Warnings:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def warn(self, message: str) -> None:
            self.lines.append(message)

        def progress(self, stage: str, done: int, total: int | None) -> None:
            pass

    world = make_world(tmp_path, monkeypatch)
    try:
        v1 = world.build()
        assert world.deploy(v1, "staging").ok
        v2 = world.version(2)
        assert world.deploy(v2, "staging").ok
        old = world.env_dir("staging") / "releases" / v1.removeprefix("sha256:")
        os.chown(old, 12345, -1)
        warnings = Warnings()
        with Context(home=Home(root=world.home), reporter=warnings) as ctx:
            assert deploy(ctx, v1, "staging", world.options()).ok
        assert old.lstat().st_uid == os.geteuid()  # rebuilt from the store, not taken as it was
        assert any("./: owner uid 12345" in line for line in warnings.lines), warnings.lines
    finally:
        world.close()


def test_the_stat_table_records_the_owner_of_each_release_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each deploy records who made its release; retention forgets the owner of a release it deletes."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    envs = staging_prod()
    envs["staging"]["keep"] = 1
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    try:
        for n in range(3):
            assert world.deploy(world.version(n), "staging").ok
        layout = EnvLayout(world.env_dir("staging"))
        names = set(layout.release_names())
        assert len(names) == 2  # live and previous: the first one was deleted
        table = StatTable.load(layout.stat_file, world.ctx().record_key)
        assert table.owners == dict.fromkeys(names, os.geteuid())
    finally:
        world.close()


def upgraded_with_two_releases(world: World) -> tuple[Any, bytes, str]:
    """Staging with v1 then v2 deployed, its stat table recording no owner nor group (as an environment
    deployed before graven.deploy-stat/v4): (its layout, the record key, v1's hex)."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(world.version(2), "staging").ok
    layout = EnvLayout(world.env_dir("staging"))
    key = world.ctx().record_key
    table = StatTable.load(layout.stat_file, key)
    table.owners.clear()  # as an upgraded environment's table: no release has a recorded owner
    table.groups.clear()  # nor group
    table.save(layout.stat_file, key)
    return layout, key, v1.removeprefix("sha256:")


def test_a_release_on_disk_without_a_recorded_owner_gets_one_when_a_deploy_takes_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release made before owners were recorded (a v3 table) has its owner recorded once a deploy or
    rollback finds it intact, so that a later chown of its directory alone is drift there too."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    from graven.deploy.statdb import StatTable

    world = make_world(tmp_path, monkeypatch)
    try:
        layout, key, hex1 = upgraded_with_two_releases(world)
        assert run_cli(capsys, "rollback", "staging", "--root", str(world.root))[0] == 0
        assert StatTable.load(layout.stat_file, key).owners == {hex1: os.geteuid()}
        os.chown(layout.release(hex1), 12345, -1)
        code, doc = drift(capsys, "staging")
        assert code == 1 and found(doc) == {(".", "attributes")}, doc
    finally:
        world.close()


def test_a_release_without_a_recorded_owner_whose_directory_was_chowned_is_not_taken_back_as_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chown of the directory of a release that records no owner (a v3 table) must not make its new
    owner the deployer recorded for it: every other path is still the real deployer's, so the release
    does not check out; it is rebuilt, and the deployer's uid recorded."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    from graven.deploy.statdb import StatTable

    world = make_world(tmp_path, monkeypatch)
    try:
        layout, key, hex1 = upgraded_with_two_releases(world)
        os.chown(layout.release(hex1), 12345, -1)
        code, _out, err = run_cli(capsys, "rollback", "staging", "--root", str(world.root))
        assert code == 0, err
        assert "owner uid" in err and "rebuilding it from the store" in err, err
        assert StatTable.load(layout.stat_file, key).owner(hex1) == os.geteuid()
        assert layout.release(hex1).lstat().st_uid == os.geteuid()
        code, doc = drift(capsys, "--full", "staging")
        assert code == 0 and found(doc) == set(), doc
    finally:
        world.close()


def test_a_release_with_a_chowned_directory_inside_is_rebuilt_not_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deploy takes a release on disk back only when every path is the deployer's: a directory inside
    it given to another user (who could then replace what is in it) is what drift names, so the deploy
    rebuilds the release rather than record that directory as it is."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    world = make_world(tmp_path, monkeypatch)
    try:
        v1 = world.build()
        assert world.deploy(v1, "staging").ok
        assert world.deploy(world.version(2), "staging").ok
        old = world.env_dir("staging") / "releases" / v1.removeprefix("sha256:")
        os.chown(old / "app", 12345, -1)
        code, _out, err = run_cli(capsys, "rollback", "staging", "--root", str(world.root))
        assert code == 0, err
        assert "app/: owner uid 12345" in err, err
        assert (old / "app").lstat().st_uid == os.geteuid()
        code, doc = drift(capsys, "--full", "staging")
        assert code == 0 and found(doc) == set(), doc
    finally:
        world.close()


DEPLOYER = 12345  # a service user that is not root


def deployed_by(world: World, uid: int) -> Path:
    """Staging's live release as a deploy by ``uid`` leaves it: every path (the release directory
    included) that user's and in its group (gid ``uid``), and the stat table recording ``uid`` as its
    deployer and that group as its group. Only root deploys in
    these tests (a service user's deploy needs a home and an environment directory of its own, which
    root then refuses); the release is what that user's deploy would have made."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    release = release_of(world)
    for path in [release, *release.rglob("*")]:
        os.lchown(path, uid, uid)
    layout = EnvLayout(world.env_dir("staging"))
    key = world.ctx().record_key
    table = StatTable.load(layout.stat_file, key)
    table.set_owner(release.name, uid)
    table.set_group(release.name, uid)
    table.save(layout.stat_file, key)
    return release


def stat_records(world: World) -> dict[int, tuple[str, int, int, int, int]]:
    """Staging's stat table: inode -> (sha256, size, mtime_ns, ctime_ns, mode)."""
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    return StatTable.load(EnvLayout(world.env_dir("staging")).stat_file, world.ctx().record_key).inodes


def test_root_heals_a_service_users_release_into_that_users_hands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release a service user deployed, healed by root: the files, symlinks and directories the heal
    wrote were root's, so its own check after it found them 'owner uid 0 (deployed as 12345)', and
    the service user could not fix root's files itself. What root's heal writes in the release is
    given to the recorded deployer (before it is recorded: the chown moves the ctime)."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    world = make_world(tmp_path, monkeypatch)
    world.commit({**APP_FILES, "out/app/link.py": "->main.py"})
    assert world.deploy(world.build(), "staging").ok
    release = deployed_by(world, DEPLOYER)
    for mode in ((), ("--full",)):
        assert drift(capsys, "staging", *mode)[0] == 0, mode
    (release / "out/app/main.py").write_text("print('changed')\n")  # as root: no mode stops it
    (release / "out/app/link.py").unlink()
    os.symlink("util.py", release / "out/app/link.py")
    os.rename(release / "out/var", release / "out/gone")  # var/ and its file missing, gone/ added
    os.chmod(release / "out", 0o755)
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, (out, err)
    assert {p.lstat().st_uid for p in [release, *release.rglob("*")]} == {DEPLOYER}
    recorded = stat_records(world)
    for path in ("out/app/main.py", "out/var/.keep", "out/var", "out"):  # taken after the chown
        st = (release / path).lstat()
        assert recorded[st.st_ino][3] == st.st_ctime_ns, path
    for mode in ((), ("--full",), ()):
        assert drift(capsys, "staging", *mode)[0] == 0, mode


def test_root_rebuilds_a_missing_release_for_the_user_who_deployed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service user's release removed whole, rebuilt by root's heal: the new release was root's and
    the stat table made root its deployer, so the service user could neither change nor delete it (its
    next deploy's retention could not make root's directories writable). The deployer the table still
    records gets the release back: every path its, recorded as its, and records taken after the chown."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    import shutil

    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    world = make_world(tmp_path, monkeypatch)
    world.commit({**APP_FILES, "out/app/link.py": "->main.py"})
    assert world.deploy(world.build(), "staging").ok
    release = deployed_by(world, DEPLOYER)
    shutil.rmtree(release)
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0 and "(the release directory is rebuilt)" in out, (out, err)
    assert {p.lstat().st_uid for p in [release, *release.rglob("*")]} == {DEPLOYER}
    layout = EnvLayout(world.env_dir("staging"))
    table = StatTable.load(layout.stat_file, world.ctx().record_key)
    assert table.owner(release.name) == DEPLOYER
    for path in [release, *release.rglob("*")]:
        st = path.lstat()
        if not path.is_symlink():
            assert table.inodes[st.st_ino][3] == st.st_ctime_ns, path
    for mode in ((), ("--full",), ()):
        assert drift(capsys, "staging", *mode)[0] == 0, mode


def test_root_rebuilding_a_release_never_gives_away_what_a_swapped_directory_leads_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The deployer owns ``PATH/releases``: while root's heal rebuilds the missing release in a temporary
    directory there, the deployer renames that directory away and puts a symlink to another directory
    (``/usr``, say) in its place. Root then gave every path of the manifest, found through the link, to
    the deployer (``chown /usr/app``): whatever the link leads to must stay as it was, the heal refused."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    import shutil

    from graven.deploy import materialize

    world = make_world(tmp_path, monkeypatch)
    world.commit(APP_FILES)
    assert world.deploy(world.build(), "staging").ok
    release = deployed_by(world, DEPLOYER)
    shutil.rmtree(release)
    outside = tmp_path / "usr"
    for name in ("app", "var"):
        (outside / name).mkdir(parents=True)
        (outside / name / "main.py").write_text("root's\n")
    owners = {p: p.lstat().st_uid for p in [outside, *outside.rglob("*")]}
    real_build = materialize.build_release

    def build_then_swap(store: Any, manifest: Any, dest: Path, *args: Any, **kwargs: Any) -> Any:
        built = real_build(store, manifest, dest, *args, **kwargs)
        dest.rename(dest.with_name(dest.name + ".moved"))
        dest.symlink_to(outside)
        return built

    monkeypatch.setattr(materialize, "build_release", build_then_swap)
    code, _out, err = run_cli(capsys, "heal", "staging")
    assert {p: p.lstat().st_uid for p in [outside, *outside.rglob("*")]} == owners
    assert code == 1 and "cannot rebuild" in err and len(err.strip().splitlines()) == 1, err


def test_extended_attributes_of_the_release_directory_are_drift_and_healed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Extended attributes were compared for every directory of the release but the release directory
    itself: `setfattr -n user.note` on it was clean, for the quick and the full check, and heal left it."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    assert drift(capsys, "staging")[0] == 0  # a clean snapshot, which must not answer for it either
    with opened_up(release):  # user.* attributes need write access
        os.setxattr(release, "user.note", b"planted")
    for mode in ((), ("--full",), ()):
        code, doc = drift(capsys, "staging", *mode)
        assert code == 1 and found(doc) == {(".", "attributes")}, (mode, doc)
    code, out, err = run_cli(capsys, "heal", "staging", "--plan", "--json")
    assert code == 0 and json.loads(out)["plan"]["mkdirs"] == ["."], (out, err)
    code, out, err = run_cli(capsys, "heal", "staging")
    assert code == 0, err
    assert out.startswith(
        "staging: 1 difference; did remove 0, create or fix 1 directory, write 0 files and 0 symlinks\n"
    ), out  # said 0 directories: fixing the release directory itself was not counted
    assert os.listxattr(release) == []
    for mode in ((), ("--full",), ()):
        assert drift(capsys, "staging", *mode)[0] == 0, mode


def test_heal_never_empties_what_is_mounted_in_the_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Heal removed an added directory's contents whatever was mounted there: a data directory
    bind-mounted into the release (or over one of its directories) was emptied and left 0555, and only
    the rmdir of the mount point failed."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    release = release_of(world)
    data = tmp_path / "data"
    (data / "db").mkdir(parents=True)
    (data / "db/rows").write_text("precious\n")
    (release / "out/app").chmod(0o755)
    (release / "out/app/data").mkdir()
    (release / "out/app").chmod(0o555)
    for point in (release / "out/app/data", release / "out/var"):
        with mounted_bind(data, point):
            code, doc = drift(capsys, "staging", "--full")
            assert code == 1 and (point.relative_to(release).as_posix() + "/db/rows", "added") in found(doc)
            code, _out, err = run_cli(capsys, "heal", "staging")
            assert code == 1 and "is a mount point" in err, err
            assert (data / "db/rows").read_text() == "precious\n"
            assert data.stat().st_mode & 0o777 == 0o755
    code, _out, err = run_cli(capsys, "heal", "staging")  # unmounted: an added directory, removed
    assert code == 0, err
    assert drift(capsys, "staging", "--full")[0] == 0


def test_a_check_records_what_it_saw_before_a_heal_can_change_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check recorded what it found after letting go of the check lock: a heal that ran in between
    recorded `resolved`, and the check's older `found` then landed on top of it (a healed environment
    left recorded as drifting, and a drift entry in the log after the heal's)."""
    import signal
    import sys

    from graven.home import Home
    from graven.service import drift_check
    from graven.service.context import Context
    from graven.service.drift_live import drift_state

    digest = world.build()
    assert world.deploy(digest, "staging").ok
    victim = release_of(world) / "app/main.py"
    victim.chmod(0o644)
    victim.write_text("print('tampered')\n")
    from graven.service.drift_records import record_check as record  # what drift_check calls

    healer: list[subprocess.Popen[str]] = []

    def heal_then_record(ctx: Context, report: Any) -> str | None:
        # a heal starts now: it either runs to its end (the check no longer holds the lock) or says that
        # it waits for the check in flight; then this check records what it saw
        proc = subprocess.Popen(
            [sys.executable, "-m", "graven", "heal", "staging"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        healer.append(proc)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "waiting for the drift checks in flight" in line:
                break
        return record(ctx, report)

    monkeypatch.setattr(drift_check, "record_check", heal_then_record)
    with Context(home=Home(root=world.home)) as ctx:
        [report] = drift_check.check(ctx, ["staging"])
    assert not report.clean
    try:
        assert healer[0].wait(60) == 0
    finally:
        if healer[0].poll() is None:
            healer[0].send_signal(signal.SIGKILL)
        assert healer[0].stderr is not None
        healer[0].stderr.close()
    with Context(home=Home(root=world.home)) as ctx, ctx.db.connect() as conn:
        state = drift_state(conn, "staging")
        last = conn.execute("SELECT entry FROM log_entries ORDER BY idx DESC LIMIT 1").scalar_one()
    assert state is not None and state.keys == "[]", state
    assert (json.loads(last)["event"], json.loads(last)["result"]) == ("drift", "resolved"), last


def test_a_deploy_copies_the_files_of_another_users_release_instead_of_linking_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root deploying after a service user: the unchanged files of the live release (that user's) were
    hard-linked into root's new release, where every path must be root's: `drift --full` named them."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    from graven.deploy.layout import EnvLayout
    from graven.deploy.statdb import StatTable

    world = make_world(tmp_path, monkeypatch)
    try:
        assert world.deploy(world.build(), "staging").ok
        theirs = deployed_by(world, 12345)
        layout = EnvLayout(world.env_dir("staging"))
        key = world.ctx().record_key
        table = StatTable.load(layout.stat_file, key)
        for path in [theirs, *theirs.rglob("*")]:  # as that user's deploy recorded them (after the chown)
            st = path.lstat()
            record = table.inodes.get(st.st_ino)
            if record is not None:
                table.record(st, record[0])
        table.save(layout.stat_file, key)
        assert drift(capsys, "staging", "--full")[0] == 0  # that user's release, as it deployed it
        assert world.deploy(world.version(2), "staging").ok
        ours = release_of(world)
        assert ours != theirs
        assert {p.lstat().st_uid for p in [ours, *ours.rglob("*")]} == {os.geteuid()}
        assert drift(capsys, "staging", "--full")[0] == 0
    finally:
        world.close()
