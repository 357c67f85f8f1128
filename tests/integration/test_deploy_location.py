"""Where an environment may live (a review with a hostile graven.toml and a racing local user): never
in GRAVEN_HOME, never in another live environment's directory or in what graven keeps there (symlinks
resolved), never where another user could change the directory under graven; and a drift check never
reads a release through a link planted at ``PATH/releases``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from graven.errors import ConfigError, InputError
from graven.service.deploy_plan import plan_deploy
from graven.service.drift import check
from graven.service.drift_heal import heal
from helpers_deploy import World, env_toml, remove_deployed, staging_prod


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _layout_names(home: Path) -> list[Path]:
    """What a deploy makes in an environment directory, found anywhere in ``home``."""
    return [p for p in home.rglob("*") if p.name in {"releases", ".graven", "current", "config"}]


@pytest.mark.parametrize("inside", ["objects", "trust/revoked", "."])
def test_an_environment_in_graven_home_is_refused_before_anything_is_made(world: World, inside: str) -> None:
    """An artifact's graven.toml must not turn the store into an environment, or the revocation list
    into a directory (which would silently switch revocation off)."""
    home = world.home
    (home / "trust" / "revoked").write_text("")  # the list exists: it must stay a file
    path = str(home / inside) if inside != "." else str(home)
    digest = world.version(2, env_toml("app", {"x": {"path": path}}))
    with pytest.raises(ConfigError, match="lies in GRAVEN_HOME"):
        plan_deploy(world.ctx(), digest, "x", world.options())
    with pytest.raises(ConfigError, match="lies in GRAVEN_HOME"):
        world.deploy(digest, "x")
    assert _layout_names(home) == []
    assert (home / "trust" / "revoked").is_file()


def test_graven_home_reached_through_a_symlink_is_refused(world: World, tmp_path: Path) -> None:
    (tmp_path / "innocent").symlink_to(world.home)
    digest = world.version(2, env_toml("app", {"x": {"path": str(tmp_path / "innocent" / "objects")}}))
    with pytest.raises(ConfigError, match="lies in GRAVEN_HOME"):
        world.deploy(digest, "x")
    assert _layout_names(world.home) == []


def test_a_path_into_another_environments_release_through_a_symlink_is_refused(world: World) -> None:
    """``b`` at ``a/data/b`` where someone made ``a/data`` a link into a's live release: the paths do
    not overlap as written, but b would write its releases into a's read-only release (and a's heal
    would then delete them)."""
    toml = env_toml("app", {"a": {"path": "a"}, "b": {"path": "a/data/b"}})
    digest = world.version(2, toml)
    assert world.deploy(digest, "a").ok
    a = world.root / "a"
    (a / "data").symlink_to("current/app")
    release = a / os.readlink(a / "current")
    before = _listing(release)
    with pytest.raises(ConfigError, match="overlap where graven keeps releases"):
        world.deploy(digest, "b")
    assert _listing(release) == before
    (report,) = check(world.ctx(), ["a"])
    assert report.clean


def test_a_directory_every_user_may_write_is_refused_on_the_way_and_at_path(
    world: World, tmp_path: Path
) -> None:
    v1 = world.build()
    parent = world.root
    parent.mkdir(parents=True)
    parent.chmod(0o777)  # anyone could rename PATH itself away and put a link there
    with pytest.raises(InputError, match=r"srv is writable by every user \(mode 0777\)"):
        world.deploy(v1, "staging")
    assert not (parent / "staging").exists()
    parent.chmod(0o1777)  # sticky, as /tmp: nobody renames another user's entries
    assert world.deploy(v1, "staging").ok
    staging = parent / "staging"
    staging.chmod(0o1777)  # PATH itself: never, sticky or not
    with pytest.raises(InputError, match=r"staging is writable by every user"):
        world.deploy(world.version(2), "staging")
    staging.chmod(0o755)
    (staging / "releases").chmod(0o777)
    with pytest.raises(InputError, match=r"releases is writable by every user"):
        world.deploy(world.version(3), "staging")
    with pytest.raises(InputError, match=r"releases is writable by every user"):
        heal(world.ctx(), "staging")
    (staging / "releases").chmod(0o755)
    assert world.deploy(world.version(4), "staging").ok


@pytest.mark.needs_root("giving a directory another group needs root")
def test_a_directory_its_group_may_write_is_refused_when_the_group_has_other_members(world: World) -> None:
    """A permissions review: root deployed into a root:team 2775 directory; a team member swapped
    releases/ for a link while the release was written, and root wrote ~4,400 files into, and chmod'ed,
    a directory the member could not write. As sshd: group-writable is writable by others, unless
    the group has no member but the deployer (and root)."""
    import grp

    v1 = world.build()
    parent = world.root
    parent.mkdir(parents=True)
    nogroup = grp.getgrgid(65534).gr_name  # the nobody user's own group: it has a member
    os.chown(parent, 0, 65534)
    parent.chmod(0o2775)
    with pytest.raises(
        InputError, match=rf"srv is writable by its group {nogroup} \(mode 2775\), whose members"
    ):
        world.deploy(v1, "staging")
    assert not (parent / "staging").exists()
    os.chown(parent, 0, 0)  # the root group: no member but root here
    assert world.deploy(v1, "staging").ok
    (parent / "staging" / "releases").chmod(0o775)
    assert world.deploy(world.version(2), "staging").ok
    os.chown(parent / "staging" / "releases", 0, 65534)
    with pytest.raises(InputError, match=r"releases is writable by its group"):
        world.deploy(world.version(3), "staging")


@pytest.mark.needs_root("making a directory another user's needs root")
def test_a_directory_of_another_user_is_refused(world: World) -> None:
    v1 = world.build()
    staging = world.root / "staging"
    staging.mkdir(parents=True)
    os.chown(staging, 65534, 65534)
    with pytest.raises(InputError, match=r"staging belongs to another user \(uid 65534; you are 0\)"):
        world.deploy(v1, "staging")
    assert os.listdir(staging) == []
    os.chown(staging, 0, 0)
    assert world.deploy(v1, "staging").ok


def test_drift_names_a_link_at_releases_and_reads_nothing_through_it(world: World, tmp_path: Path) -> None:
    """A copy of the releases kept elsewhere, linked in: the check must not hash the copy (and call
    the environment clean, or report its edits as the environment's)."""
    world.commit({}, env_toml("app", staging_prod()))
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    (clean,) = check(world.ctx(), ["staging"])
    assert clean.clean
    releases = world.env_dir("staging") / "releases"
    copy = tmp_path / "copy"
    shutil.copytree(releases, copy, symlinks=True)
    os.rename(releases, tmp_path / "moved")
    releases.symlink_to(copy)
    for full in (False, True):
        (report,) = check(world.ctx(), ["staging"], full=full)
        assert [(d.path, d.kind, d.actual) for d in report.differences] == [
            ("releases", "releases", f"symlink to {copy}")
        ]
    with pytest.raises(InputError, match="releases is a symbolic link"):
        heal(world.ctx(), "staging")
    releases.unlink()
    os.rename(tmp_path / "moved", releases)
    (report,) = check(world.ctx(), ["staging"])
    assert report.clean


def test_a_store_object_linked_into_a_release_is_never_vouched_for_or_linked_again(world: World) -> None:
    """Someone (root, or graven's own user) hard-links a loose store object over the same file of a
    release: its content is right, but writing it would change the store. The check before a rollback
    refuses it, so it is neither recorded nor linked into a later release; the release is rebuilt."""
    import random

    from graven.model.digest import sha256_digest
    from graven.service import environments
    from graven.service.deploy import rollback
    from graven.store.local import LOOSE_THRESHOLD, LocalStore

    big = random.Random(9).randbytes(LOOSE_THRESHOLD + 10)
    world.commit({"data/big.bin": big})
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(world.version(2), "staging").ok
    loose = LocalStore.at(world.home / "objects").loose_path(sha256_digest(big))
    old = world.env_dir("staging") / "releases" / v1.removeprefix("sha256:")
    target = old / "data" / "big.bin"
    (old / "data").chmod(0o755)
    target.unlink()
    os.link(loose, target)
    (old / "data").chmod(0o555)
    result = rollback(world.ctx(), "staging", world.options(), to=v1)
    assert result.ok and world.live("staging") == v1
    now = world.env_dir("staging") / "current" / "data" / "big.bin"
    assert os.stat(now).st_ino != os.stat(loose).st_ino
    environments.unhold(world.ctx(), "staging")  # the rollback held it
    assert world.deploy(world.version(3), "staging").ok  # links data/big.bin from the live release
    latest = world.env_dir("staging") / "current" / "data" / "big.bin"
    assert os.stat(latest).st_ino != os.stat(loose).st_ino


def test_a_missing_releases_directory_is_the_release_removed(world: World) -> None:
    """Only something standing at PATH/releases is kind ``releases``; when it is gone, so is the
    release, as drift always said (``removed .``), and heal rebuilds it."""
    assert world.deploy(world.build(), "staging").ok
    remove_deployed(world.env_dir("staging") / "releases")
    (report,) = check(world.ctx(), ["staging"])
    assert [(d.path, d.kind) for d in report.differences] == [(".", "removed")]
    heal(world.ctx(), "staging")
    (report,) = check(world.ctx(), ["staging"])
    assert report.clean


@pytest.mark.needs_root("a link of another user needs root to make")
def test_a_link_of_another_user_on_the_way_is_refused(world: World, tmp_path: Path) -> None:
    """In a sticky directory anyone may make a link: one owned by another user, on the way to PATH,
    could be pointed elsewhere between two of graven's steps."""
    v1 = world.build()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.mkdir()
    (shared / "shop").symlink_to(victim)
    os.lchown(shared / "shop", 65534, 65534)
    digest = world.version(2, env_toml("app", {"x": {"path": str(shared / "shop" / "x")}}))
    with pytest.raises(InputError, match=r"shop is a link of another user \(uid 65534\)"):
        world.deploy(digest, "x")
    assert list(victim.iterdir()) == []
    os.lchown(shared / "shop", 0, 0)
    assert world.deploy(digest, "x").ok  # one's own link in a sticky directory is fine
    assert world.deploy(v1, "staging").ok


def test_a_link_in_a_directory_every_user_may_write_is_refused(world: World, tmp_path: Path) -> None:
    """The link is this user's, but anyone can replace it: the directory holding it is checked as a
    directory on the way, although the resolved path never goes through it."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    target = tmp_path / "target"
    target.mkdir()
    (open_dir / "app").symlink_to(target)
    digest = world.version(2, env_toml("app", {"x": {"path": str(open_dir / "app" / "x")}}))
    with pytest.raises(InputError, match=r"open is writable by every user \(mode 0777\)"):
        world.deploy(digest, "x")
    assert list(target.iterdir()) == []


@pytest.mark.needs_root("a link of another user needs root to make")
def test_a_link_of_another_user_that_only_root_could_replace_is_fine(world: World, tmp_path: Path) -> None:
    """A link is changed by replacing it in its directory: in one that only root may write (checked as
    a directory on the way), whose link it is does not matter (`chown -R` gives links away too)."""
    srv = tmp_path / "srv-root"
    srv.mkdir()
    target = tmp_path / "real"
    target.mkdir()
    (srv / "app").symlink_to(target)
    os.lchown(srv / "app", 65534, 65534)
    digest = world.version(2, env_toml("app", {"x": {"path": str(srv / "app" / "x")}}))
    assert world.deploy(digest, "x").ok
    assert (target / "x" / "current").is_symlink()


def test_a_path_below_a_file_is_refused_as_input_naming_the_file(world: World, tmp_path: Path) -> None:
    """A typo that puts PATH below a file (`/srv/app.conf/staging`) is bad input (exit 2) naming that
    file, as a PATH that is itself a file is, not a failure of the disk underneath graven (exit 1)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    digest = world.version(2, env_toml("app", {"x": {"path": str(blocker / "staging")}}))
    with pytest.raises(InputError, match=f"goes through {blocker}, which is not a directory"):
        plan_deploy(world.ctx(), digest, "x", world.options())
    with pytest.raises(InputError, match=f"goes through {blocker}, which is not a directory"):
        world.deploy(digest, "x")
    assert blocker.read_text() == "not a directory\n"


@pytest.mark.parametrize("below", [False, True])
def test_a_path_through_a_link_to_nothing_is_refused_as_input_naming_the_link(
    world: World, tmp_path: Path, below: bool
) -> None:
    """PATH (or a directory on its way) a symbolic link whose target is gone (an unmounted volume, a
    removed release of another tool) is bad input (exit 2) naming the link and where it points, not
    'cannot write in PATH: No such file or directory' (exit 1); nothing is made at the target."""
    link = tmp_path / "srv"
    link.symlink_to(tmp_path / "unmounted")
    path = link / "staging" if below else link
    digest = world.version(2, env_toml("app", {"x": {"path": str(path)}}))
    expected = f"{link} is a symbolic link to {tmp_path / 'unmounted'}, which does not exist"
    with pytest.raises(InputError, match=expected):
        plan_deploy(world.ctx(), digest, "x", world.options())
    with pytest.raises(InputError, match=expected):
        world.deploy(digest, "x")
    assert not os.path.lexists(tmp_path / "unmounted")


def test_a_recorded_path_that_now_names_someone_elses_directory_is_refused(
    world: World, tmp_path: Path
) -> None:
    """An environment's PATH is a symlink (a volume) that an administrator re-points at a user's
    directory: the recorded path resolves there, but nothing in it is graven's. Adopting it made
    releases there, replaced the user's ``config`` link and ran the hooks in it."""
    vol = tmp_path / "vol1"
    vol.mkdir()
    alice = tmp_path / "alice"
    alice.mkdir()
    (alice / "thesis.tex").write_text("precious\n")
    (alice / "config").symlink_to("thesis.tex")
    link = tmp_path / "app"
    link.symlink_to(vol)
    toml = env_toml("app", {"x": {"path": str(link), "activate": "touch hook-ran"}})
    assert world.deploy(world.version(1, toml), "x").ok
    link.unlink()
    link.symlink_to(alice)
    v2 = world.version(2, toml)
    with pytest.raises(ConfigError, match=r"already holds files graven did not make \(config, thesis.tex\)"):
        plan_deploy(world.ctx(), v2, "x", world.options())
    with pytest.raises(ConfigError, match=r"already holds files graven did not make \(config, thesis.tex\)"):
        world.deploy(v2, "x")
    assert sorted(os.listdir(alice)) == ["config", "thesis.tex"]
    assert os.readlink(alice / "config") == "thesis.tex"


def test_a_recorded_directory_deleted_and_made_again_by_someone_else_is_refused(world: World) -> None:
    """``rm -rf PATH`` without ``graven retire``, then another team's files at that path: the
    environment's record alone must not make them graven's."""
    assert world.deploy(world.build(), "staging").ok
    staging = world.env_dir("staging")
    for path in [staging, *staging.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(staging)
    staging.mkdir()
    (staging / "uploads").mkdir()
    with pytest.raises(ConfigError, match=r"already holds files graven did not make \(uploads\)"):
        world.deploy(world.version(2), "staging")
    assert sorted(os.listdir(staging)) == ["uploads"]


def test_a_dot_graven_that_graven_did_not_make_claims_nothing(world: World, tmp_path: Path) -> None:
    """A ``.graven`` directory with no deploy lock in it (another tool's, an old GRAVEN_HOME named so)
    is no sign that graven deployed there: retention would delete a ``releases/<hex>`` of its owner's."""
    other = tmp_path / "project"
    (other / ".graven").mkdir(parents=True)
    (other / "releases" / ("a" * 64)).mkdir(parents=True)
    (other / "releases" / ("a" * 64) / "notes").write_text("precious\n")
    digest = world.version(2, env_toml("app", {"p": {"path": str(other), "keep": 1}}))
    with pytest.raises(ConfigError, match=r"already holds files graven did not make \(.graven, releases\)"):
        world.deploy(digest, "p")
    assert (other / "releases" / ("a" * 64) / "notes").read_text() == "precious\n"
    assert sorted(os.listdir(other)) == [".graven", "releases"]


def test_a_recorded_directory_holding_only_graven_s_own_names_is_still_deployed_to(world: World) -> None:
    """Its ``.graven`` removed by hand (the witness, the stat table reset): ``current`` and
    ``releases`` are graven's own, so the environment goes on."""
    assert world.deploy(world.build(), "staging").ok
    staging = world.env_dir("staging")
    shutil.rmtree(staging / ".graven")
    assert world.deploy(world.version(2), "staging").ok
