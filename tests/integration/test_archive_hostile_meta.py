"""``graven import`` checks what an archive's global header claims (epoch, name, commit, digest) and that
the tar stream really ends; ``graven export`` writes commit times beyond ustar so that GNU tar reads
them, and names the user's own path when it cannot write it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from conftest import COMMIT_EPOCH, commit_all

Run = Callable[..., tuple[int, str, str]]

MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z, as docs/formats/archive-v1.md says
ARTIFACT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _claims(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "format": "graven.archive/v1",
        "name": "shop",
        "commit": COMMIT,
        "source_date_epoch": COMMIT_EPOCH,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not _ABSENT}


_ABSENT = object()


def _members() -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    for name, data in (("a.txt", b"alpha\n"), ("b/c.txt", b"gamma\n"), ("d.txt", b"delta\n")):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, COMMIT_EPOCH
        out.append((info, data))
    return out


def _tar(claims: dict[str, object] | None) -> bytes:
    """A small archive; ``claims`` go in a pax global ``comment`` as graven writes them (raw JSON: any
    value, control characters and all)."""
    buf = io.BytesIO()
    headers = {} if claims is None else {"comment": json.dumps(claims, ensure_ascii=False)}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=headers) as tar:
        for info, data in _members():
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _one_line_error(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert code == 2, (code, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "\x1b" not in err and "\r" not in err, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def _nothing_recorded(run_cli: Run) -> None:
    code, out, err = run_cli("artifacts", "--json")
    assert code == 0, err
    assert json.loads(out) == []


def _imported(run_cli: Run, *args: object) -> dict[str, Any]:
    code, out, err = run_cli("import", "--json", *args)
    assert code == 0, err
    digest = json.loads(out)["digest"]
    code, out, err = run_cli("show", digest, "--json")
    assert code == 0, err
    artifact: dict[str, Any] = json.loads(out)["artifact"]
    code, out, err = run_cli("show", digest)  # the human form prints too (dates, names)
    assert code == 0, err
    return artifact


# -- source_date_epoch ------------------------------------------------------------------------------

BAD_EPOCHS: dict[str, object] = {
    "huge": 10**30,  # an OverflowError in SQLite before
    "1e17": 10**17,  # imported, then `show` crashed in time.gmtime
    "1e15": 10**15,
    "negative": -5,
    "one-past-max": MAX_EPOCH + 1,
    "true": True,  # a bool is an int in Python
    "false": False,
    "float": 1.5,
    "string": "1704164645",
    "null": None,
    "list": [1],
}


@pytest.mark.parametrize("case", sorted(BAD_EPOCHS))
def test_an_invalid_epoch_claim_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, case: str
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(source_date_epoch=BAD_EPOCHS[case])))
    _one_line_error(run_cli("import", archive), "source_date_epoch", str(archive))
    _nothing_recorded(run_cli)


@pytest.mark.parametrize("epoch", [0, 1, 8**11 - 1, 9_999_999_999, MAX_EPOCH])
def test_an_epoch_in_range_is_stored_shown_and_exported(
    graven_home: Path, tmp_path: Path, run_cli: Run, epoch: int
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(source_date_epoch=epoch)))
    artifact = _imported(run_cli, archive)
    assert artifact["source_date_epoch"] == epoch
    assert type(artifact["source_date_epoch"]) is int
    out = tmp_path / "again.tar"
    code, _, err = run_cli("export", artifact["digest"], "-o", out)
    assert code == 0, err
    listing = _gnu_tar("-tvf", out)
    assert "b/c.txt" in listing
    with tarfile.open(out) as tar:
        assert {int(m.mtime) for m in tar.getmembers()} == {epoch}
        assert json.loads(tar.pax_headers["comment"])["source_date_epoch"] == epoch


def test_an_archive_without_claims_gets_epoch_zero(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    archive = _write(tmp_path / "plain.tar", _tar(None))
    artifact = _imported(run_cli, archive)
    assert (artifact["source_date_epoch"], artifact["commit"], artifact["name"]) == (0, None, "plain")


# -- name -------------------------------------------------------------------------------------------

BAD_NAMES: dict[str, object] = {
    "escape-and-newline": "Evil\x1b[31mRED\nline2",
    "5000-chars": "a" * 5000,
    "129-chars": "a" * 129,
    "spaces-and-slash": "Not A Valid/Name",
    "uppercase": "Shop",
    "leading-dash": "-shop",
    "non-ascii": "\u00fcber",
    "empty": "",
    "number": 42,
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_an_invalid_name_claim_is_refused_with_a_hint(
    graven_home: Path, tmp_path: Path, run_cli: Run, case: str
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(name=BAD_NAMES[case])))
    line = _one_line_error(run_cli("import", archive), "name claim", "--name", str(archive))
    assert len(line) < 400  # the 5000-char name is not printed whole
    _nothing_recorded(run_cli)


def test_name_option_replaces_an_invalid_claim(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(name="Evil\x1b[31mRED\nline2")))
    assert _imported(run_cli, archive, "--name", "shop-2")["name"] == "shop-2"


@pytest.mark.parametrize("name", ["Not A Valid/Name", "UPPER", "a" * 129, "", "x\x1b[2J"])
def test_an_invalid_name_option_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, name: str
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims()))
    _one_line_error(run_cli("import", archive, "--name", name), "--name", "not a valid artifact name")
    _nothing_recorded(run_cli)


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("\u00dcBER \u00c4rchiv.tar", "uber-archiv"),
        ("My Release (final).tar.gz", "my-release-final"),
        ("--.tar", "imported"),
        ("\u65e5\u672c.tar", "imported"),
        ("x" * 200 + ".tar", "x" * 128),
        ("v1.2.3.tar", "v1.2.3"),
    ],
)
def test_a_name_from_the_file_name_follows_the_rule(
    graven_home: Path, tmp_path: Path, run_cli: Run, file_name: str, expected: str
) -> None:
    archive = _write(tmp_path / file_name, _tar(_claims(name=_ABSENT)))
    name = _imported(run_cli, archive)["name"]
    assert name == expected
    assert ARTIFACT_NAME.fullmatch(name)


def test_the_name_rule_is_the_pipeline_one() -> None:
    from graven.model.pipeline import ARTIFACT_NAME as RULE

    assert RULE.pattern == ARTIFACT_NAME.pattern


# -- commit and digest ------------------------------------------------------------------------------

BAD_COMMITS: dict[str, object] = {
    "escape": "not-a-commit\x1b[2J",
    "uppercase": COMMIT.upper(),
    "short": COMMIT[:39],
    "41-hex": COMMIT + "0",
    "abbreviated": COMMIT[:12],
    "empty": "",
    "number": 123,
}


@pytest.mark.parametrize("case", sorted(BAD_COMMITS))
def test_an_invalid_commit_claim_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, case: str
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(commit=BAD_COMMITS[case])))
    _one_line_error(run_cli("import", archive), "commit claim", str(archive))
    _nothing_recorded(run_cli)


@pytest.mark.parametrize("commit", [COMMIT, "ab" * 32, None])
def test_a_valid_commit_claim_is_stored(
    graven_home: Path, tmp_path: Path, run_cli: Run, commit: str | None
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(commit=commit)))
    assert _imported(run_cli, archive)["commit"] == commit


@pytest.mark.parametrize("digest", ["sha256:\x1b[2J", "sha256:" + "A" * 64, 7, ""])
def test_an_invalid_digest_claim_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, digest: object
) -> None:
    archive = _write(tmp_path / "a.tar", _tar(_claims(digest=digest)))
    _one_line_error(run_cli("import", archive), "digest claim")
    _nothing_recorded(run_cli)


# -- the end of the tar stream ----------------------------------------------------------------------


def _header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.offset for m in tar.getmembers()]


def _end_of_members(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


@pytest.mark.parametrize("claims", [None, "graven"])
@pytest.mark.parametrize("where", ["after-first", "after-last"])
def test_a_tar_cut_at_a_member_boundary_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, claims: str | None, where: str
) -> None:
    """Without a digest claim nothing else would notice the missing members."""
    data = _tar(None if claims is None else _claims())
    cut_at = _header_offsets(data)[1] if where == "after-first" else _end_of_members(data)
    archive = _write(tmp_path / "cut.tar", data[:cut_at])
    _one_line_error(run_cli("import", archive), "truncated", str(archive))
    _nothing_recorded(run_cli)


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_a_compressed_tar_cut_at_a_member_boundary_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, compress: str
) -> None:
    data = _tar(None)
    data = data[: _header_offsets(data)[2]]
    if compress == "gz":
        import gzip

        packed = gzip.compress(data)
    else:
        import zstandard

        packed = zstandard.ZstdCompressor().compress(data)
    archive = _write(tmp_path / f"cut.tar.{compress}", packed)
    _one_line_error(run_cli("import", archive), "truncated")
    _nothing_recorded(run_cli)


def test_a_lone_zero_block_at_the_end_is_accepted(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    """As GNU tar reads it: the members are all there, only the second zero block is missing."""
    data = _tar(None)
    end = _end_of_members(data)
    archive = _write(tmp_path / "lone.tar", data[:end] + bytes(512))
    code, _, err = run_cli("import", archive)
    assert code == 0, err


def test_a_lone_zero_block_before_more_members_is_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    data = _tar(None)
    second = _header_offsets(data)[1]
    archive = _write(tmp_path / "lone.tar", data[:second] + bytes(512) + data[second:])
    _one_line_error(run_cli("import", archive), "zero block")
    _nothing_recorded(run_cli)


def test_a_corrupt_header_between_members_is_refused(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    data = bytearray(_tar(None))
    second = _header_offsets(bytes(data))[1]
    data[second : second + 100] = b"\xff" * 100  # the checksum no longer matches
    archive = _write(tmp_path / "corrupt.tar", bytes(data))
    _one_line_error(run_cli("import", archive), "corrupt tar header", str(archive))
    _nothing_recorded(run_cli)


def test_trailing_data_after_the_end_blocks_is_ignored(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    archive = _write(tmp_path / "tail.tar", _tar(None) + b"trailing garbage")
    code, _, err = run_cli("import", archive)
    assert code == 0, err


def _gzip_stored(data: bytes) -> bytes:
    """``data`` as gzip in stored (uncompressed) deflate blocks: its bytes are there to flip."""
    import zlib

    packer = zlib.compressobj(0, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def _flipped(packed: bytes) -> bytes:
    """``packed`` with a byte of a.txt's content changed where it lies in it (uncompressed)."""
    at = packed.index(b"alpha\n")
    return packed[:at] + b"A" + packed[at + 1 :]


def _gzip_broken(data: bytes, at: int) -> bytes:
    """``data`` as gzip whose deflate stream breaks at byte ``at`` of ``data`` (a stored block of a
    wrong length after a full flush): zlib raises its own error, no OSError, when it gets there."""
    import zlib

    packer = zlib.compressobj(0, zlib.DEFLATED, 31)
    head = packer.compress(data[:at]) + packer.flush(zlib.Z_FULL_FLUSH)
    assert head.endswith(b"\0\0\xff\xff")  # the empty stored block of the flush: LEN 0, NLEN ~0
    return head[:-2] + b"\xfe\xff" + packer.compress(data[at:]) + packer.flush()


def _with_big_file() -> bytes:
    """An archive with a 64 KiB file after a.txt: what tarfile reads ahead (10 KiB) ends inside it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in _members():
            tar.addfile(info, io.BytesIO(data))
        data = hashlib.shake_256(b"big").digest(64 << 10)
        info = tarfile.TarInfo("big.bin")
        info.size, info.mode, info.mtime = len(data), 0o644, COMMIT_EPOCH
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zstd_checked(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)


def _padded() -> bytes:
    """The archive and 2 MiB more after its end blocks: more than a reader decompresses ahead."""
    return _tar(None) + hashlib.shake_256(b"tail").digest(2 << 20)


@pytest.mark.parametrize(
    ("name", "make", "needle"),
    [
        # gzip checks its CRC and length in the trailer, after the tar's end: never read, so a corrupt
        # member (no digest claim to catch it) was imported, and so was a stream cut before the trailer
        ("crc.tar.gz", lambda: _flipped(_gzip_stored(_tar(None))), "CRC check failed"),
        ("cut.tar.gz", lambda: gzip.compress(_tar(None))[:-8], "truncated or corrupt"),
        ("junk.tar.gz", lambda: gzip.compress(_tar(None)) + b"junk", "truncated or corrupt"),
        ("sum.tar.zst", lambda: _flipped(_zstd_checked(_padded())), "checksum"),
        ("long.tar.gz", lambda: gzip.compress(_tar(None) + bytes(17 << 20)), "more than 16 MiB after"),
        # a deflate stream that breaks inside a file's data or after the tar's end: zlib.error, which
        # tarfile turns into its own error only while it reads a header (a traceback, exit 1)
        ("data.tar.gz", lambda: _gzip_broken(_with_big_file(), 40_000), "corrupt gzip data"),
        ("tail.tar.gz", lambda: _gzip_broken(_padded(), len(_tar(None)) + 100_000), "corrupt gzip data"),
    ],
    ids=[
        "gz-crc",
        "gz-cut-trailer",
        "gz-trailing-garbage",
        "zst-checksum",
        "gz-long-tail",
        "gz-broken-in-data",
        "gz-broken-after-end",
    ],
)
def test_a_compressed_stream_is_read_to_its_end(
    *, graven_home: Path, tmp_path: Path, run_cli: Run, name: str, make: Callable[[], bytes], needle: str
) -> None:
    """As under GNU tar (its gzip or zstd fails): a stream whose check fails, or that is cut or followed
    by garbage after the tar's end, is refused; what is read past the end is bounded."""
    archive = _write(tmp_path / name, make())
    _one_line_error(run_cli("import", archive), needle, str(archive))
    _nothing_recorded(run_cli)


def test_a_compressed_stream_read_to_its_end_imports(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    data = _tar(None)
    plain = _imported(run_cli, _write(tmp_path / "a.tar", data))
    for name, packed in (
        ("b.tar.gz", _gzip_stored(_padded())),
        ("c.tar.zst", _zstd_checked(_padded())),
        ("d.tar.gz", gzip.compress(data[:2048]) + gzip.compress(data[2048:])),  # two gzip members
    ):
        assert _imported(run_cli, _write(tmp_path / name, packed))["digest"] == plain["digest"]


# -- export -----------------------------------------------------------------------------------------


def _gnu_tar(*args: str | Path) -> str:
    result = subprocess.run(
        ["tar", *map(str, args)], capture_output=True, check=False, env={**os.environ, "TZ": "UTC"}
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


FUTURE = 9_999_999_999  # 2286-11-20T17:46:39Z: more than the 11 octal digits of a ustar mtime


@pytest.fixture
def future_artifact(graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run) -> str:
    repo = make_repo(tmp_path / "repo", {"README.md": "# shop\n", "app/main.py": "print('hi')\n"})
    commit_all(repo, "from the future", date=f"@{FUTURE} +0000")
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    return out.splitlines()[-1]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_export_of_a_commit_time_beyond_ustar_is_readable_and_deterministic(
    future_artifact: str,
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    digest = future_artifact
    first, second = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
    for target in (first, second):
        code, _, err = run_cli("export", digest, "-o", target)
        assert code == 0, err
    assert first.read_bytes() == second.read_bytes()
    zstd = ["--zstd"] if suffix == ".tar.zst" else []
    listing = _gnu_tar(*zstd, "--full-time", "-tvf", first)
    assert "2286-11-20 17:46:39 README.md" in listing
    assert "2286-11-20 17:46:39 app/main.py" in listing
    dest = tmp_path / "extracted"
    dest.mkdir()
    _gnu_tar(*zstd, "-xf", first, "-C", dest)
    assert (dest / "app/main.py").read_text() == "print('hi')\n"
    assert int((dest / "README.md").stat().st_mtime) == FUTURE

    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "second-home"))
    code, out, err = run_cli("import", first)
    assert code == 0, err
    assert out.splitlines()[-1] == digest
    code, out, err = run_cli("show", digest, "--json")
    assert code == 0, err
    assert json.loads(out)["artifact"]["source_date_epoch"] == FUTURE
    again = tmp_path / f"again{suffix}"
    code, _, err = run_cli("export", digest, "-o", again)
    assert code == 0, err
    assert again.read_bytes() == first.read_bytes()


def test_export_is_a_whole_number_of_records(future_artifact: str, run_cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "a.tar"
    code, _, err = run_cli("export", future_artifact, "-o", out)
    assert code == 0, err
    assert out.stat().st_size % 10240 == 0


@pytest.mark.parametrize(
    "where",
    ["nodir/x.tar", "nodir/deeper/x.tar.zst", "plain-file/x.tar.gz"],
)
def test_export_to_a_path_that_cannot_be_written_is_an_input_error(
    future_artifact: str, run_cli: Run, tmp_path: Path, where: str
) -> None:
    (tmp_path / "plain-file").write_text("x")
    out = tmp_path / where
    line = _one_line_error(run_cli("export", future_artifact, "-o", out), str(out))
    assert ".tmp-" not in line
    assert "does not exist" in line or "not a directory" in line


@pytest.mark.parametrize("option", ["--attestation", "--bundle"])
def test_export_attestation_to_a_missing_directory_is_an_input_error(
    future_artifact: str, run_cli: Run, tmp_path: Path, option: str
) -> None:
    envelope = tmp_path / "nodir" / "x.intoto.json"
    archive = tmp_path / "a.tar"
    line = _one_line_error(run_cli("export", future_artifact, "-o", archive, option, envelope), str(envelope))
    assert ".tmp-" not in line and "does not exist" in line
    assert not archive.exists()  # refused before anything was written


def test_show_survives_an_epoch_an_older_graven_stored(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """Imports before these checks stored any epoch and any name: `show` prints them, escaped."""
    archive = _write(tmp_path / "a.tar", _tar(_claims()))
    digest = _imported(run_cli, archive)["digest"]
    from graven.db import Database

    db = Database.open(f"sqlite:///{graven_home / 'graven.db'}")
    try:
        with db.begin() as conn:
            conn.execute(
                "UPDATE artifacts SET source_date_epoch = :e, name = :n",
                {"e": 10**17, "n": "Evil\x1b[31mRED\nline2"},
            )
    finally:
        db.close()
    for args in (("show", digest), ("artifacts",)):
        code, out, err = run_cli(*args)
        assert code == 0, err
        assert "\x1b" not in out and "\nline2" not in out  # no raw escape, no line of its own
        assert "Evil\\x1b[31mRED\\x0aline2" in out
    code, out, _ = run_cli("show", digest)
    assert "out of range" in out


def _block_header(name: str, size: int, typeflag: bytes, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = size, typeflag, linkname, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pax_record(key: str, value: str) -> bytes:
    rest = f" {key}={value}\n".encode()
    length = len(rest) + len(str(len(rest)))
    if len(str(length)) != len(str(len(rest))):
        length += 1
    return str(length).encode() + rest


def _pax_block(records: dict[str, str], typeflag: bytes) -> bytes:
    body = b"".join(_pax_record(k, v) for k, v in records.items())
    header = _block_header("././@PaxHeader", len(body), typeflag)
    return header + body + b"\0" * (-len(body) % 512)


def _member(name: str, data: bytes) -> bytes:
    return _block_header(name, len(data), tarfile.REGTYPE) + data + b"\0" * (-len(data) % 512)


_END = b"\0" * 1024


@pytest.mark.parametrize(
    ("archive", "needle"),
    [
        # 300 extended headers in a row: tarfile recursed once per header (a RecursionError traceback)
        (_pax_block({"comment": "c"}, tarfile.XHDTYPE) * 300 + _member("ok.txt", b"fine") + _END, "in a row"),
        # each global header is copied into every member after it: quadratic memory, and a global
        # size rewrote every member's size; graven writes one global header, with its comment only
        (
            _pax_block({"comment": "{}"}, tarfile.XGLTYPE) * 2 + _member("ok.txt", b"fine") + _END,
            "second global header",
        ),
        (_pax_block({"size": "0"}, tarfile.XGLTYPE) + _member("ok.txt", b"fine") + _END, "global header"),
        # a symlink with data: GNU tar skips the data, tarfile took it for the next header, so a member
        # that `tar -t` never lists was imported
        (
            _member("ok.txt", b"fine")
            + _block_header("s", 1024, tarfile.SYMTYPE, "ok.txt")
            + _member("smuggled", b"SECRET")
            + b"\0" * 512
            + _END,
            "with data",
        ),
        # two extended headers for one member: GNU tar takes the second's records, tarfile the first's,
        # so a member `tar -t` lists as B.txt was imported as A.txt, and with other data (its size)
        (
            _pax_block({"path": "A.txt"}, tarfile.XHDTYPE)
            + _pax_block({"path": "B.txt"}, tarfile.XHDTYPE)
            + _member("ok.txt", b"fine")
            + _END,
            "two extended headers in a row",
        ),
        (
            _pax_block({"size": "1024"}, tarfile.XHDTYPE)
            + _pax_block({"size": "1"}, tarfile.XHDTYPE)
            + _member("a.txt", b"")
            + _member("smuggled", b"EVIL")
            + _member("ok.txt", b"fine")
            + _END,
            "two extended headers in a row",
        ),
        (
            _pax_block({"path": "A.txt"}, tarfile.XHDTYPE)
            + _pax_block({"comment": "{}"}, tarfile.XGLTYPE)
            + _member("ok.txt", b"fine")
            + _END,
            "two extended headers in a row",
        ),
    ],
    ids=["pax-chain", "two-globals", "global-size", "link-with-data", "x-x-path", "x-x-size", "x-g"],
)
def test_headers_graven_never_writes_are_refused_in_one_line(
    graven_home: Path, tmp_path: Path, run_cli: Run, archive: bytes, needle: str
) -> None:
    path = _write(tmp_path / "x.tar", archive)
    _one_line_error(run_cli("import", path), needle)
    _nothing_recorded(run_cli)


def test_an_archive_pzstd_wrote_is_read(graven_home: Path, tmp_path: Path, run_cli: Run) -> None:
    """pzstd starts its output with a skippable frame; it was taken for a plain tar (bad checksum)."""
    import zstandard

    skippable = bytes([0x50, 0x2A, 0x4D, 0x18]) + (4).to_bytes(4, "little") + b"\0\0\0\0"
    data = skippable + zstandard.ZstdCompressor().compress(_tar(None))
    doc = _imported(run_cli, _write(tmp_path / "x.tar.zst", data))
    plain = _imported(run_cli, _write(tmp_path / "y.tar", _tar(None)))
    assert doc["digest"] == plain["digest"]


def test_a_refused_import_leaves_nothing_in_the_store(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large files went loose into the store as they were read, and a batch published each full pack
    (256 MiB) at once: an archive refused at its last member left gigabytes behind. Everything a batch
    writes is now published with its commit, so nothing of a refused import is stored."""
    from graven.store import local

    monkeypatch.setattr(local, "MAX_PACK_BYTES", 4096)  # a new pack every few members
    big = os.urandom(local.LOOSE_THRESHOLD + 10)
    archive = b"".join(_member(f"f{i}.txt", os.urandom(2000)) for i in range(8))
    archive += _member("big.bin", big) + _member("/abs/evil", b"x") + _END
    path = _write(tmp_path / "x.tar", archive)
    _one_line_error(run_cli("import", path), "absolute path")
    objects = graven_home / "objects"
    stored = [p for p in objects.rglob("*") if p.is_file() and "tmp" not in p.relative_to(objects).parts]
    assert stored == [], stored
    assert list((objects / "tmp").iterdir()) == []
    _nothing_recorded(run_cli)


def test_an_archive_from_standard_input_and_unread_compressions_are_named(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`graven import -` read a file named "-"; an xz archive was "not a readable tar (truncated
    header)"; a zstd --long archive was "corrupt"."""
    import zstandard

    plain = _imported(run_cli, _write(tmp_path / "a.tar", _tar(None)))
    read, write = os.pipe()
    os.write(write, _tar(None))
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        code, out, err = run_cli("import", "--json", "-")
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read)
    assert code == 0, err
    assert json.loads(out)["digest"] == plain["digest"]
    _one_line_error(run_cli("import", _write(tmp_path / "x.tar.xz", b"\xfd7zXZ\x00" + b"\x00" * 100)), "xz")
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=31, enable_ldm=True, write_content_size=False
    )
    stream = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(stream, closefd=False) as writer:
        writer.write(_tar(None))  # streamed: the frame header keeps the 2 GiB window (as zstd --long=31)
    long = stream.getvalue()
    _one_line_error(run_cli("import", _write(tmp_path / "l.tar.zst", long)), "zstd --long")


def test_an_export_whose_attestation_cannot_be_written_leaves_no_archive(
    future_artifact: str, run_cli: Run, tmp_path: Path
) -> None:
    """The archive was renamed into place first and the attestation written after: with no room
    for the attestation, the export failed and left the new archive without it (a fault-injection
    review)."""
    from helpers_mounts import mounted_tmpfs

    archive = tmp_path / "a.tar"
    with mounted_tmpfs(tmp_path / "full") as full:
        with (full / "filler").open("wb") as handle:  # the tmpfs is 16 MiB: fill it to the last byte
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    handle.write(chunk)
                    handle.flush()
            except OSError:
                pass
        for small in range(64):  # and the last pages (a page at a time)
            try:
                (full / f"f{small}").write_bytes(b"\0" * 4096)
            except OSError:
                break
        code, out, err = run_cli("export", future_artifact, "-o", archive, "--attestation", full / "x.json")
        left = sorted(p.name for p in full.iterdir() if not p.name.startswith("f"))
    assert code == 1, (out, err)
    assert err.startswith(f"graven: error: cannot write {full / 'x.json'}: No space left on device"), err
    assert not archive.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("a.tar")] == []  # no temp either
    assert left == []


def test_deep_paths_that_imply_gigabytes_of_directories_are_refused(
    graven_home: Path, tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each path of 2,048 levels implies 2,047 directories whose names (each a prefix of it) add up to
    4 MiB: a 917-byte .tar.zst of 300 of them took 2.6 GB to import, one of 3,000 more than any machine
    has. The bytes of the directories an archive's paths imply are bounded as they are read."""
    from graven.core import paths

    monkeypatch.setattr(paths, "MAX_IMPLIED_BYTES", 16 << 20)  # the test's memory
    deep = "a/" * 2044 + "f"
    members = [_pax_block({"path": f"{i:05d}/{deep}"}, tarfile.XHDTYPE) + _member("x", b"") for i in range(8)]
    archive = zstandard.ZstdCompressor().compress(_member("ok.txt", b"fine") + b"".join(members) + _END)
    _one_line_error(run_cli("import", _write(tmp_path / "deep.tar.zst", archive)), "/a/a/a", "MiB of names")
    _nothing_recorded(run_cli)


def test_an_artifact_the_build_accepts_under_the_implied_directories_bound_imports_again(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAX_IMPLIED_BYTES bounds the names of the directories a tree's paths imply, for a build as for an
    import: long paths in a few directories (a large tree's many files) imply little, so an artifact
    the build accepted is exported and imported again, never refused as 'one deep tree'."""
    from graven.core import paths

    files = {f"app/{i:03d}-{'n' * 200}.txt": f"{i}\n" for i in range(40)}  # ~8 KiB of paths, 3 B implied
    repo = make_repo(tmp_path / "repo", files)
    monkeypatch.setattr(paths, "MAX_IMPLIED_BYTES", 4 << 10)  # paths > bound > implied directories
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    digest = out.splitlines()[-1]
    archive = tmp_path / "a.tar.zst"
    code, _, err = run_cli("export", digest, "-o", archive)
    assert code == 0, err
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "second-home"))
    code, out, err = run_cli("import", archive)
    assert code == 0, err
    assert out.splitlines()[-1] == digest
