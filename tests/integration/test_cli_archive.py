"""``graven export`` writes deterministic archives that GNU tar reads; ``graven import`` round-trips them
and refuses hostile ones by entry name."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from conftest import COMMIT_EPOCH, Executable, Symlink, assert_cli_error, commit_all
from helpers_services import require_tool

Run = Callable[..., tuple[int, str, str]]

LONG_DIR = "very/" + "long-directory-name-" * 4 + "/nested"
REPO_FILES: dict[str, bytes | str | Symlink | Executable] = {
    "README.md": "# shop\n",
    "app/main.py": "print('hi')\n",
    "app/current": Symlink("main.py"),
    "app/up": Symlink("../README.md"),
    "bin/run": Executable("#!/bin/sh\necho run\n"),
    "data/empty.txt": b"",
    "data/random.bin": random.Random(3).randbytes(300_000),
    "data/large.bin": random.Random(4).randbytes((1 << 20) + 5),  # loose in the store
    "caf\u00e9/na\u00efve.txt": "unicode name\n",
    f"{LONG_DIR}/file-with-a-long-name-to-need-a-pax-header.txt": "long\n",
    "link-to-dir": Symlink("app"),
}
SUFFIXES = (".tar", ".tar.gz", ".tar.zst")


def _tar_bytes(path: Path) -> bytes:
    """The uncompressed tar stream of an exported archive."""
    data = path.read_bytes()
    if path.name.endswith(".tar.zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    if path.name.endswith(".tar.gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _gnu_tar(*args: str | Path, zstd: bool = False) -> str:
    if zstd:
        require_tool("zstd")  # GNU tar's --zstd runs it
    cmd = ["tar", *(["--zstd"] if zstd else []), *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


@pytest.fixture
def artifact(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> tuple[Path, str]:
    repo = make_repo(tmp_path / "repo", REPO_FILES)
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    return repo, out.splitlines()[-1]


def _export(run_cli: Run, digest: str, out: Path) -> Path:
    code, stdout, err = run_cli("export", digest, "-o", out)
    assert code == 0, err
    assert out.is_file(), stdout
    return out


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_export_is_deterministic_and_gnu_tar_reads_it(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path, suffix: str
) -> None:
    repo, digest = artifact
    first = _export(run_cli, digest, tmp_path / f"one{suffix}")
    second = _export(run_cli, digest[:16], tmp_path / f"two{suffix}")  # via a prefix, too
    assert first.read_bytes() == second.read_bytes()

    zstd = suffix == ".tar.zst"
    listing = _gnu_tar("-tvf", first, zstd=zstd)
    assert "app/main.py" in listing and "app/current -> main.py" in listing
    dest = tmp_path / "extracted"
    dest.mkdir()
    _gnu_tar("-xf", first, "-C", dest, zstd=zstd)
    _assert_same_tree(repo, dest)


def _pax_name(nbytes: int, tag: str) -> str:
    """A path of ``nbytes`` UTF-8 bytes that needs a pax ``path`` record (it is not ASCII), in
    components short enough for any file system."""
    head = f"pax-{tag}/" + ("d" * 199 + "/") * (nbytes // 200)
    rest = nbytes - len(head.encode()) - 2
    assert 0 <= rest <= 250
    return head + "\u00e9" + "a" * rest


# Names whose record " path=NAME\n" plus its decimal length is 99 and 999 bytes (the longest with 2 and 3
# digits), and one byte longer: 101 and 1001, where the length's own digits carry it past the boundary.
PAX_BOUNDARY = {
    _pax_name(nbytes, str(record)): record
    for nbytes, record in ((90, 99), (91, 101), (989, 999), (990, 1001))
}


def test_pax_records_at_a_digit_boundary_are_read_by_gnu_tar(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {name: f"{record}\n" for name, record in PAX_BOUNDARY.items()})
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    archive = _export(run_cli, out.splitlines()[-1], tmp_path / "pax.tar")
    listing = set(_gnu_tar("-tf", archive).splitlines())
    assert set(PAX_BOUNDARY) <= listing
    dest = tmp_path / "extracted"
    dest.mkdir()
    _gnu_tar("-xf", archive, "-C", dest)
    _assert_same_tree(repo, dest)
    data = archive.read_bytes()
    for name, record in PAX_BOUNDARY.items():  # the names do hit the boundaries
        at = data.find(b"%d path=%s\n" % (record, name.encode()))
        assert at > 0 and at % 512 == 0, (record, at)  # the whole body of a pax header of its own


def _tracked(repo: Path) -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout.decode()
    return {p for p in out.split("\0") if p}


def _assert_same_tree(repo: Path, dest: Path) -> None:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.add(os.path.relpath(os.path.join(dirpath, name), dest))
    assert found == _tracked(repo)
    for rel in found:
        ours, theirs = repo / rel, dest / rel
        if ours.is_symlink():
            assert theirs.is_symlink(), rel
            assert os.readlink(theirs) == os.readlink(ours), rel
            continue
        assert not theirs.is_symlink() and theirs.is_file(), rel
        assert theirs.read_bytes() == ours.read_bytes(), rel
        assert bool(theirs.stat().st_mode & stat.S_IXUSR) == bool(ours.stat().st_mode & stat.S_IXUSR), rel


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_archive_entries_are_normalized_and_sorted(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path, suffix: str
) -> None:
    repo, digest = artifact
    archive = _export(run_cli, digest, tmp_path / f"a{suffix}")
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(archive))) as tar:
        members = tar.getmembers()
        claims = json.loads(tar.pax_headers["comment"])
    assert claims["digest"] == digest
    assert claims["source_date_epoch"] == COMMIT_EPOCH
    names = [m.name.rstrip("/") for m in members]
    assert len(names) == len(set(names))
    for member in members:
        assert member.mtime == COMMIT_EPOCH, member.name
        assert (member.uid, member.gid) == (0, 0), member.name
        assert (member.uname, member.gname) == ("", ""), member.name
        if member.isdir():
            assert member.mode == 0o755, member.name
        elif member.issym():
            assert member.mode == 0o777, member.name
        else:
            assert member.isreg(), member.name
            assert member.mode == (0o755 if member.name == "bin/run" else 0o644), member.name
    leaves = [m.name for m in members if not m.isdir()]
    assert leaves == sorted(leaves, key=lambda n: n.encode())
    assert set(leaves) == _tracked(repo)
    position = {name: i for i, name in enumerate(names)}
    for name in names:  # every directory comes before everything below it
        parts = name.split("/")
        for depth in range(1, len(parts)):
            assert position["/".join(parts[:depth])] < position[name], name


def test_same_artifact_exports_the_same_bytes_from_another_home(
    artifact: tuple[Path, str],
    run_cli: Run,
    tmp_path: Path,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, digest = artifact
    ours = _export(run_cli, digest, tmp_path / "ours.tar.zst")
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("elsewhere")))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    assert out.splitlines()[-1] == digest
    theirs = _export(run_cli, digest, tmp_path / "theirs.tar.zst")
    assert theirs.read_bytes() == ours.read_bytes()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_import_round_trips_to_the_same_digest(
    artifact: tuple[Path, str],
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    _, digest = artifact
    archive = _export(run_cli, digest, tmp_path / f"shop{suffix}")
    other = tmp_path / "second-home"
    monkeypatch.setenv("GRAVEN_HOME", str(other))
    code, out, err = run_cli("import", archive)
    assert code == 0, err
    assert out.splitlines()[-1] == digest

    code, out, err = run_cli("show", digest, "--json")
    assert code == 0, err
    shown = json.loads(out)["artifact"]
    assert shown["name"] == "demo"
    assert shown["source_date_epoch"] == COMMIT_EPOCH
    code, out, _ = run_cli("verify", "--json", digest)
    assert json.loads(out)["problems"] == []
    # Importing again changes nothing; exporting from the second home gives the very same bytes.
    code, out, err = run_cli("import", "--json", archive)
    assert code == 0, err
    assert json.loads(out)["digest"] == digest
    again = _export(run_cli, digest, tmp_path / f"again{suffix}")
    assert again.read_bytes() == archive.read_bytes()


def test_importing_a_recorded_digest_under_another_name_says_it_keeps_its_name(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path
) -> None:
    """A docs review: `import --name third --json` printed "third" while the home kept the name it had
    recorded first (what artifacts and show say): scripts read a name the home does not have."""
    _, digest = artifact
    archive = _export(run_cli, digest, tmp_path / "shop.tar")
    code, out, err = run_cli("import", archive, "--name", "third", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "demo"
    assert f"warning: {digest[7:19]} is already recorded as demo; it keeps that name (not third)" in err
    code, out, _ = run_cli("show", digest, "--json")
    assert json.loads(out)["artifact"]["name"] == "demo"


def _export_attested(run_cli: Run, digest: str, archive: Path) -> tuple[Path, Path]:
    """Export ``digest`` to ``archive`` with its attestation beside it (shop.intoto.json)."""
    envelope = archive.with_name("shop.intoto.json")
    code, _, err = run_cli("export", digest, "-o", archive, "--attestation", envelope)
    assert code == 0, err
    return archive, envelope


def _trusting_home(graven_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch to a second, empty home that trusts the keys the first one trusts."""
    other = tmp_path / "second-home"
    shutil.copytree(graven_home / "trust", other / "trust")
    monkeypatch.setenv("GRAVEN_HOME", str(other))


def _without_header(archive: Path, plain: Path) -> Path:
    """``archive`` as another tool's tar of the same files: without graven's global header."""
    with tarfile.open(archive) as src, tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():  # tarfile copies the global header's records into each member
            member.pax_headers = {k: v for k, v in member.pax_headers.items() if k != "comment"}
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return plain


def test_import_with_attestation_verifies_in_a_home_that_trusts_the_key(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar.gz")
    _trusting_home(graven_home, tmp_path, monkeypatch)
    code, out, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0, err
    assert out.splitlines()[-1] == digest
    code, out, err = run_cli("verify", digest)
    assert code == 0, err
    assert out.startswith(f"ok {digest}")
    code, out, err = run_cli("log", "--json")
    assert code == 0 and "with provenance signed by trusted key" in out, out


def test_import_with_an_attestation_no_key_here_verifies_says_so(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was stored and logged "with provenance" whatever its signature: the signer is now checked at
    import, said when no key of the home verifies it, and the log says which."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar.gz")
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home-without-trust"))
    code, out, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0, err
    assert "graven: warning: " in err and "until this home trusts its signer" in err, err
    code, out, err = run_cli("log", "--json")
    assert code == 0 and "with provenance no key of this home verifies" in out, out
    assert run_cli("verify", digest)[0] == 1


def _changed_envelope(envelope: Path) -> None:
    """Change the signed statement (its revision) and keep the signature: a tampered envelope that
    still names the artifact."""
    doc = json.loads(envelope.read_text())
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["revision"] = "evil"
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    envelope.write_text(json.dumps(doc))


def _nothing_stored(home: Path) -> list[str]:
    objects = home / "objects"
    return sorted(
        str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file() and "tmp" not in p.parts
    )


@pytest.mark.parametrize("case", ["tampered", "revoked"])
def test_import_refuses_a_tampered_or_revoked_attestation_and_stores_nothing(
    artifact: tuple[Path, str],
    graven_home: Path,
    *,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """Trusting a key again cannot help with either (its signature does not match the statement, or
    the key is revoked): the import said "stored ... until this home trusts its signer (graven keys
    trust KEY.pub)". As verify does, the envelope is refused, and with it the import: nothing stored
    or recorded, as for an envelope of another artifact."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar.gz")
    _trusting_home(graven_home, tmp_path, monkeypatch)
    second = tmp_path / "second-home"
    if case == "tampered":
        _changed_envelope(envelope)
    else:
        keyid = next((graven_home / "trust").glob("*.pub")).stem
        (second / "trust" / "revoked").write_text(f"{keyid}\n")
    code, _, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 1 and err.count("\n") == 1, err
    assert "keys trust" not in err and "nothing was imported" in err, err
    wanted = "bad signature" if case == "tampered" else "signed by revoked key"
    assert err.startswith(f"graven: error: {envelope}: {wanted}"), err
    assert _nothing_stored(second) == [], _nothing_stored(second)
    assert run_cli("show", digest)[0] == 2
    # without the attestation the archive imports (unsigned)
    code, _, err = run_cli("import", archive)
    assert code == 0, err


# -- hostile archives ------------------------------------------------------------------------------


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


HOSTILE: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]] = {
    "absolute-path": ([_file("ok.txt"), _file("/etc/cron.d/evil")], "/etc/cron.d/evil"),
    "dotdot-leading": ([_file("../evil.txt")], "../evil.txt"),
    "dotdot-inside": ([_file("a/b/../../../evil.txt")], "a/b/../../../evil.txt"),
    "symlink-escapes": ([_file("ok.txt"), _link("escape", "../x")], "escape"),
    "symlink-escapes-deep": ([_link("a/b/up", "../../../etc/passwd")], "a/b/up"),
    "symlink-chain": ([_link("a", "."), _link("b", "a/..")], "b"),
    "symlink-absolute": ([_link("passwd", "/etc/passwd")], "passwd"),
    "char-device": ([_special("dev/null", tarfile.CHRTYPE)], "dev/null"),
    "block-device": ([_special("dev/sda", tarfile.BLKTYPE)], "dev/sda"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "pipe"),
    "hard-link": ([_file("a.txt"), _link("b.txt", "a.txt", tarfile.LNKTYPE)], "b.txt"),
    "duplicate": ([_file("a.txt", b"one"), _file("a.txt", b"two")], "a.txt"),
    "duplicate-dot-slash": ([_file("a.txt", b"one"), _file("./a.txt", b"two")], "a.txt"),
    "below-symlink": ([_dir("d"), _file("d/f"), _link("l", "d"), _file("l/x")], "l/x"),
    "below-file": ([_file("f"), _file("f/x")], "f/x"),
    # tar takes a name ending in / for a directory's (GNU tar makes one, then reads the data as headers)
    "file-named-as-directory": ([_file("ok"), _file("d/", b"data")], "d/: only a directory's name"),
    "symlink-named-as-directory": ([_file("ok"), _link("s/", "ok")], "s/: only a directory's name"),
    "control-character": ([_file("bad\x01name.txt")], "bad"),
    # a .git/config in a release makes any git run there execute what it names (core.fsmonitor)
    "dotgit-config": (
        [_file("ok.txt"), _file(".git/config", b"[core]\n\tfsmonitor = touch /tmp/pwned\n")],
        ".git/config: a path through .git",
    ),
    "dotgit-any-case-deep": ([_file("app/.GiT/HEAD")], "app/.GiT/HEAD: a path through .git"),
    "dotgit-dot-slash": ([_file("ok.txt"), _file("./.git/config")], ".git/config: a path through .git"),
    "dotgit-empty-dir": ([_file("ok.txt"), _dir("app/.git")], "app/.git: a path through .git"),
    "dotgit-file": ([_file("ok.txt"), _file(".git", b"gitdir: /srv/repo\n")], ".git: a path through .git"),
    "dotgit-symlink": ([_dir("repo"), _file("repo/HEAD"), _link(".git", "repo")], ".git: a path through"),
    # names git takes for .git on Windows or macOS: unpacked there, they are a .git (core.paths.dotgit_reason)
    "dotgit-ntfs-short-name": ([_file("a/GIT~1/config")], "a/GIT~1/config: a path through .git ('GIT~1' is"),
    "dotgit-ntfs-trailing-dot": ([_file(".git./config")], ".git./config: a path through .git (Windows drops"),
    "dotgit-ntfs-trailing-space": ([_dir(".git ")], ".git : a path through .git (Windows drops"),
    "dotgit-ntfs-stream": (
        [_file(".git::$INDEX_ALLOCATION/config")],
        ".git::$INDEX_ALLOCATION/config: a path through .git ('.git::$INDEX_ALLOCATION' names it",
    ),
    "dotgit-ntfs-backslash": (
        [_file("a\\.git\\config")],
        "a\\.git\\config: a path through .git (Windows splits",
    ),
    "dotgit-hfs-ignorable": ([_file(".g\u200cit/HEAD")], "a path through .git (macOS ignores U+200C in"),
    # a symlink git takes for .gitmodules: git would read a checkout's submodules through it
    "gitmodules-symlink": (
        [_file("x"), _link(".gitmodules", "x")],
        ".gitmodules: a symlink named .gitmodules",
    ),
    "gitmodules-symlink-short-name": (
        [_file("x"), _link("sub/GITMOD~1", "../x")],
        "sub/GITMOD~1: a symlink named .gitmodules ('GITMOD~1' is its short (8.3) name on Windows)",
    ),
    "long-linkname": (  # 4097 bytes that would resolve to f: refused for the length alone
        [_file("f"), _link("l", "./" * 2048 + "f")],
        "l: link target longer than 4096 bytes",
    ),
}


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], **kwargs: object) -> Path:
    with tarfile.open(path, "w", **kwargs) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _assert_refused(run_cli: Run, archive: Path, needle: str, code_expected: int = 2) -> str:
    code, out, err = run_cli("import", archive)
    assert code == code_expected, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], err
    code, out, _ = run_cli("artifacts", "--json")
    assert code == 0 and json.loads(out) == []  # nothing was recorded
    return lines[0]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_naming_the_entry(
    graven_home: Path, tmp_path: Path, run_cli: Run, case: str
) -> None:
    members, needle = HOSTILE[case]
    archive = _write_tar(tmp_path / f"{case}.tar", members, format=tarfile.PAX_FORMAT)
    _assert_refused(run_cli, archive, needle)


def test_a_git_path_is_refused_saying_what_to_do(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    """An export of an artifact an earlier graven built with a .git path holds one too: the refusal
    says to build it again, not that graven export never wrote it."""
    archive = _write_tar(
        tmp_path / "x.tar", [_file("ok.txt"), _file("a/.git/config")], format=tarfile.PAX_FORMAT
    )
    line = _assert_refused(run_cli, archive, "a/.git/config: a path through .git")
    assert line.endswith("an artifact an earlier graven built with one must be built again without it"), line


def test_names_that_only_look_like_git_import(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    names = [".gitignore", ".github/workflows/ci.yml", "vendor/lib.git/x", "git/config", ".gitmodules"]
    # git takes none of these for .git (git~1 only: .git is a clone's first entry), nor .gitignore as a
    # symlink for .gitmodules (a file .gitmodules is one git reads and checks)
    names += ["git~2/x", "GIT~11/x", ".gitx/y", ".git x/z", "\u0147it", ".g\u200cit./w"]
    members = [_file(name) for name in names] + [_link("links/.gitignore", "../.gitignore")]
    archive = _write_tar(tmp_path / "x.tar", members, format=tarfile.PAX_FORMAT)
    code, out, err = run_cli("import", "--json", archive)
    assert code == 0, err
    code, out, err = run_cli("show", json.loads(out)["digest"], "--json", "--files")
    assert code == 0, err
    assert sorted(e["path"] for e in json.loads(out)["entries"]) == sorted([*names, "links/.gitignore"])


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_hostile_entry_is_refused_inside_compressed_archives(
    graven_home: Path, tmp_path: Path, run_cli: Run, compress: str
) -> None:
    raw = _write_tar(tmp_path / "raw.tar", [_file("ok"), _link("out", "../../x")]).read_bytes()
    if compress == "gz":
        import gzip

        data, name = gzip.compress(raw), "evil.tar.gz"
    else:
        data, name = zstandard.ZstdCompressor().compress(raw), "evil.tar.zst"
    archive = tmp_path / name
    archive.write_bytes(data)
    _assert_refused(run_cli, archive, "out")


def test_non_utf8_entry_name_is_refused(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    archive = _write_tar(
        tmp_path / "latin1.tar",
        [_file("ok.txt"), _file("\udcff.txt")],
        format=tarfile.USTAR_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    )
    assert b"\xff.txt\0" in archive.read_bytes()
    _assert_refused(run_cli, archive, "xff.txt")


def test_ustar_names_are_read_as_utf8_whatever_the_locale(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ustar (or GNU tar's default format) name field holds the name's bytes: tarfile decodes them
    with the file system encoding, which a library caller under a Latin-1 locale has (the CLI alone
    starts again in UTF-8 mode): "café" was imported as "cafÃ©", another artifact, without a word."""
    archive = _write_tar(
        tmp_path / "ustar.tar",
        [_file("caf\u00e9.txt", b"one"), _link("l\u00efnk", "caf\u00e9.txt")],
        format=tarfile.USTAR_FORMAT,
        encoding="utf-8",
    )
    assert "caf\u00e9.txt\0".encode() in archive.read_bytes()  # no pax header: the ustar field's bytes
    code, out, err = run_cli("import", "--json", archive)
    assert code == 0, err
    digest = json.loads(out)["digest"]
    monkeypatch.setattr(tarfile.TarFile, "encoding", "iso8859-1")  # what Python takes from such a locale
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "latin1-home"))
    code, out, err = run_cli("import", "--json", archive)
    assert code == 0, err
    assert json.loads(out)["digest"] == digest
    code, out, err = run_cli("show", digest, "--json", "--files")
    assert code == 0, err
    assert {e["path"] for e in json.loads(out)["entries"]} == {"caf\u00e9.txt", "l\u00efnk"}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_archive_is_refused(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    _, digest = artifact
    archive = _export(run_cli, digest, tmp_path / f"full{suffix}")
    data = archive.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "import-home"))
    _assert_refused(run_cli, cut, str(cut))


def test_archive_cut_between_members_is_refused(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tar cut exactly at a block boundary reads as a shorter, well-formed stream: the digest claimed
    in its header no longer matches, and the import must refuse it."""
    _, digest = artifact
    data = _export(run_cli, digest, tmp_path / "full.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: offsets[len(offsets) // 2]])
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "import-home"))
    code, out, err = run_cli("import", cut)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("graven: error: "), err
    assert str(cut) in err
    code, out, _ = run_cli("artifacts", "--json")
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.txt", b"just some text, not an archive\n" * 40),
        ("empty.tar", b""),
        ("garbage.tar.gz", b"\x1f\x8b" + bytes(range(256)) * 4),
        ("garbage.tar.zst", b"\x28\xb5\x2f\xfd" + hashlib.sha256(b"x").digest() * 8),
    ],
)
def test_non_archive_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, name: str, data: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    _assert_refused(run_cli, path, str(path))


def test_missing_archive_is_refused(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    _assert_refused(run_cli, tmp_path / "nope.tar", "nope.tar")


STEPS_TOML = """\
[artifact]
name = "generated"

[build]
steps = [
    "mkdir -p out/empty/deeper out/sub out/keep && echo hi > out/sub/f",
    ": > out/sub/x && chmod 755 out/sub/x",
    "ln -s sub/f out/link && ln -s empty/deeper out/to-empty",
]
outputs = ["out/"]
"""


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_directories_round_trip(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    require_tool("bwrap")  # its pipeline has build steps
    """A build output with an empty directory nested in an otherwise empty one (out/empty/deeper)."""
    repo = make_repo(tmp_path / "repo", {"src.txt": "source\n"}, STEPS_TOML)
    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    digest = json.loads(out)["digest"]
    code, out, _ = run_cli("show", digest, "--json", "--files")
    entries = {e["path"]: e["type"] for e in json.loads(out)["entries"]}
    assert entries == {
        "out/empty/deeper": "dir",
        "out/keep": "dir",
        "out/link": "symlink",
        "out/to-empty": "symlink",
        "out/sub/f": "file",
        "out/sub/x": "file",
    }
    archive = _export(run_cli, digest, tmp_path / f"gen{suffix}")
    dest = tmp_path / "extracted"
    dest.mkdir()
    _gnu_tar("-xf", archive, "-C", dest, zstd=suffix == ".tar.zst")
    assert (dest / "out/empty/deeper").is_dir() and list((dest / "out/empty/deeper").iterdir()) == []
    assert (dest / "out/keep").is_dir()
    assert os.readlink(dest / "out/to-empty") == "empty/deeper"

    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "second-home"))
    code, out, err = run_cli("import", archive)
    assert code == 0, err
    assert out.splitlines()[-1] == digest


def _pax_header(records: bytes, declared: int | None = None) -> bytes:
    """An extended header member by hand: its header block and its (padded) records."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(records) if declared is None else declared
    head = info.tobuf(format=tarfile.USTAR_FORMAT)
    return head + records + bytes(-len(records) % tarfile.BLOCKSIZE)


def _raw_archive(path: Path, *parts: bytes) -> Path:
    member = _file("f.txt")[0].tobuf(format=tarfile.USTAR_FORMAT) + b"x" + bytes(tarfile.BLOCKSIZE - 1)
    path.write_bytes(b"".join(parts) + member + bytes(2 * tarfile.BLOCKSIZE))
    return path


HOSTILE_HEADERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # tarfile itself would read any declared size into memory (a 100 KB .tar.zst took 6-13 GB)
    "pax-header-too-large": (
        lambda p: _raw_archive(p, _pax_header(b"", declared=3 << 30)),
        "extended header",
    ),
    "gnu-long-name": (
        lambda p: _write_tar(p, [_file("d/" + "n" * 150)], format=tarfile.GNU_FORMAT),
        "d/" + "n" * 150 + ": GNU long-name and sparse members are refused",  # the name, not ././@LongLink
    ),
    "gnu-sparse-pax": (
        lambda p: _write_tar(
            p,
            [_file("sparse.bin")],
            format=tarfile.PAX_FORMAT,
            pax_headers={"GNU.sparse.size": str(20 << 30)},
        ),
        "GNU.sparse.size",
    ),
    "pax-record-length-lies": (
        lambda p: _raw_archive(p, _pax_header(b"99 path=x\n")),
        "malformed extended header",
    ),
    "pax-digits-only": (lambda p: _raw_archive(p, _pax_header(b"1" * 600_000)), "malformed extended header"),
    # tarfile reads a size with int(): signs, spaces, underscores and other scripts' digits; GNU tar
    # refuses them and goes by the ustar size, so the two read other data for the member
    "pax-size-signed": (lambda p: _raw_archive(p, _pax_header(b"11 size=+1\n")), "size=+1"),
    "pax-size-underscore": (lambda p: _raw_archive(p, _pax_header(b"12 size=1_0\n")), "size=1_0"),
    "pax-size-arabic-digit": (
        lambda p: _raw_archive(p, _pax_header("11 size=\u0661\n".encode())),
        "not a decimal number",
    ),
    "pax-path-names-a-directory": (  # tarfile drops the "/" of a pax path: a file f.txt
        lambda p: _raw_archive(p, _pax_header(b"11 path=d/\n")),
        "d/: only a directory's name may end in '/'",
    ),
    "pax-binary-names": (
        lambda p: _raw_archive(p, _pax_header(b"21 hdrcharset=BINARY\n")),
        "hdrcharset=BINARY",
    ),
    "dot-not-a-directory": (lambda p: _write_tar(p, [_file("./"), _file("ok")]), "archive's root"),
    "name-too-long": (
        lambda p: _write_tar(p, [_file("a/" + "n" * 300)], format=tarfile.PAX_FORMAT),
        "longer",
    ),
    "no-files": (lambda p: _write_tar(p, []), "holds no files"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_headers_are_refused_at_once_in_bounded_memory(
    graven_home: Path, tmp_path: Path, run_cli: Run, case: str
) -> None:
    make, needle = HOSTILE_HEADERS[case]
    archive = make(tmp_path / f"{case}.tar")
    _assert_refused(run_cli, archive, needle)


def test_gnu_tar_s_sparse_files_are_refused_naming_them(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """GNU tar names an extended header after its entry (PaxHeaders/NAME): a refusal of one says it."""
    src = tmp_path / "src"
    src.mkdir()
    with (src / "holes.img").open("wb") as handle:
        handle.truncate(1 << 20)
    archive = tmp_path / "sparse.tar"
    _gnu_tar("--format=posix", "--sparse", "-C", src, "-cf", archive, "holes.img")
    _assert_refused(run_cli, archive, "PaxHeaders/holes.img: extended header key GNU.sparse.")


def test_an_error_never_prints_terminal_control_codes(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    archive = _write_tar(tmp_path / "esc.tar", [_file("/\x1b[2J\x1b[31mevil")], format=tarfile.PAX_FORMAT)
    line = _assert_refused(run_cli, archive, "absolute path in archive")
    assert "\x1b" not in line


def test_an_export_removes_what_a_killed_export_to_the_same_path_left(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    out = tmp_path / "a.tar.zst"
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a process that is gone, as a killed export's
    stale = tmp_path / f".a.tar.zst.tmp-{pid}"
    stale.write_bytes(b"half an archive")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    live = tmp_path / ".a.tar.zst.tmp-1"  # pid 1 runs: maybe another export, left alone
    live.write_bytes(b"being written")
    os.utime(live, (hour_ago, hour_ago))
    elsewhere = tmp_path / f".a.tar.zst.tmp-{pid + 1_000_000}"  # no such pid here: another namespace's?
    elsewhere.write_bytes(b"being written in a container")  # written just now: left alone
    from graven.runtime import host_token

    # a killed export of this host and pid namespace, just now: known to be gone, removed at once (a
    # crash review saw kill-and-retry loops leave every one of them); its attestation's too
    gone_now = tmp_path / f".a.tar.zst.tmp-{pid}-{host_token()}"
    gone_now.write_bytes(b"half an archive, just now")
    gone_json = tmp_path / f".a.json.tmp-{pid}-{host_token()}"
    gone_json.write_bytes(b"{")
    other_ns = tmp_path / f".a.tar.zst.tmp-{pid}-0badf00d"  # another namespace: its age decides
    other_ns.write_bytes(b"being written elsewhere")
    _export(run_cli, artifact[1], out)
    assert not stale.exists()
    assert live.read_bytes() == b"being written"
    assert elsewhere.exists()
    assert not gone_now.exists() and other_ns.exists()
    assert run_cli("export", artifact[1], "-o", out, "--attestation", tmp_path / "a.json")[0] == 0
    assert not gone_json.exists()


def test_an_export_with_an_attestation_never_leaves_another_artifacts_beside_it(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash review killed an export of B to the paths of an earlier export of A just before its
    attestation was written: B's archive sat beside A's attestation. What stood at the attestation's
    path goes right before the archive is renamed into place; an export that fails before keeps the
    old pair (a second review: a full disk lost a matching attestation)."""
    import errno

    out, envelope = tmp_path / "x.tar.zst", tmp_path / "x.json"
    out.write_text("A's archive")
    envelope.write_text("A's attestation")

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("graven.archive.writer.write_archive", full)
        assert_cli_error(
            run_cli("export", artifact[1], "-o", out, "--attestation", envelope),
            1,
            f"cannot write {out}: No space left on device",
        )
    assert (out.read_text(), envelope.read_text()) == ("A's archive", "A's attestation")

    real_replace = Path.replace

    def killed(self: Path, target: Path) -> Path:
        if target == out:
            raise KeyboardInterrupt  # as if killed between the old attestation's removal and the rename
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", killed)
    assert run_cli("export", artifact[1], "-o", out, "--attestation", envelope)[0] == 130
    assert out.read_text() == "A's archive" and not envelope.exists()


def test_export_outputs_that_collide_or_are_directories_are_refused_before_writing(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    digest = artifact[1]
    out = tmp_path / "a.tar.zst"
    code, _, err = run_cli("export", digest, "-o", out, "--attestation", out)
    assert code == 2 and "are the same file" in err, err
    assert not out.exists()
    code, _, err = run_cli("export", digest, "-o", out, "--bundle", tmp_path)
    assert code == 2 and "is a directory" in err, err
    assert not out.exists()  # nothing half-done: the archive is not written either


def test_export_never_replaces_a_device_or_fifo_at_an_output_path(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    # an export replaced what stood at --attestation by a rename: as root, `--attestation /dev/null`
    # turned /dev/null into a regular file for the whole machine
    digest = artifact[1]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    specials = [fifo]
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        specials.append(device)
    for special in specials:
        before = os.lstat(special)
        for option in ("--attestation", "--bundle"):
            code, _, err = run_cli("export", digest, "-o", tmp_path / "a.tar.zst", option, special)
            assert code == 2 and f"{special} is not a regular file" in err, err
            assert os.lstat(special).st_mode == before.st_mode and os.lstat(special).st_ino == before.st_ino
            assert not (tmp_path / "a.tar.zst").exists()
        special_archive = tmp_path / f"{special.name}.tar"
        os.rename(special, special_archive)
        code, _, err = run_cli("export", digest, "-o", special_archive)
        assert code == 2 and f"{special_archive} is not a regular file" in err, err
        assert os.lstat(special_archive).st_mode == before.st_mode
    # a symlink is replaced, never followed (as before): what it points to is left alone
    target = tmp_path / "kept"
    target.write_bytes(b"x")
    link = tmp_path / "link.intoto.json"
    link.symlink_to(target)
    code, _, err = run_cli("export", digest, "-o", tmp_path / "b.tar.zst", "--attestation", link)
    assert code == 0, err
    assert target.read_bytes() == b"x" and not link.is_symlink()


def test_export_never_replaces_a_symlink_to_a_fifo_or_a_descriptor(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    # /dev/stdout is a symlink (to /proc/self/fd/1: a pipe, a terminal): `-o /dev/stdout` as root
    # replaced it by a regular file for the whole machine, as `--attestation /dev/null` did /dev/null
    digest = artifact[1]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_fifo = tmp_path / "to-fifo.tar"
    to_fifo.symlink_to(fifo)
    to_fd = tmp_path / "stdout"
    to_fd.symlink_to("/proc/self/fd/1")
    for link in (to_fifo, to_fd):
        code, _, err = run_cli("export", digest, "-o", link)
        assert code == 2 and f"{link} is a symbolic link to" in err, err
        assert link.is_symlink()
        code, _, err = run_cli("export", digest, "-o", tmp_path / "a.tar.zst", "--attestation", link)
        assert code == 2 and f"{link} is a symbolic link to" in err, err
        assert link.is_symlink() and not (tmp_path / "a.tar.zst").exists()


def test_an_archive_of_directories_only_is_no_artifact(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    archive = tmp_path / "dirs.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("d", "d/e"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    code, _, err = run_cli("import", archive)
    assert code == 2 and "holds no files" in err, err


def test_a_truncated_compressed_archive_is_called_truncated(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    out = _export(run_cli, artifact[1], tmp_path / "a.tar.zst")
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(out.read_bytes()[:100])
    code, _, err = run_cli("import", cut)
    assert code == 2 and "truncated or corrupt" in err, err


def test_exporting_provenance_this_home_does_not_trust_warns(
    artifact: tuple[Path, str],
    tmp_path: Path,
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    new_home: Callable[[str], Path],
) -> None:
    digest = artifact[1]
    archive, envelope = tmp_path / "a.tar.zst", tmp_path / "a.intoto.json"
    code, _, err = run_cli("export", digest, "-o", archive, "--attestation", envelope)
    assert code == 0 and "warning" not in err, err  # this home trusts its own key
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("other")))  # trusts another key only
    assert run_cli("import", archive, "--attestation", envelope)[0] == 0
    again = tmp_path / "b.intoto.json"
    code, _, err = run_cli("export", digest, "-o", tmp_path / "b.tar.zst", "--attestation", again)
    assert code == 0
    assert "graven: warning: no stored provenance of" in err and "verifies against this home's trust" in err
    assert again.read_bytes() == envelope.read_bytes()


def test_a_claimed_commit_the_trusted_provenance_contradicts_is_not_recorded(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The archive's unsigned header claimed a commit, the signed provenance named another: the claim
    was recorded (show, status), and verify then failed in that home."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    code, out, _ = run_cli("show", digest, "--json")
    commit = json.loads(out)["artifact"]["commit"]
    data = archive.read_bytes()
    assert data.count(commit.encode()) == 1
    archive.write_bytes(data.replace(commit.encode(), b"1" * 40))  # same length: the header still parses
    _trusting_home(graven_home, tmp_path, monkeypatch)
    code, out, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0 and "the signed one is recorded" in err, err
    assert json.loads(run_cli("show", digest, "--json")[1])["artifact"]["commit"] == commit
    assert run_cli("verify", digest)[0] == 0


def test_a_claimed_name_and_commit_time_the_trusted_provenance_contradicts_are_not_recorded(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As for the commit: the archive's unsigned header named another artifact name and commit time
    than the signed provenance, and the claims were recorded (show, status, and the mtimes of every
    later export of it)."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    shown = json.loads(run_cli("show", digest, "--json")[1])["artifact"]
    epoch = str(shown["source_date_epoch"]).encode()
    data = archive.read_bytes()
    assert data.count(b'"name":"demo"') == 1 and data.count(b'"source_date_epoch":' + epoch) == 1
    forged = str(int(epoch) - 86400).encode()
    assert len(forged) == len(epoch)
    data = data.replace(b'"name":"demo"', b'"name":"demq"')
    archive.write_bytes(data.replace(b'"source_date_epoch":' + epoch, b'"source_date_epoch":' + forged))
    _trusting_home(graven_home, tmp_path, monkeypatch)
    code, _, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0, err
    assert 'claims the name "demq", its signed provenance names "demo"' in err, err
    assert f"claims commit time {forged.decode()}, its signed provenance names {epoch.decode()}" in err, err
    again = json.loads(run_cli("show", digest, "--json")[1])["artifact"]
    assert (again["name"], again["source_date_epoch"]) == ("demo", int(epoch))
    assert run_cli("verify", digest)[0] == 0
    # --name still chooses the name (a label of this home), and says nothing about the claim
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "third-home"))
    shutil.copytree(tmp_path / "second-home" / "trust", tmp_path / "third-home" / "trust")
    code, _, err = run_cli("import", archive, "--attestation", envelope, "--name", "mine")
    assert code == 0 and "claims the name" not in err, err
    assert json.loads(run_cli("show", digest, "--json")[1])["artifact"]["name"] == "mine"


def test_an_archive_without_graven_s_header_verifies_once_its_signer_is_trusted(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another tool's tar of the same files claims no commit time (recorded as 0): when its attestation
    is only trusted after the import, verify must not take that 0 for a contradicted claim."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    plain = _without_header(archive, tmp_path / "plain.tar")
    assert b"graven.archive" not in plain.read_bytes()
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "empty-home"))  # trusts nobody yet
    code, out, err = run_cli("import", plain, "--attestation", envelope)
    assert code == 0 and "verify and deploy refuse it" in err, err
    assert out.splitlines()[-1] == digest
    shutil.copytree(graven_home / "trust", tmp_path / "empty-home" / "trust")
    code, _, err = run_cli("verify", digest)
    assert code == 0, err


def test_an_archive_without_graven_s_header_imports_without_a_commit_time_warning(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No header means no commit-time claim (0, as verify reads it): import said the archive "claims
    commit time 0" against its signed provenance."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    plain = _without_header(archive, tmp_path / "plain.tar")
    _trusting_home(graven_home, tmp_path, monkeypatch)
    code, out, err = run_cli("import", plain, "--attestation", envelope)
    assert code == 0 and out.splitlines()[-1] == digest, err
    assert "warning" not in err, err
    shown = json.loads(run_cli("show", digest, "--json")[1])["artifact"]
    assert shown["source_date_epoch"] > 0  # the signed commit time, as the build recorded it
    assert run_cli("verify", digest)[0] == 0


def test_contradicted_claims_of_an_artifact_recorded_before_are_not_said_to_be_recorded(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path
) -> None:
    """The digest was built here: its row stays as the build wrote it, so warnings that "the signed
    one is recorded" about the archive's forged claims were false (nothing of the archive is taken)."""
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    before = json.loads(run_cli("show", digest, "--json")[1])["artifact"]
    data = archive.read_bytes()
    assert data.count(before["commit"].encode()) == 1 and data.count(b'"name":"demo"') == 1
    data = data.replace(before["commit"].encode(), b"1" * 40).replace(b'"name":"demo"', b'"name":"demq"')
    archive.write_bytes(data)
    code, _, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0, err
    assert "claims" not in err and "the signed one is recorded" not in err, err
    after = json.loads(run_cli("show", digest, "--json")[1])["artifact"]
    assert (after["name"], after["commit"]) == (before["name"], before["commit"])


def test_an_archive_whose_graven_toml_is_not_the_signed_one_is_named_at_import(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, digest = artifact
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    data = archive.read_bytes()
    claim = b'name = \\"demo\\"'  # as the header's JSON carries graven.toml's text
    assert data.count(claim) == 1
    archive.write_bytes(data.replace(claim, b'name = \\"demq\\"'))
    _trusting_home(graven_home, tmp_path, monkeypatch)
    code, _, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0, err
    assert "holds a graven.toml that is not the one its signed provenance names" in err, err


def test_an_import_records_the_signed_graven_toml_or_verify_fails_it(
    artifact: tuple[Path, str],
    graven_home: Path,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verification review: the import of an archive whose graven.toml is not the signed one recorded
    the archive's (what `show` says and every later export carries), and when the signed one was stored
    already (another artifact built from the same graven.toml) verify said ok: an unsigned graven.toml
    travelled on as the artifact's. As for the commit and the name, the signed one is now recorded when
    it is stored; else the archive's is, and verify fails the artifact, naming graven.toml."""
    repo, digest = artifact
    (repo / "README.md").write_text("# shop, again\n")  # another artifact, the same graven.toml
    commit_all(repo, "second")
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    other = out.splitlines()[-1]
    code, out, _ = run_cli("show", digest, "--json")
    signed = json.loads(out)["artifact"]["pipeline_digest"]
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "shop.tar")
    data = archive.read_bytes()
    claim = b'name = \\"demo\\"'
    assert data.count(claim) == 1
    archive.write_bytes(data.replace(claim, b'name = \\"demq\\"'))
    (tmp_path / "other").mkdir()
    other_archive, other_envelope = _export_attested(run_cli, other, tmp_path / "other" / "shop.tar")
    # a home that holds it (another artifact built from it; the artifact's own graven.toml file, too):
    # the signed one is recorded, verify passes, and an export carries the signed one
    _trusting_home(graven_home, tmp_path, monkeypatch)
    assert run_cli("import", other_archive, "--attestation", other_envelope)[0] == 0
    code, _, err = run_cli("import", archive, "--attestation", envelope)
    assert code == 0 and "the signed one, stored already, is recorded" in err, err
    code, out, _ = run_cli("show", digest, "--json")
    assert json.loads(out)["artifact"]["pipeline_digest"] == signed
    code, _, err = run_cli("verify", digest)
    assert code == 0, err
    code, _, err = run_cli("export", digest, "-o", tmp_path / "again.tar")
    assert code == 0, err
    assert claim in (tmp_path / "again.tar").read_bytes()  # the signed graven.toml travels on
    # a recorded graven.toml no signed provenance names (the archive's, stored by the import): verify
    # fails the artifact, naming graven.toml
    import sqlite3

    unsigned = "sha256:" + hashlib.sha256(_pipeline_of(archive)).hexdigest()
    with sqlite3.connect(tmp_path / "second-home" / "graven.db") as db:
        db.execute("UPDATE artifacts SET pipeline_digest = ? WHERE digest = ?", (unsigned, digest))
    code, _, err = run_cli("verify", digest)
    assert code == 1, err
    assert "graven.toml" in err and "no signed provenance of it names that" in err, err
    code, out, _ = run_cli("verify", digest, "--json")
    assert code == 1 and "graven.toml" in json.loads(out)["provenance"]["reason"]


def _pipeline_of(archive: Path) -> bytes:
    """The graven.toml an archive's global header carries."""
    with tarfile.open(archive) as tar:
        first = tar.next()
        assert first is not None
        return str(json.loads(first.pax_headers["comment"])["pipeline"]).encode()


def test_an_old_attestation_that_cannot_be_removed_is_named_not_the_archive(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: when the old attestation could not be removed, the error blamed the archive's path."""
    out, envelope = tmp_path / "x.tar.zst", tmp_path / "att" / "x.json"
    envelope.parent.mkdir()
    envelope.write_text("A's attestation")
    real_unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self == envelope:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    code, _, err = run_cli("export", artifact[1], "-o", out, "--attestation", envelope)
    assert code == 2 and f"cannot remove {envelope}, the attestation of the archive this export" in err
    assert not out.exists() and not list(tmp_path.glob(".x.tar.zst.tmp-*"))


def test_an_export_never_writes_through_what_stands_at_its_temporary_names(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    """The temporary names are predictable (``.NAME.tmp-PID-HOST``): in a shared directory such as /tmp,
    another user could put a symlink there to a file of the exporter's (root's export wrote the archive
    into it and renamed the link into place), or a file of their own (which they could change after the
    export). The temporary files are made new, never opened through what stood there."""
    from graven.archive.writer import temp_beside

    victim = tmp_path / "victim"
    victim.write_bytes(b"not an archive: must stay as it is\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    out, envelope = shared / "x.tar.zst", shared / "x.intoto.json"
    temp_beside(out).symlink_to(victim)
    planted = temp_beside(envelope)
    planted.write_bytes(b"someone else's file")
    kept = tmp_path / "kept"  # a second name: the planted inode stays, and no new file can reuse it
    os.link(planted, kept)
    code, _, err = run_cli("export", artifact[1], "-o", out, "--attestation", envelope)
    assert code == 0, err
    assert victim.read_bytes() == b"not an archive: must stay as it is\n"
    assert not out.is_symlink() and out.is_file()
    assert run_cli("import", out, "--attestation", envelope)[0] == 0
    assert kept.read_bytes() == b"someone else's file"
    assert envelope.stat().st_ino != kept.stat().st_ino
    assert sorted(p.name for p in shared.iterdir()) == ["x.intoto.json", "x.tar.zst"]


def test_export_to_a_name_that_is_not_utf8_prints_json_that_is(
    artifact: tuple[Path, str], tmp_path: Path
) -> None:
    """The JSON of an export to such a name was the name's raw bytes: no JSON parser read it."""
    _, digest = artifact
    out = os.fsencode(tmp_path) + b"/caf\xe9.tar"
    for flags in ([b"--json"], []):
        result = subprocess.run(
            [sys.executable, "-m", "graven.cli.main", b"export", digest.encode(), b"-o", out, *flags],
            env=dict(os.environ),
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        text = result.stdout.decode("utf-8")  # UTF-8 whatever the name
        if flags:
            assert json.loads(text)["output"] == f"{tmp_path}/caf\\xe9.tar"
        else:
            assert text.startswith(f"wrote {tmp_path}/caf\\xe9.tar ("), text
    assert os.path.exists(out)


def _export_piped(
    digest: str, *args: str | Path, stdout: int = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """``graven export DIGEST -o - ARGS`` in its own process, stdout a pipe (or ``stdout``)."""
    return subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "export", digest, "-o", "-", *map(str, args)],
        env=dict(os.environ),
        stdout=stdout,
        stderr=subprocess.PIPE,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(("archive_format", "suffix"), [(None, ".tar.zst"), *((s[1:], s) for s in SUFFIXES)])
def test_export_to_standard_output_is_the_file_export_byte_for_byte(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path, archive_format: str | None, suffix: str
) -> None:
    """`-o -` was refused ("-: unknown archive type"): an archive could not be piped into ssh or curl.
    It now writes exactly the bytes of the file export of that format (tar.zst without --format),
    and nothing else: what graven says goes to stderr."""
    repo, digest = artifact
    expected = _export(run_cli, digest, tmp_path / f"file{suffix}").read_bytes()
    result = _export_piped(digest, *(["--format", archive_format] if archive_format else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    said = result.stderr.decode()
    assert said.startswith("wrote ") and said.count("\n") == 1 and "to standard output" in said, said
    if suffix == ".tar.zst":
        require_tool("zstd")
    how = {".tar.zst": ["--zstd"], ".tar.gz": ["-z"], ".tar": []}[suffix]  # a pipe: tar guesses nothing
    listing = subprocess.run(
        ["tar", *how, "-tvf", "-"], input=result.stdout, capture_output=True, check=False
    )
    assert listing.returncode == 0, listing.stderr
    names = listing.stdout.decode()
    assert "app/current -> main.py" in names, names
    assert f"{LONG_DIR}/file-with-a-long-name-to-need-a-pax-header.txt" in names
    assert all(path in names for path in _tracked(repo)), names


def test_export_to_standard_output_keeps_its_attestation(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path
) -> None:
    digest = artifact[1]
    archive, envelope = _export_attested(run_cli, digest, tmp_path / "file.tar.gz")
    piped_envelope = tmp_path / "piped.intoto.json"
    bundle = tmp_path / "piped.sigstore.json"
    result = _export_piped(digest, "--format", "tar.gz", "--attestation", piped_envelope, "--bundle", bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == archive.read_bytes()
    assert piped_envelope.read_bytes() == envelope.read_bytes()
    assert bundle.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_export_to_standard_output_refuses_what_would_garble_it(
    artifact: tuple[Path, str], run_cli: Run, tmp_path: Path
) -> None:
    """A terminal, --json (stdout twice), a --format the file name contradicts, an attestation written
    over the file stdout is: each a one-line usage error (exit 2), nothing written."""
    import pty

    digest = artifact[1]
    master, slave = pty.openpty()
    try:
        result = _export_piped(digest, stdout=slave)
        os.set_blocking(master, False)
        try:
            shown = os.read(master, 1 << 16)
        except OSError:  # nothing there (BlockingIOError) or nothing more (EIO)
            shown = b""
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 2 and shown == b"", shown
    err = result.stderr.decode()
    assert (
        err.startswith("graven: error: -o - would write the archive to a terminal;") and err.count("\n") == 1
    )
    code, out, err = run_cli("export", digest, "-o", "-", "--json")
    assert code == 2 and "--json and -o - both write to standard output" in err and err.count("\n") == 1
    assert json.loads(out)["ok"] is False
    for name, wrong in (("a.tar", "tar.zst"), ("a.tar.zst", "tar.gz"), ("a.tgz", "tar")):
        code, out, err = run_cli("export", digest, "-o", tmp_path / name, "--format", wrong)
        assert (code, out) == (2, ""), err
        assert err.startswith(f"graven: error: --format {wrong} contradicts -o ") and err.count("\n") == 1, (
            err
        )
        assert not (tmp_path / name).exists()
    code, _, err = run_cli("export", digest, "-o", tmp_path / "b.tar.gz", "--format", "tar.gz")
    assert code == 0, err
    # the short names the help and the refusal name: .tgz is gzip, .tzst zstd (their magic numbers)
    for name, magic in (("c.tgz", b"\x1f\x8b"), ("c.tzst", b"\x28\xb5\x2f\xfd")):
        code, _, err = run_cli("export", digest, "-o", tmp_path / name)
        assert code == 0, err
        assert (tmp_path / name).read_bytes().startswith(magic)
    code, _, err = run_cli("export", digest, "-o", tmp_path / "c.zip")
    assert code == 2 and "a name ending in .tar, .tar.gz (.tgz) or .tar.zst (.tzst)" in err, err
    assert "(.tgz) or .tar.zst (.tzst)" in " ".join(run_cli("export", "--help")[1].split())
    envelope = tmp_path / "same.intoto.json"
    with envelope.open("wb") as stdout:
        result = _export_piped(digest, "--attestation", envelope, stdout=stdout.fileno())
    assert result.returncode == 2 and b"which --attestation or --bundle names too" in result.stderr
    assert envelope.read_bytes() == b""


def test_export_to_standard_output_that_fails_midway_exits_non_zero(
    artifact: tuple[Path, str], graven_home: Path
) -> None:
    """A corrupt object found once part of the archive went out, or a reader that left: never exit 0,
    and the archive is never completed."""
    from graven.model.digest import Digest
    from graven.store.local import LocalStore

    digest = artifact[1]
    whole = _export_piped(digest, "--format", "tar")
    assert whole.returncode == 0, whole.stderr
    reader = subprocess.Popen(
        [sys.executable, "-m", "graven.cli.main", "export", digest, "-o", "-"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert len(reader.stdout.read(10)) == 10
    reader.stdout.close()  # the reader leaves (`| head -c 10`), long before the end of the archive
    assert reader.wait(timeout=120) == 141, reader.stderr.read()
    reader.stderr.close()

    large = hashlib.sha256(random.Random(4).randbytes((1 << 20) + 5)).hexdigest()  # data/large.bin
    loose = LocalStore.at(graven_home / "objects").loose_path(Digest(large))
    loose.chmod(0o644)
    with loose.open("r+b") as handle:
        handle.seek(1 << 19)
        handle.write(b"\xff" * 8)
    for flags in (["--format", "tar"], []):
        result = _export_piped(digest, *flags)
        assert result.returncode == 1, result.stderr
        err = result.stderr.decode()
        assert err.startswith("graven: error: ") and err.count("\n") == 1 and large in err, err
        if flags:  # a plain tar goes out as it is made: part of it did, never its end
            assert 0 < len(result.stdout) < len(whole.stdout)
            cut = subprocess.run(["tar", "-tf", "-"], input=result.stdout, capture_output=True, check=False)
            assert cut.returncode != 0 and b"Unexpected EOF" in cut.stderr, cut.stderr
        else:  # zstd holds its input back (jobs of several MiB): nothing went out, or a cut frame
            assert _cut_zstd(result.stdout)


def _cut_zstd(data: bytes) -> bool:
    """Whether ``data`` is a zstd stream that ends before its frame does (or nothing at all)."""
    reader = zstandard.ZstdDecompressor().decompressobj()
    reader.decompress(data)
    return not reader.eof


def test_an_export_to_a_name_near_the_file_system_s_limit_is_written(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name of up to 255 bytes is one the file system takes, but its temporary name
    (``.NAME.tmp-PID-HOST``, 22 bytes more) was not: the export failed, "cannot write NAME: File name
    too long", about a name that is not. A long name's temporary name is shortened; what a killed
    export to it left is still found and removed."""
    from graven.archive.writer import temp_beside
    from graven.runtime import host_token

    outs = tmp_path / "outs"
    outs.mkdir()
    out = outs / ("a" * 240 + ".tar.zst")  # 248 bytes
    envelope = outs / ("\u00e9" * 125 + ".json")  # 255 bytes of UTF-8
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a process that is gone, as a killed export's
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: pid)
        stale = temp_beside(out)
    assert len(os.fsencode(stale.name)) <= 255 and stale.name.endswith(f"-{pid}-{host_token()}")
    stale.write_bytes(b"half an archive")
    code, _, err = run_cli("export", artifact[1], "-o", out, "--attestation", envelope)
    assert code == 0, err
    assert sorted(p.name for p in outs.iterdir()) == sorted([out.name, envelope.name])
    assert run_cli("import", out, "--attestation", envelope)[0] == 0


def test_an_archive_s_ending_is_read_in_any_case(
    artifact: tuple[Path, str], tmp_path: Path, run_cli: Run
) -> None:
    """import takes ``SHOP.TAR.GZ`` for a .tar.gz (its name drops the ending in any case); export
    refused that name: "unknown archive type; use a name ending in .tar, .tar.gz or .tar.zst"."""
    digest = artifact[1]
    for ending in SUFFIXES:
        lower = _export(run_cli, digest, tmp_path / f"a{ending}")
        upper = _export(run_cli, digest, tmp_path / f"B{ending.upper()}")
        assert upper.read_bytes() == lower.read_bytes()
    code, _, err = run_cli("export", digest, "-o", tmp_path / "c.Tar.Gz", "--format", "tar.gz")
    assert code == 0, err
    assert_cli_error(
        run_cli("export", digest, "-o", tmp_path / "d.TAR", "--format", "tar.zst"),
        2,
        "--format tar.zst contradicts",
    )
