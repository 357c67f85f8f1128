"""No key is ever trusted without its audit log entry: `keys generate` and `keys trust` log first, so a
failure (a busy database, a kill) between the two leaves an entry and no effect, never the reverse;
trusting a key again, or in two processes at once, is not an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graven.errors import BackendError
from graven.service import keys as keys_service
from graven.signing import trust
from helpers_repo import run_cli


def _trusted(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "trust").glob("*.pub")) if (home / "trust").is_dir() else []


def _logged(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, err = run_cli(capsys, "log", "--json")
    assert code == 0, err
    return [e["reason"] for e in json.loads(out) if e["event"] == "key-trusted"]


def _busy(*_args: object) -> None:
    raise BackendError("the database is busy")


@pytest.mark.parametrize("command", ["generate", "trust"])
def test_a_trust_whose_log_entry_fails_takes_no_effect(
    command: str,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if command == "trust":
        assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
        code, pem, err = run_cli(capsys, "keys", "export", "ci")
        assert code == 0, err
        (tmp_path / "ci.pub").write_text(pem)
        args = ["keys", "trust", str(tmp_path / "ci.pub")]
    else:
        args = ["keys", "generate", "--name", "second"]
    with monkeypatch.context() as patch:
        patch.setattr(keys_service, "_log", _busy)
        code, _, err = run_cli(capsys, *args)
    assert code == 1, err
    assert _trusted(home) == []  # not trusted, as the log says
    assert _logged(capsys) == []


def test_trusting_a_key_twice_or_at_once_succeeds_and_logs_once(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
    pem = run_cli(capsys, "keys", "export", "ci")[1]
    (tmp_path / "ci.pub").write_text(pem)
    from graven.signing.keys import SigningKey, VerifyingKey
    from graven.signing.keys import write_public_key as real_write  # what trust calls

    def another_process_first(path: Path, key: SigningKey | VerifyingKey) -> None:
        """The same key written by another `keys trust` between our check and our write."""
        real_write(path, key)
        real_write(path, key)  # ours: the file exists now

    with monkeypatch.context() as patch:
        patch.setattr(trust, "write_public_key", another_process_first)
        code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"))
    assert code == 0, err
    assert len(_trusted(home)) == 1
    code, again, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"))
    assert code == 0, err
    assert again == out
    assert len(_logged(capsys)) == 1  # the second trust changed nothing, and says nothing new


def test_trust_and_revoke_report_as_json(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
    (tmp_path / "ci.pub").write_text(run_cli(capsys, "keys", "export", "ci")[1])
    code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"), "--json")
    assert code == 0, err
    trusted = json.loads(out)
    assert trusted["changed"] is True and Path(trusted["path"]).is_file()
    code, out, err = run_cli(capsys, "keys", "revoke", trusted["keyid"], "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "keyid": trusted["keyid"],
        "path": str(home / "trust" / "revoked"),
        "changed": True,
        "known": True,
    }
    assert err == ""
    assert json.loads(run_cli(capsys, "keys", "revoke", trusted["keyid"], "--json")[1])["changed"] is False
    # trusting a revoked key again: said, not a silent "trusted" (a CLI review; verify still refuses)
    code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"), "--json")
    assert code == 0 and json.loads(out)["revoked"] is True
    assert f"warning: key {trusted['keyid']} is revoked in " in err
    code, out, _ = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"))
    assert out.rstrip().endswith(", but it is revoked")


def test_revoking_an_id_no_key_of_this_home_has_is_done_and_said(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id computed by another tool (openssl's hash of a compressed P-256 key is not graven's id)
    revoked nothing this home knows: the line is written all the same (a stolen key may be revoked
    before anything it signed arrives), and a warning says to check the id."""
    assert run_cli(capsys, "keys", "generate", "--name", "ci")[0] == 0
    stranger = "ab" * 32
    code, out, err = run_cli(capsys, "keys", "revoke", stranger, "--json")
    assert code == 0, err
    assert json.loads(out)["known"] is False and json.loads(out)["changed"] is True
    assert err.count("\n") == 1 and f"no key this home knows has the id {stranger}" in err
    assert "graven keys list" in err
    assert stranger in (home / "trust" / "revoked").read_text()
    code, out, err = run_cli(capsys, "keys", "revoke", stranger)
    assert code == 0 and out == f"revoked key {stranger}\n" and "no key this home knows" in err


def test_trusting_a_key_the_home_policy_revokes_says_where(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keys trust read only trust/revoked: a key policy.toml revokes was reported as trusted and
    not revoked, while verify and deploy refuse it; a policy that cannot be read refuses the trust."""
    assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
    (tmp_path / "ci.pub").write_text(run_cli(capsys, "keys", "export", "ci")[1])
    policy = home / "policy.toml"
    policy.write_text('revoked = ["not a key id"]\n')
    code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"))
    assert code == 2 and f"{policy}: revoked entry" in err and _trusted(home) == []
    policy.write_text("")
    code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"), "--json")
    assert code == 0, err
    keyid = json.loads(out)["keyid"]
    assert json.loads(out)["revoked"] is False
    policy.write_text(f'revoked = ["SHA256:{keyid.upper()}"]\n')
    code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"), "--json")
    assert code == 0 and json.loads(out)["revoked"] is True
    assert f"warning: key {keyid} is revoked in {policy}: it stays refused" in err


@pytest.mark.parametrize("command", ["generate", "trust", "revoke"])
@pytest.mark.parametrize("trust_dir", ["world-writable", "dangling-link"])
def test_an_unsafe_trust_directory_is_refused_before_anything_is_logged_or_written(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, trust_dir: str
) -> None:
    """The check ran after the log entry (and for generate, after the key was written): a refused
    trust/ left a logged trust and an untrusted key a build then signed with."""
    import os

    from graven.signing.keys import generate_key

    home.mkdir(mode=0o700)
    if trust_dir == "world-writable":
        (home / "trust").mkdir()
        os.chmod(home / "trust", 0o777)
    else:
        (home / "trust").symlink_to(tmp_path / "config-management-not-yet")
    pub = tmp_path / "k.pub"
    pub.write_bytes(generate_key().public.pem())
    args = {
        "generate": ["keys", "generate"],
        "trust": ["keys", "trust", str(pub)],
        "revoke": ["keys", "revoke", "a" * 64],
    }
    code, _, err = run_cli(capsys, *args[command])
    assert code == 2 and err.startswith("graven: error: ") and err.count("\n") == 1, err
    assert not (home / "keys").exists() or not list((home / "keys").glob("*.key"))
    assert not (home / "graven.db").exists()  # nothing was logged: no database was even made


def test_a_new_home_under_missing_parents_is_made_safe_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under umask 000 the missing parents were made 0777, and then refused as world-writable."""
    import os
    import stat

    home = tmp_path / "deep" / "a" / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    old = os.umask(0)
    try:
        code, _, err = run_cli(capsys, "keys", "generate")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o755
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_a_home_a_build_makes_first_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build signing with GRAVEN_SIGNING_KEY is the first command in a new home: the record key it
    made first came with a home of mode 0755 (its database and store readable by every user)."""
    import os
    import stat

    from helpers_repo import make_repo

    key_home = tmp_path / "key-home"
    monkeypatch.setenv("GRAVEN_HOME", str(key_home))
    assert run_cli(capsys, "keys", "generate")[0] == 0
    home = tmp_path / "new" / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.setenv("GRAVEN_SIGNING_KEY", str(key_home / "keys" / "default.key"))
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(capsys, "build", "-C", str(repo))
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700


def test_the_trust_check_walks_dot_dot_as_the_kernel_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GRAVEN_HOME=safe/link/../h opens pub/h (the link leads into pub/): the check normalised the
    text to safe/h, which does not exist, and checked nothing."""
    import os

    pub = tmp_path / "pub"
    (pub / "sub").mkdir(parents=True)
    os.chmod(pub, 0o777)  # every user may rename what is in it (no sticky bit)
    (pub / "h" / "trust").mkdir(parents=True, mode=0o700)
    (tmp_path / "safe").mkdir()
    (tmp_path / "safe" / "link").symlink_to(pub / "sub")
    monkeypatch.setenv("GRAVEN_HOME", f"{tmp_path}/safe/link/../h")
    code, _, err = run_cli(capsys, "keys", "list")
    assert code == 2 and "is writable by every user" in err and str(pub) in err, err


@pytest.mark.needs_root("giving a file another group needs root")
def test_a_revocation_list_another_group_member_may_write_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A permissions review: with trust/revoked 0664 and a group of several users, another member
    emptied the file and a revoked key verified again. Group-writable trust material is refused
    unless the group has no member but this user (and root)."""
    import os

    assert run_cli(capsys, "keys", "generate", "--name", "second")[0] == 0
    keyid = json.loads(run_cli(capsys, "keys", "list", "--json")[1])["signing"][0]["keyid"]
    assert run_cli(capsys, "keys", "revoke", keyid)[0] == 0
    revoked = home / "trust" / "revoked"
    os.chown(revoked, 0, 65534)  # nogroup: the nobody user's group
    revoked.chmod(0o664)
    code, _, err = run_cli(capsys, "keys", "list")
    assert code == 2 and f"{revoked} is writable by its group" in err and "chmod go-w" in err, err
    os.chown(revoked, 0, 0)
    assert run_cli(capsys, "keys", "list")[0] == 0  # a group of root alone writes nothing new


def test_the_library_logs_every_trust_change_as_the_cli_does(home: Path, tmp_path: Path) -> None:
    """An architecture review: key management lived in the CLI, so a key generated and trusted from
    Python (KeyStore + store_trusted_key) left no key-trusted entry. graven.service.keys does it all."""
    from graven.home import Home
    from graven.service.context import Context
    from graven.service.keys import generate_key, revoke_key, trust_public_key
    from graven.signing.keys import KeyStore

    graven_home = Home(root=home)
    made = generate_key(graven_home, "ci")
    assert made.trusted is not None and made.trusted.is_file()
    other = generate_key(graven_home, "other", "ecdsa-p256", trust=False)
    assert other.trusted is None and oct(other.private_key.stat().st_mode)[-3:] == "600"
    pem = KeyStore(graven_home.keys).export_public("other")
    first, again = trust_public_key(graven_home, pem, "other.pub"), trust_public_key(graven_home, pem, "x")
    assert first.changed and not again.changed and first.keyid == other.keyid
    assert revoke_key(graven_home, f"sha256:{other.keyid}").changed
    assert not revoke_key(graven_home, other.keyid).changed
    assert trust_public_key(graven_home, pem, "other.pub").revoked
    with Context(home=graven_home) as ctx, ctx.db.connect() as conn:
        logged = [(r[0], r[1]) for r in conn.execute("SELECT event, entry FROM log_entries ORDER BY idx")]
    assert [e for e, _ in logged] == ["key-trusted", "key-trusted", "key-revoked"]
    assert made.keyid in logged[0][1] and "from other.pub" in logged[1][1] and other.keyid in logged[2][1]


def test_a_revocation_is_on_disk_when_revoke_returns(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key-revoked entry is committed (fsynced); the line itself was appended without an fsync, so
    a power loss right after `graven keys revoke` said so could keep the entry and lose the
    revocation: the key the operator revoked verified again. The file, and the trust directory that
    names a new one, are fsynced (before the entry is written)."""
    import os
    import stat as stat_module

    from graven.home import Home
    from graven.service.keys import revoke_key

    graven_home = Home(root=home)
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for keyid in ("1" * 64, "2" * 64):  # a new file, then a line appended to it
        synced.clear()
        assert revoke_key(graven_home, keyid).changed
        revoked, directory = os.stat(graven_home.trust / "revoked"), os.stat(graven_home.trust)
        assert stat_module.S_ISREG(revoked.st_mode)
        assert (revoked.st_dev, revoked.st_ino) in synced, keyid
        if keyid.startswith("1"):
            assert (directory.st_dev, directory.st_ino) in synced  # the new name


def test_a_revocation_the_log_refuses_still_takes_effect_and_says_so(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line comes before its log entry: a database that refuses the entry (busy, rolled back) or a
    crash between the two leaves the key revoked and unlogged, never logged as revoked and still
    accepted, and an operator revoking a stolen key is never stopped by the log."""
    from graven.errors import DatabaseBusyError
    from graven.home import Home
    from graven.service import keys
    from graven.service.provenance import read_revoked

    graven_home = Home(root=home)

    def busy(home: Home, event: str, reason: str) -> None:
        assert "e" * 64 in read_revoked(home.trust / "revoked")  # already in effect
        raise DatabaseBusyError("the database is locked")

    monkeypatch.setattr(keys, "_log", busy)
    with pytest.raises(
        DatabaseBusyError, match=r"key e{64} is revoked .*, but its audit log entry could not"
    ):
        keys.revoke_key(graven_home, "e" * 64)
    assert "e" * 64 in read_revoked(graven_home.trust / "revoked")


def test_keys_trust_never_reads_a_huge_file_whole(home: Path, tmp_path: Path) -> None:
    """`keys trust FILE` read the whole file before looking at it: /dev/zero or a huge file given by
    mistake took all memory (a MemoryError traceback under a limit). It is read as every key file is,
    up to 64 KiB, and refused past it (exit 2, one line)."""
    import resource
    import subprocess
    import sys

    huge = tmp_path / "huge.pub"
    with open(huge, "wb") as handle:
        handle.truncate(8 << 30)  # sparse: costs no disk
    limit = 1 << 30

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "graven", "keys", "trust", str(huge)],
        check=False,
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == f"graven: error: {huge} is too large to be a key file\n"
    assert not _trusted(home)
