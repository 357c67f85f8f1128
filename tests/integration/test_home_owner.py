"""A command that writes into GRAVEN_HOME refuses a home of another user, or one group or others may
write. A review ran ``graven build`` as root with ``HOME`` pointing at another user's home (sudo): it
signed with that user's key, left root's files in their store, cache and keys, and broke that user's
next build; ``keys list`` refused, ``build`` only when a ``trust/revoked`` happened to exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graven.errors import BackendError
from graven.home import Home
from graven.model.digest import Digest
from graven.service.artifacts import load_manifest, verify_artifact
from graven.service.context import Context
from helpers_deploy import NOBODY, World, exit_code_as_nobody
from helpers_repo import run_cli

pytestmark = pytest.mark.needs_root("hands the home to another user")


def _give_away(home: Path) -> None:
    for directory, _, files in os.walk(home):
        os.chown(directory, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(directory, name), NOBODY, NOBODY)


def _mine(home: Path) -> list[str]:
    return [
        os.path.join(directory, name)
        for directory, dirs, files in os.walk(home)
        for name in dirs + files
        if os.lstat(os.path.join(directory, name)).st_uid == os.geteuid()
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("build", "-C", "{repo}"),
        ("deploy", "{digest}", "staging", "--root", "{root}"),
        ("keys", "generate", "--name", "mine"),
        ("artifacts",),
        ("status",),
        # walked through with sudo and the user's HOME: `keys list` alone said "chown ~ to yourself
        # or root" (the trust directory's check), a fix that hands the user's home to root
        ("keys", "list"),
    ],
)
def test_root_refuses_another_user_s_home(
    world: World, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    digest = world.build()
    _give_away(world.home)
    values = {"repo": str(world.repo), "digest": digest, "root": str(world.root)}
    code, _, err = run_cli(capsys, *(arg.format(**values) for arg in args))
    assert code != 0
    assert err.count("\n") == 1, err
    assert f"GRAVEN_HOME {world.home} belongs to another user (uid {NOBODY}; you are 0)" in err
    assert "run graven as that user (sudo -u), or set GRAVEN_HOME" in err
    assert _mine(world.home) == []  # nothing of root's left in that user's home
    assert not world.root.exists()


@pytest.mark.parametrize("args", [("import", "{archive}"), ("keys", "generate"), ("keys", "trust", "{pub}")])
def test_root_makes_no_home_inside_another_user_s_directory(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
) -> None:
    """A review: with another user's HOME and no home there yet, root made ~/.local/share/graven (and
    ~/.local, ~/.local/share) as root and filled it: that user's graven, and other programs, could no
    longer write there."""
    digest = world.build()
    archive, pub = tmp_path / "a.tar", tmp_path / "k.pub"
    assert run_cli(capsys, "export", digest, "-o", str(archive))[0] == 0
    pub.write_text(run_cli(capsys, "keys", "export", "default")[1])
    theirs = tmp_path / "alice"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    monkeypatch.delenv("GRAVEN_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(theirs))
    values = {"archive": str(archive), "pub": str(pub)}
    code, _, err = run_cli(capsys, *(arg.format(**values) for arg in args))
    assert code == 2 and err.count("\n") == 1, err
    assert f"would be made in {theirs}, which belongs to another user (uid {NOBODY})" in err
    assert os.listdir(theirs) == []


def test_a_home_its_group_may_write_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused when the group has a member besides this user and root (nogroup: the nobody user's);
    a group of root alone (as a per-user group under umask 002) lets nobody else in."""
    import grp

    world.home.chmod(0o770)
    os.chown(world.home, os.geteuid(), 65534)
    code, _, err = run_cli(capsys, "build", "-C", str(world.repo))
    assert code != 0
    nogroup = grp.getgrgid(65534).gr_name
    assert f"GRAVEN_HOME {world.home} is writable by its group {nogroup} (" in err and "(mode 0770)" in err
    assert f"chmod go-w {world.home}" in err
    assert not (world.home / "objects").exists()
    os.chown(world.home, os.geteuid(), 0)
    code, _, err = run_cli(capsys, "build", "-C", str(world.repo))
    assert code == 0, err


@pytest.mark.parametrize("name", ["keys", "log", "cache"])
def test_a_private_directory_others_may_write_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Only the home itself was checked: with the home 0755 and keys/ (log/, cache/) opened to 0777,
    another user could plant a signing key, a record key, a log key or a memo of "verified"
    signatures there, which graven (run as root, too) then used. Refused, naming the directory."""
    code, _, err = run_cli(capsys, "build", "-C", str(world.repo))
    assert code == 0, err
    private = world.home / name
    private.mkdir(exist_ok=True)
    world.home.chmod(0o755)
    private.chmod(0o777)
    code, _, err = run_cli(capsys, "build", "-C", str(world.repo))
    assert code == 2, err
    assert f"{private} is writable by every user (mode 0777)" in err and f"chmod 700 {private}" in err
    assert err.count("\n") == 1
    private.chmod(0o700)
    code, _, err = run_cli(capsys, "build", "-C", str(world.repo))
    assert code == 0, err


def test_root_s_own_home_is_fine(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "build", "-C", str(world.repo))
    assert code == 0, err
    assert out.strip()


def test_a_user_who_cannot_write_the_home_still_reads_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's home this user may only read is not refused: nothing would be written there."""
    digest = world.build()
    world.home.chmod(0o755)  # shared for reading (graven makes a home 0700)
    monkeypatch.chdir(world.home)  # nobody cannot walk to the test's directory: /proc/self/cwd is the home

    def read() -> int:
        from graven.home import check_home

        home = Path("/proc/self/cwd")
        check_home(home)
        with Context(home=Home(root=home)) as ctx:
            manifest = load_manifest(ctx, Digest.parse(digest))  # the store, as verify reads it
        return 0 if str(manifest.digest) == digest else 3

    assert exit_code_as_nobody(read) == 0


@pytest.mark.parametrize("missing", ["objects/tmp", "objects/sha256"])
def test_a_home_this_user_cannot_write_is_read_without_its_empty_store_directories(
    world: World, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """A review: a home restored or copied without the store's empty directories (a backup that
    leaves out ``tmp/``), on a read-only mount or another user's, could not be read: `show`, `verify`
    and `export` failed with "cannot create the object store ... (objects/tmp)", though reading needs
    none of them."""
    digest = world.build()
    world.home.chmod(0o755)  # shared for reading (graven makes a home 0700)
    (world.home / missing).rmdir()
    monkeypatch.chdir(world.home)  # nobody cannot walk to the test's directory: /proc/self/cwd is the home

    def read() -> int:
        home = Path("/proc/self/cwd")
        with Context(home=Home(root=home)) as ctx:
            report = verify_artifact(ctx, Digest.parse(digest))  # every object re-hashed, as verify
            if report.objects_checked < 2 or report.problems:
                return 3
            assert ctx.store.clean_tmp() == 0  # a build's first step: nothing to clean
            try:  # a write names what stops it, as in a home with all its directories
                ctx.store.put(b"new")
            except BackendError as exc:
                return 0 if str(exc).endswith("/objects: Permission denied") else 4
        return 5

    assert exit_code_as_nobody(read) == 0
    assert not (world.home / missing).exists()
