"""The group of a release is held like its owner: the stat table records the gid of PATH/releases/<hex>
when graven renamed it into place (the deployer's egid, or the group of a setgid environment directory),
drift names every path with another group (a chgrp can give a group access), root's heal gives the
group back and gives what it writes that group, and a deploy or rollback does not take back a release
on disk whose group changed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from test_drift_review import (
    APP_FILES,
    DEPLOYER,
    deployed_by,
    drift,
    found,
    ignoring,
    release_of,
    stat_records,
)

from graven.deploy.layout import EnvLayout
from graven.deploy.statdb import StatTable
from helpers_deploy import World, make_world
from helpers_repo import run_cli
from helpers_services import unavailable

OTHER = 12345  # a group the deployer (root here) is not in


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        unavailable("chgrp to a group one is not in needs root")


def groups(release: Path) -> dict[str, int]:
    """The group of every path of the release, the release directory (".") included."""
    return {".": release.lstat().st_gid} | {
        str(path.relative_to(release)): path.lstat().st_gid for path in release.rglob("*")
    }


def table_of(world: World) -> StatTable:
    return StatTable.load(EnvLayout(world.env_dir("staging")).stat_file, world.ctx().record_key)


def test_a_deploy_records_the_group_of_its_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    try:
        release = release_of(world)
        assert table_of(world).groups == {release.name: os.getegid()}
        assert set(groups(release).values()) == {os.getegid()}
    finally:
        world.close()


def test_a_chgrp_of_a_file_or_a_directory_is_drift_and_heal_gives_the_group_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chgrp` of a deployed file or directory (which may give that group access to it) was clean, for
    the default check and for --full."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    try:
        release = release_of(world)
        before = groups(release)
        assert drift(capsys, "staging")[0] == 0  # a clean snapshot, which must not answer for it either
        os.chown(release / "out/app/main.py", -1, OTHER)
        os.chown(release / "out/var", -1, OTHER)
        expected = {("out/app/main.py", "attributes"), ("out/var", "attributes")}
        for mode in ((), ("--full",), (), ("--full",), ()):  # a full check must not cache them as good
            code, doc = drift(capsys, "staging", *mode)
            assert code == 1 and found(doc) == expected, (mode, doc)
            actual = {d["actual"] for d in doc["environments"][0]["differences"]}
            assert actual == {f"group gid {OTHER} (deployed as {os.getegid()})"}, (mode, actual)
        code, _out, err = run_cli(capsys, "heal", "staging")
        assert code == 0, err
        assert groups(release) == before
        for mode in ((), ("--full",), ()):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
    finally:
        world.close()


def test_a_chgrp_of_the_release_directory_is_drift_of_that_path_alone_and_heal_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The release directory's group is recorded: a `chgrp` of PATH/releases/<hex> alone is named (only
    '.', by both checks), and heal gives it back without touching any other path."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    try:
        release = release_of(world)
        before = groups(release)
        assert drift(capsys, "staging")[0] == 0
        os.chown(release, -1, OTHER)
        for mode in ((), ("--full",), ()):
            code, doc = drift(capsys, "staging", *mode)
            assert code == 1 and found(doc) == {(".", "attributes")}, (mode, doc)
            (diff,) = doc["environments"][0]["differences"]
            assert diff["actual"] == f"group gid {OTHER} (deployed as {os.getegid()})", (mode, diff)
        code, out, err = run_cli(capsys, "heal", "staging")
        assert code == 0, err
        assert "create or fix 1 directory," in out.splitlines()[0], out
        assert groups(release) == before
        for mode in ((), ("--full",), ()):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
    finally:
        world.close()


def test_a_setgid_environment_directory_gives_its_group_to_the_release_and_it_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a setgid environment directory (a team's `chmod g+s`) what a deploy makes takes the directory's
    group, not the deployer's egid: that group is the release's, recorded as such, and clean; a path
    given the deployer's own group then is drift."""
    world = make_world(tmp_path, monkeypatch)
    try:
        world.commit(APP_FILES)
        env = world.env_dir("staging")
        env.mkdir(parents=True)
        os.chown(env, -1, OTHER)
        env.chmod(0o2755)
        assert world.deploy(world.build(), "staging").ok
        release = release_of(world)
        assert set(groups(release).values()) == {OTHER}
        assert table_of(world).groups == {release.name: OTHER}
        assert not release.lstat().st_mode & stat.S_ISGID  # directories are 0555 whatever their parent
        for mode in ((), ("--full",)):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
        os.chown(release / "out/top.py", -1, os.getegid())
        for mode in ((), ("--full",)):
            code, doc = drift(capsys, "staging", *mode)
            assert code == 1 and found(doc) == {("out/top.py", "attributes")}, (mode, doc)
            (diff,) = doc["environments"][0]["differences"]
            assert diff["actual"] == f"group gid {os.getegid()} (deployed as {OTHER})", (mode, diff)
        code, _out, err = run_cli(capsys, "heal", "staging")
        assert code == 0, err
        assert set(groups(release).values()) == {OTHER}
        for mode in ((), ("--full",)):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
    finally:
        world.close()


def test_root_heals_a_release_into_its_recorded_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service user's release healed by root: the files, symlinks and directories root's heal wrote
    kept root's group, so its own check after it named them, and the group lost access it had."""
    world = make_world(tmp_path, monkeypatch)
    try:
        world.commit({**APP_FILES, "out/app/link.py": "->main.py"})
        assert world.deploy(world.build(), "staging").ok
        release = deployed_by(world, DEPLOYER)  # uid and gid 12345, both recorded
        assert table_of(world).group(release.name) == DEPLOYER
        (release / "out/app/main.py").write_text("print('changed')\n")
        (release / "out/app/link.py").unlink()
        os.symlink("util.py", release / "out/app/link.py")
        os.rename(release / "out/var", release / "out/gone")  # var/ and its file missing, gone/ added
        code, out, err = run_cli(capsys, "heal", "staging")
        assert code == 0, (out, err)
        assert set(groups(release).values()) == {DEPLOYER}
        recorded = stat_records(world)
        for path in ("out/app/main.py", "out/var/.keep", "out/var"):  # taken after the chown
            st = (release / path).lstat()
            assert recorded[st.st_ino][3] == st.st_ctime_ns, path
        for mode in ((), ("--full",), ()):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
    finally:
        world.close()


def test_root_rebuilds_a_missing_release_in_its_recorded_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    world = make_world(tmp_path, monkeypatch)
    try:
        world.commit({**APP_FILES, "out/app/link.py": "->main.py"})
        assert world.deploy(world.build(), "staging").ok
        release = deployed_by(world, DEPLOYER)
        shutil.rmtree(release)
        code, out, err = run_cli(capsys, "heal", "staging")
        assert code == 0 and "(the release directory is rebuilt)" in out, (out, err)
        assert set(groups(release).values()) == {DEPLOYER}
        table = table_of(world)
        assert (table.owner(release.name), table.group(release.name)) == (DEPLOYER, DEPLOYER)
        for mode in ((), ("--full",), ()):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
    finally:
        world.close()


@pytest.mark.parametrize("where", [".", "app"])
def test_a_deploy_does_not_take_back_a_release_whose_group_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """A release on disk whose directory, or a directory in it, was given another group is rebuilt by a
    rollback, as one given another owner: taken back, it was recorded as it was, which drift names."""
    world = make_world(tmp_path, monkeypatch)
    try:
        v1 = world.build()
        assert world.deploy(v1, "staging").ok
        assert world.deploy(world.version(2), "staging").ok
        old = world.env_dir("staging") / "releases" / v1.removeprefix("sha256:")
        os.chown(old / where, -1, OTHER)
        code, _out, err = run_cli(capsys, "rollback", "staging", "--root", str(world.root))
        assert code == 0, err
        said = "./: group gid" if where == "." else "app/: group gid"
        assert said in err and "rebuilding it from the store" in err, err
        assert set(groups(old).values()) == {os.getegid()}
        code, doc = drift(capsys, "--full", "staging")
        assert code == 0 and found(doc) == set(), doc
    finally:
        world.close()


def upgraded_from_v4(world: World) -> tuple[EnvLayout, bytes, str]:
    """Staging with v1 then v2 deployed, its stat table recording each release's owner and no group
    (as an environment deployed with graven.deploy-stat/v4): (its layout, the record key, v1's hex)."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(world.version(2), "staging").ok
    layout = EnvLayout(world.env_dir("staging"))
    key = world.ctx().record_key
    table = StatTable.load(layout.stat_file, key)
    table.groups.clear()
    table.save(layout.stat_file, key)
    return layout, key, v1.removeprefix("sha256:")


def test_a_release_without_a_recorded_group_is_held_to_its_directorys_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a release without a recorded owner is held to its directory's owner: with no group recorded
    (a v4 table) the release directory's group is the reference, so the directory itself is never
    named, and a chgrp of anything in it is."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    try:
        release = release_of(world)
        layout = EnvLayout(world.env_dir("staging"))
        key = world.ctx().record_key
        table = StatTable.load(layout.stat_file, key)
        table.groups.clear()
        table.save(layout.stat_file, key)
        for mode in ((), ("--full",)):
            assert drift(capsys, "staging", *mode)[0] == 0, mode
        os.chown(release / "out/top.py", -1, OTHER)
        for mode in ((), ("--full",)):
            code, doc = drift(capsys, "staging", *mode)
            assert code == 1 and found(doc) == {("out/top.py", "attributes")}, (mode, doc)
            (diff,) = doc["environments"][0]["differences"]
            assert diff["actual"] == f"group gid {OTHER} (deployed as {os.getegid()})", (mode, diff)
        code, _out, err = run_cli(capsys, "heal", "staging")
        assert code == 0, err
        assert set(groups(release).values()) == {os.getegid()}
        assert drift(capsys, "staging", "--full")[0] == 0
    finally:
        world.close()


def test_a_release_without_a_recorded_group_gets_one_when_a_deploy_takes_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release deployed before groups were recorded (a v4 table: an owner, no group) has no group
    drift named for its directory alone; a rollback that finds it intact records its group, after which
    a chgrp of its directory is drift."""
    world = make_world(tmp_path, monkeypatch)
    try:
        layout, key, hex1 = upgraded_from_v4(world)
        assert StatTable.load(layout.stat_file, key).groups == {}
        assert run_cli(capsys, "rollback", "staging", "--root", str(world.root))[0] == 0
        assert StatTable.load(layout.stat_file, key).groups == {hex1: os.getegid()}
        os.chown(layout.release(hex1), -1, OTHER)
        code, doc = drift(capsys, "staging")
        assert code == 1 and found(doc) == {(".", "attributes")}, doc
    finally:
        world.close()


def test_a_release_without_a_recorded_group_whose_directory_was_chgrped_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chgrp of the directory of a release that records no group must not make that group the one
    recorded for it: its other paths still have the deployer's, so it does not check out and is
    rebuilt."""
    world = make_world(tmp_path, monkeypatch)
    try:
        layout, key, hex1 = upgraded_from_v4(world)
        assert drift(capsys, "--full", "staging")[0] == 0
        os.chown(layout.release(hex1), -1, OTHER)
        code, _out, err = run_cli(capsys, "rollback", "staging", "--root", str(world.root))
        assert code == 0, err
        assert "group gid" in err and "rebuilding it from the store" in err, err
        assert StatTable.load(layout.stat_file, key).group(hex1) == os.getegid()
        assert set(groups(layout.release(hex1)).values()) == {os.getegid()}
        code, doc = drift(capsys, "--full", "staging")
        assert code == 0 and found(doc) == set(), doc
    finally:
        world.close()


def test_a_deploy_copies_the_files_of_a_release_of_another_group_instead_of_linking_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The live release's unchanged files were hard-linked into the new release whatever their group: a
    release made in another group (a setgid environment directory since made plain, the deployer's
    egid changed) left them in the new one, where every path must have its group."""
    world = make_world(tmp_path, monkeypatch)
    try:
        assert world.deploy(world.build(), "staging").ok
        theirs = release_of(world)
        for path in [theirs, *theirs.rglob("*")]:
            os.lchown(path, -1, OTHER)
        layout = EnvLayout(world.env_dir("staging"))
        key = world.ctx().record_key
        table = StatTable.load(layout.stat_file, key)
        table.set_group(theirs.name, OTHER)
        for path in [theirs, *theirs.rglob("*")]:  # as that deploy recorded them
            st = path.lstat()
            record = table.inodes.get(st.st_ino)
            if record is not None:
                table.record(st, record[0])
        table.save(layout.stat_file, key)
        assert drift(capsys, "staging", "--full")[0] == 0  # that release, as it was deployed
        v2 = world.version(2)
        code, out, err = run_cli(
            capsys, "deploy", v2, "staging", "--plan", "--json", "--root", str(world.root)
        )
        assert code == 0, err
        plan = json.loads(out)
        assert plan["would_link"] == 0 and plan["would_copy"] > 0, plan  # as the deploy does it
        assert world.deploy(v2, "staging").ok
        ours = release_of(world)
        assert ours != theirs
        assert set(groups(ours).values()) == {os.getegid()}
        assert drift(capsys, "staging", "--full")[0] == 0
    finally:
        world.close()


def test_what_a_graven_that_never_compared_groups_verified_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The drift cache and the clean snapshot an older graven wrote vouched for a file it re-hashed after
    a chgrp (it compared no group): trusted after the upgrade, that file was never looked at again."""
    from graven import __version__
    from graven.deploy.attributes import attribute_problem
    from graven.deploy.recordkey import tag
    from graven.drift import scan

    world, _digest = ignoring(tmp_path, monkeypatch, [])
    try:
        release = release_of(world)
        os.chown(release / "out/top.py", -1, OTHER)
        with monkeypatch.context() as old:  # the check of a graven that compared no group
            old.setattr(
                scan,
                "attribute_problem",
                lambda path, st, owner, group=None: attribute_problem(path, st, owner),
            )
            assert drift(capsys, "staging")[0] == 0
        drift_dir = EnvLayout(world.env_dir("staging")).meta / "drift"
        key = world.ctx().record_key
        for name, new, older in (
            ("cache", b"graven.drift-cache/v4\n", b"graven.drift-cache/v3\n"),
            ("clean", f"3/{__version__}".encode(), f"2/{__version__}".encode()),
        ):
            body = (drift_dir / name).read_bytes()[:-32]
            assert body.count(new) == 1, (name, body[:200])
            body = body.replace(new, older)
            (drift_dir / name).write_bytes(body + tag(key, body))
        code, doc = drift(capsys, "staging")
        assert code == 1 and found(doc) == {("out/top.py", "attributes")}, doc
    finally:
        world.close()


def give_other_group_as_recorded(layout: EnvLayout, key: bytes, path: Path) -> None:
    """``path`` given the group OTHER and its stat recorded again, with no group recorded for any
    release: what a graven that compared no group left after it hard-linked a file of a release made
    in another group into the next one (and recorded it, as it records every link)."""
    table = StatTable.load(layout.stat_file, key)
    sha = table.inodes[path.lstat().st_ino][0]
    os.chown(path, -1, OTHER)
    table.record(path.lstat(), sha)
    table.groups.clear()
    table.save(layout.stat_file, key)


def test_a_file_of_another_group_that_the_stat_table_vouches_for_is_drift_for_the_default_check_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its record vouched for the file: the default check said clean where --full named it."""
    world, _digest = ignoring(tmp_path, monkeypatch, [])
    try:
        release = release_of(world)
        layout = EnvLayout(world.env_dir("staging"))
        give_other_group_as_recorded(layout, world.ctx().record_key, release / "out/top.py")
        for mode in (("--full",), ()):
            code, doc = drift(capsys, "staging", *mode)
            assert code == 1 and found(doc) == {("out/top.py", "attributes")}, (mode, doc)
    finally:
        world.close()


def test_a_release_with_a_file_of_another_group_is_not_taken_back_by_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rollback found the release intact by its records alone, recorded its directory's group for it
    and took it back with that file in another group, which --full then named."""
    world = make_world(tmp_path, monkeypatch)
    try:
        layout, key, hex1 = upgraded_from_v4(world)
        linked = next(p for p in layout.release(hex1).rglob("*") if p.is_file() and not p.is_symlink())
        give_other_group_as_recorded(layout, key, linked)
        code, _out, err = run_cli(capsys, "rollback", "staging", "--root", str(world.root))
        assert code == 0, err
        assert "rebuilding it from the store" in err, err
        assert set(groups(layout.release(hex1)).values()) == {os.getegid()}
        code, doc = drift(capsys, "--full", "staging")
        assert code == 0 and found(doc) == set(), doc
    finally:
        world.close()
