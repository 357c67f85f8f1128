"""The default drift check answered by the snapshot of the last clean check (graven.drift.clean,
graven.service.drift_quick): it is used only when nothing changed, never hides a change, cannot be
forged, and is set aside when anything the verdict depended on changed (trust, config, current)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_drift_cli import CASES, Tamper, drift, found, writable

from graven.drift import clean as clean_mod
from graven.service import drift_check
from helpers_deploy import World, make_world
from helpers_repo import run_cli


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch)
    made.commit({"app/current.py": "->main.py"})
    yield made
    made.close()


class Calls:
    """Counts the full default checks (graven.service.drift_check.check_once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = drift_check.check_once

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(drift_check, "check_once", counting)


def snapshot_path(world: World, env: str = "staging") -> Path:
    return world.env_dir(env) / ".graven" / "drift" / "clean"


def settled(world: World, capsys: pytest.CaptureFixture[str], env: str = "staging") -> str:
    """Build, deploy ``env`` and check until the snapshot of a clean check is written; the digest."""
    digest = world.build()
    assert world.deploy(digest, env).ok
    for _ in range(50):
        assert drift(capsys)[0] == 0
        if snapshot_path(world, env).exists():
            return digest
        time.sleep(0.02)  # records made in the clock tick of the deploy are racy: wait one tick
    raise AssertionError("no snapshot was written after clean checks")


def test_a_clean_environment_is_answered_by_its_snapshot(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = settled(world, capsys)
    calls = Calls(monkeypatch)
    code, doc = drift(capsys, "staging")
    assert code == 0 and calls.count == 0, doc
    report = doc["environments"][0]
    files = sum(1 for e in world.manifest(digest).entries if type(e).__name__ == "FileEntry")
    assert report["clean"] and report["files"] == files and report["hashed"] == 0 and report["note"] is None
    assert report["digest"] == digest and report["mode"] == "fast"
    # the library's checks (graven watch) use it too; --full never does
    from graven.service.drift import check

    assert [r.clean for r in check(world.ctx(), ["staging"])] == [True] and calls.count == 0
    assert drift(capsys, "--full")[0] == 0 and calls.count == 1


def test_the_cli_check_loads_neither_manifest_nor_signing_code(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled(world, capsys)
    probe = (
        "import sys\n"
        "from graven.cli.main import main\n"
        "code = main(['drift', 'staging'])\n"
        "heavy = [m for m in ('graven.service.drift_check', 'graven.model.manifest', 'graven.signing.keys',"
        " 'cryptography', 'graven.core.drift') if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []", out


EXTRA: list[tuple[Tamper, set[tuple[str, str]]]] = []


def chmod_directory(release: Path) -> None:
    (release / "app").chmod(0o755)


def add_directory(release: Path) -> None:
    with writable(release / "app"):
        (release / "app/plugins").mkdir()


def touch_r_directory(release: Path) -> None:
    """Add a file, remove it, and put the directory's times back (its ctime still moves)."""
    before = os.lstat(release / "app")
    with writable(release / "app"):
        (release / "app/x").write_text("x")
        (release / "app/x").unlink()
    os.utime(release / "app", ns=(before.st_atime_ns, before.st_mtime_ns))
    with writable(release / "app"):
        (release / "app/y.py").write_text("y")
    os.utime(release / "app", ns=(before.st_atime_ns, before.st_mtime_ns))


EXTRA = [
    (chmod_directory, {("app", "mode")}),
    (add_directory, {("app/plugins", "added")}),
    (touch_r_directory, {("app/y.py", "added")}),
]


@pytest.mark.parametrize(("tamper", "expected"), CASES + EXTRA, ids=[c[0].__name__ for c in CASES + EXTRA])
def test_every_tampering_after_a_snapshot_is_found(
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tamper: Tamper,
    expected: set[tuple[str, str]],
) -> None:
    settled(world, capsys)
    calls = Calls(monkeypatch)
    tamper((world.env_dir("staging") / "current").resolve())
    code, doc = drift(capsys, "staging")
    assert code == 1 and found(doc) == expected, doc
    assert calls.count >= 1  # the snapshot did not answer
    assert run_cli(capsys, "heal", "staging")[0] == 0
    assert drift(capsys, "staging")[0] == 0


def test_current_and_config_links_are_part_of_the_snapshot(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled(world, capsys)
    env = world.env_dir("staging")
    (env / "config").unlink()
    (env / "config").symlink_to("current/config/prod.toml")
    code, doc = drift(capsys, "staging")
    assert code == 1 and found(doc) == {("config", "config")}
    (env / "config").unlink()
    (env / "config").symlink_to("current/config/staging.toml")
    assert drift(capsys, "staging")[0] == 0
    target = os.readlink(env / "current")
    (env / "current").unlink()
    (env / "current").symlink_to(f"./{target}")  # the same release by another spelling: still drift
    code, doc = drift(capsys, "staging")
    assert code == 1 and found(doc) == {("current", "current")}


def _forge(world: World, genuine: bytes, key: bytes, edit: Path) -> None:
    """Rewrite the snapshot (``genuine``: its bytes as graven wrote them) so that its record of
    ``edit`` is the file's stat now, tagged with ``key``."""
    path = snapshot_path(world)
    snap = clean_mod.decode((world.home / "keys" / "records.hmac").read_bytes(), genuine)
    assert snap is not None
    rel = str(edit.relative_to(edit.parents[1]))
    st = os.lstat(edit)
    records = list(snap.file_records)
    at = 5 * snap.files.index(rel.encode())
    records[at : at + 5] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]
    dir_records = list(snap.dir_records)
    parent = os.lstat(edit.parent)  # its mode was changed and put back: a new ctime
    at = 3 * snap.dirs.index(edit.parent.name.encode())
    dir_records[at : at + 3] = [parent.st_ino, parent.st_mtime_ns, parent.st_ctime_ns]

    def grouped(values: list[int], n: int) -> list[Any]:
        return [tuple(values[i : i + n]) for i in range(0, len(values), n)]

    def text(names: list[bytes]) -> list[str]:
        return [n.decode() for n in names]

    data = clean_mod.encode(
        key,
        snap.binding,
        dirs=text(snap.dirs),
        dir_records=grouped(dir_records, 3),
        files=text(snap.files),
        file_records=grouped(records, 5),
        links=text(snap.links),
        targets=text(snap.targets),
    )
    path.chmod(0o644)
    path.write_bytes(data)


def test_a_snapshot_not_tagged_with_the_homes_key_is_ignored(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled(world, capsys)
    genuine = snapshot_path(world).read_bytes()
    release = (world.env_dir("staging") / "current").resolve()
    target = release / "app/main.py"
    before = target.read_bytes()
    target.parent.chmod(0o755)
    target.chmod(0o644)
    target.write_bytes(b"print('owned')\n"[: len(before)].ljust(len(before), b" "))
    target.chmod(0o444)
    target.parent.chmod(0o555)
    # a snapshot with the changed file's stat under the home's own key would hide it: the tag is
    # what protects (whoever holds the key could as well rewrite GRAVEN_HOME/trust)
    _forge(world, genuine, (world.home / "keys" / "records.hmac").read_bytes(), target)
    assert drift(capsys, "staging")[0] == 0
    _forge(world, genuine, os.urandom(32), target)  # the same under an intruder's key
    code, doc = drift(capsys, "staging")
    assert code == 1 and found(doc) == {("app/main.py", "modified")}


def test_a_change_of_trust_sets_the_snapshot_aside(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settled(world, capsys)
    calls = Calls(monkeypatch)
    trusted = sorted((world.home / "trust").glob("*.pub"))
    assert trusted
    (world.home / "trust" / "copy.pub").write_bytes(trusted[0].read_bytes())  # same key, other files
    assert drift(capsys, "staging")[0] == 0 and calls.count == 1  # verified again, snapshot rewritten
    assert drift(capsys, "staging")[0] == 0 and calls.count == 1  # and used again
    keys = json.loads(run_cli(capsys, "keys", "list", "--json")[1])
    assert run_cli(capsys, "keys", "revoke", keys["trusted"][0]["keyid"])[0] == 0
    code, doc = drift(capsys, "staging")
    assert code == 0 and calls.count == 2
    assert "does not verify" in (doc["environments"][0]["note"] or ""), doc
    code, doc = drift(capsys, "staging")  # no snapshot while the provenance does not verify
    assert calls.count == 3 and doc["environments"][0]["note"]


def test_drift_then_clean_records_found_and_resolved_once(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settled(world, capsys)
    release = (world.env_dir("staging") / "current").resolve()
    with writable(release / "app"):
        (release / "app/extra.py").write_text("x\n")
    assert drift(capsys, "staging")[0] == 1
    with writable(release / "app"):
        (release / "app/extra.py").unlink()
    for _ in range(4):
        assert drift(capsys, "staging")[0] == 0
        time.sleep(0.02)
    with world.ctx().db.connect() as conn:
        events = [
            r.event for r in conn.execute("SELECT event FROM drift_events WHERE env = 'staging' ORDER BY id")
        ]
        keys, count = conn.execute("SELECT keys, count FROM drift_state WHERE env = 'staging'").one()
    assert events == ["found", "resolved"] and (keys, count) == ("[]", 0)
    assert snapshot_path(world).exists()


def test_no_snapshot_while_an_ignored_path_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from helpers_deploy import env_toml, staging_prod

    envs = staging_prod()
    envs["staging"]["ignore"] = ["var/**"]
    world = make_world(tmp_path, monkeypatch, env_toml("app", envs))
    try:
        world.commit({"var/.keep": ""})
        settled(world, capsys)
        release = (world.env_dir("staging") / "current").resolve()
        with writable(release / "var"):
            (release / "var/data.db").write_bytes(b"runtime")
        snapshot_path(world).unlink()
        for _ in range(3):
            assert drift(capsys, "staging")[0] == 0
            time.sleep(0.02)
        assert not snapshot_path(world).exists()  # the listing of var/ is not the manifest's
    finally:
        world.close()
