"""``graven verify`` finds corrupt and missing objects by artifact path, and a build killed at any moment
leaves a store that still verifies."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import commit_all, write_files
from graven.model.digest import Digest
from graven.store.local import LocalStore
from helpers_deploy import World, env_toml

Run = Callable[..., tuple[int, str, str]]

BIG = random.Random(1).randbytes((1 << 20) + 12345)  # >= 1 MiB: stored loose
PACKED = random.Random(2).randbytes(200_000)  # incompressible: stored raw inside a pack
FILES = {
    "big/blob.bin": BIG,
    "data/random.bin": PACKED,
    "docs/readme.txt": "hello\n" * 100,
    "docs/copy-of-readme.txt": "hello\n" * 100,  # the same blob under two paths
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build(run_cli: Run, repo: Path) -> str:
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    return out.splitlines()[-1]


def _flip(path: Path, offset: int) -> None:
    path.chmod(0o644)  # objects are read-only
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))


def _problems(err: str) -> list[str]:
    """The per-object problem lines of a failed verify; checks that the object check failed."""
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("graven: error: ")]
    assert any("failed verification" in line for line in errors), err
    return [line for line in lines if not line.startswith("graven: ")]


@pytest.fixture
def built(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> tuple[Path, str]:
    repo = make_repo(tmp_path / "repo", FILES)
    digest = _build(run_cli, repo)
    code, out, err = run_cli("verify", digest)
    assert code == 0, err
    assert out.startswith(f"ok {digest}")
    return repo, digest


def test_corrupt_loose_object_is_named(graven_home: Path, built: tuple[Path, str], run_cli: Run) -> None:
    _, digest = built
    loose = LocalStore.at(graven_home / "objects").loose_path(Digest(_sha(BIG)))
    assert loose.is_file()
    _flip(loose, len(BIG) // 2)
    code, out, err = run_cli("verify", digest)
    assert code == 1
    assert out == ""
    assert _problems(err) == [f"corrupt: big/blob.bin (object sha256:{_sha(BIG)})"]

    code, out, err = run_cli("verify", "--json", digest)
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert [(p["path"], p["object"], p["kind"]) for p in report["problems"]] == [
        ("big/blob.bin", f"sha256:{_sha(BIG)}", "corrupt")
    ]


def test_a_failure_the_audit_log_cannot_take_is_still_reported(
    graven_home: Path, built: tuple[Path, str], run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only or unreachable database must not hide the integrity failure behind its own error."""
    from graven.errors import BackendError
    from graven.service.audit import AuditLog

    _, digest = built
    _flip(LocalStore.at(graven_home / "objects").loose_path(Digest(_sha(BIG))), 7)

    def read_only(*_args: object, **_kwargs: object) -> None:
        raise BackendError("database error: attempt to write a readonly database")

    monkeypatch.setattr(AuditLog, "record", read_only)
    code, out, err = run_cli("verify", digest)
    assert code == 1 and out == ""
    assert _problems(err) == [f"corrupt: big/blob.bin (object sha256:{_sha(BIG)})"]
    assert "graven: warning: this failure is not in the audit log: database error" in err


def test_export_of_a_corrupt_artifact_fails_and_writes_nothing(
    graven_home: Path, built: tuple[Path, str], run_cli: Run, tmp_path: Path
) -> None:
    _, digest = built
    _flip(LocalStore.at(graven_home / "objects").loose_path(Digest(_sha(BIG))), 10)
    target = tmp_path / "out.tar"
    code, _, err = run_cli("export", digest, "-o", target)
    assert code == 1, err
    assert err.startswith("graven: error: ") and len(err.splitlines()) == 1, err
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tar")] == []


def test_corrupt_byte_inside_a_pack_is_named(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    _, digest = built
    packs = sorted((graven_home / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 1
    data = packs[0].read_bytes()
    where = data.find(PACKED)
    assert where > 0, "the incompressible file should be stored raw in the pack"
    _flip(packs[0], where + len(PACKED) // 2)
    code, out, err = run_cli("verify", digest)
    assert code == 1
    assert out == ""
    assert _problems(err) == [f"corrupt: data/random.bin (object sha256:{_sha(PACKED)})"]


def test_corrupt_record_header_inside_a_pack_is_named(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    _, digest = built
    pack = next((graven_home / "objects" / "pack").glob("*.pack"))
    where = pack.read_bytes().find(bytes.fromhex(_sha(PACKED)))
    assert where > 0
    _flip(pack, where + 48)  # the stored-length field of the record header
    code, _, err = run_cli("verify", digest)
    assert code == 1
    assert _problems(err) == [f"corrupt: data/random.bin (object sha256:{_sha(PACKED)})"]


@pytest.mark.parametrize("size", [b"\xff" * 8, b"\x00\x00\x00\x10\x00\x00\x00\x00"])
def test_an_impossible_size_in_a_record_header_is_damage_not_a_crash(
    graven_home: Path, built: tuple[Path, str], run_cli: Run, tmp_path: Path, size: bytes
) -> None:
    """The raw-size field was compared with nothing: past 2**63 it crashed the decompressor (a
    traceback from the command made to find damage), and a merely huge one is memory it must not ask
    for. Both are damage to the record, named as such, by verify and by export."""
    _, digest = built
    pack = next((graven_home / "objects" / "pack").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    where = data.find(bytes.fromhex(_sha(PACKED)))
    assert where > 0
    data[where + 33 : where + 41] = size  # after the digest (32) and the codec (1)
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    code, _, err = run_cli("verify", digest)
    assert code == 1
    assert _problems(err) == [f"corrupt: data/random.bin (object sha256:{_sha(PACKED)})"]
    code, _, err = run_cli("export", digest, "-o", tmp_path / "out.tar")
    assert code == 1 and err.startswith("graven: error: ") and len(err.splitlines()) == 1, err


def test_deleted_loose_object_is_named_missing(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    _, digest = built
    LocalStore.at(graven_home / "objects").loose_path(Digest(_sha(BIG))).unlink()
    code, _, err = run_cli("verify", digest)
    assert code == 1
    assert _problems(err) == [f"missing: big/blob.bin (object sha256:{_sha(BIG)})"]


def test_deleted_pack_names_every_missing_object(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    repo, v1 = built
    pack_dir = graven_home / "objects" / "pack"
    first_packs = set(pack_dir.iterdir())
    # v2, under another name (so its manifest is stored whole), shares every file but one with v1.
    write_files(repo, {"graven.toml": '[artifact]\nname = "demo-two"\n', "docs/new.txt": "new\n"})
    commit_all(repo, "v2")
    v2 = _build(run_cli, repo)
    assert set(pack_dir.iterdir()) > first_packs
    for path in first_packs:
        path.chmod(0o644)
        path.unlink()

    code, _, err = run_cli("verify", v2)
    assert code == 1
    readme = _sha(b"hello\n" * 100)
    assert _problems(err) == [
        f"missing: data/random.bin (object sha256:{_sha(PACKED)})",
        f"missing: docs/copy-of-readme.txt (object sha256:{readme})",
        f"missing: docs/readme.txt (object sha256:{readme})",
    ]
    # the audit log records how many objects: two (the readme's is at two paths), not three
    code, out, _ = run_cli("log", "--json")
    assert code == 0
    failure = json.loads(out)[-1]
    assert (failure["event"], failure["reason"]) == ("verify-failure", "2 objects missing or corrupt")
    # v1's manifest and signed provenance were in the deleted pack: both are reported missing.
    code, _, err = run_cli("verify", v1)
    assert code == 1
    assert _problems(err) == [
        f"missing: (manifest) (object {v1})",
        f"missing: (provenance) (object {_envelope_of(graven_home, v1)})",
    ]


def test_the_path_of_a_problem_with_the_manifest_is_the_one_docs_json_md_names() -> None:
    """docs/json.md said ``graven.tree``; verify reports ``(manifest)``, and a script that looked for the
    former never found it."""
    from graven.service.artifacts import MANIFEST_PATH

    doc = Path(__file__).resolve().parents[2] / "docs" / "json.md"
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| `problems[].path` |")]
    assert rows and all(f"`{MANIFEST_PATH}` for the manifest itself" in row for row in rows), rows


# -- SIGKILL while storing -------------------------------------------------------------------------


def _big_repo_files() -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {
        f"d{i % 30:02d}/f{i:04d}.txt": f"small file {i}\n" * (1 + i % 7) for i in range(3000)
    }
    for j in range(4):
        files[f"big/blob{j}.bin"] = random.Random(100 + j).randbytes(2 << 20)
    return files


def _graven(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GRAVEN_HOME=str(home))
    return subprocess.Popen(
        [sys.executable, "-m", "graven", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_when_storing(home: Path, repo: Path, delay: float) -> bool:
    """Start a build; once it has a temp file in the store, wait ``delay`` s and SIGKILL it.
    True when the process was killed while it had started storing."""
    tmp = home / "objects" / "tmp"
    proc = _graven(home, "build", "-C", str(repo))
    seen = False
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            seen = any(f"-{proc.pid}-" in name for name in os.listdir(tmp))
        except FileNotFoundError:
            seen = False
        if seen:
            break
        time.sleep(0.001)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    return seen and proc.returncode == -signal.SIGKILL


def _kill_after(home: Path, repo: Path, delay: float) -> None:
    proc = _graven(home, "build", "-C", str(repo))
    time.sleep(delay)
    proc.kill()
    proc.communicate()


def _assert_store_is_whole(objects: Path) -> int:
    """Every loose object hashes to its name, every index loads, every listed object verifies."""
    loose = 0
    for sub in (objects / "sha256").iterdir():
        for item in sub.iterdir():
            digest = hashlib.sha256()
            with item.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            assert digest.hexdigest() == sub.name + item.name, f"partial loose object {item}"
            loose += 1
    for idx in (objects / "pack").glob("*.idx"):
        assert idx.with_suffix(".pack").is_file(), f"{idx.name} has no pack"
    store = LocalStore.at(objects)
    listed = list(store.list())  # loads every *.idx: a partial one raises
    for each in listed:
        store.verify(each)
    return len(listed)


def test_sigkill_while_storing_leaves_a_store_that_verifies(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "big-repo", _big_repo_files())
    killed_storing = 0
    for delay in (0.0, 0.002, 0.01, 0.03, 0.06, 0.1, 0.15, 0.25):
        killed_storing += _kill_when_storing(graven_home, repo, delay)
    for delay in (0.05, 0.15, 0.3):
        _kill_after(graven_home, repo, delay)
    assert killed_storing >= 3, "the builds finished before they could be killed; the test proves nothing"

    objects = graven_home / "objects"
    _assert_store_is_whole(objects)
    code, out, err = run_cli("artifacts", "--json")
    assert code == 0, err
    for record in json.loads(out):
        code, _, err = run_cli("verify", record["digest"])
        assert code == 0, err

    code, out, err = run_cli("build", "--json", "-C", repo)
    assert code == 0, err
    digest = json.loads(out)["digest"]
    code, _, err = run_cli("verify", digest)
    assert code == 0, err
    assert _assert_store_is_whole(objects) > 3000


def test_a_recorded_commit_the_signed_provenance_contradicts_fails_verify(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    """show, status and export go by the database's row; an edited row (or an unsigned import's claim)
    passed verify as long as the signature did."""
    import sqlite3

    _, digest = built
    with sqlite3.connect(graven_home / "graven.db") as db:
        db.execute('UPDATE artifacts SET "commit" = ? WHERE digest = ?', ("f" * 40, digest))
    code, _, err = run_cli("verify", digest)
    assert code == 1 and "records commit ffffffffffff (time " in err, err
    assert "for it, but no signed provenance of it names that" in err, err


def test_a_recorded_commit_time_the_signed_provenance_contradicts_fails_verify(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    """The commit time is what every export of the artifact takes as its mtimes: a row edited to
    another one changed the export's bytes, and verify said ok."""
    import sqlite3

    _, digest = built
    with sqlite3.connect(graven_home / "graven.db") as db:
        db.execute(
            "UPDATE artifacts SET source_date_epoch = source_date_epoch - 1 WHERE digest = ?", (digest,)
        )
    code, _, err = run_cli("verify", digest)
    assert code == 1 and "but no signed provenance of it names that" in err, err


def _flip_packed(objects: Path, digest: str) -> None:
    """Flip a byte in the middle of ``digest``'s record in its pack (index: docs/formats/store-v1.md)."""
    import struct

    want = bytes.fromhex(digest.removeprefix("sha256:"))
    for idx in (objects / "pack").glob("*.idx"):
        data = idx.read_bytes()
        (count,) = struct.unpack(">Q", data[12:20])
        for i in range(count):
            found, offset, length, _raw, _codec = struct.unpack(">32sQQQB", data[20 + 57 * i : 77 + 57 * i])
            if found == want:
                _flip(idx.with_suffix(".pack"), offset + length // 2)
                return
    raise AssertionError(f"{digest} is in no pack")


def test_a_corrupt_graven_toml_named_by_the_provenance_fails_verify(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """A permissions review: verify said ok while the graven.toml its provenance names (what a deploy
    reads its settings from) was corrupt; deploy then failed on it."""
    toml = '[artifact]\nname = "docs"\ninclude = ["docs/**"]\n'  # graven.toml is no file of it
    digest = _build(run_cli, make_repo(tmp_path / "repo", FILES, toml))
    code, out, _ = run_cli("show", digest, "--json")
    pipeline = json.loads(out)["builds"][0]["pipeline_digest"]
    _flip_packed(graven_home / "objects", pipeline)
    code, out, err = run_cli("verify", digest)
    assert code == 1 and out == ""
    assert _problems(err) == [f"corrupt: graven.toml (named by the provenance) (object {pipeline})"]
    code, out, _ = run_cli("verify", digest, "--json")
    assert code == 1 and [p["path"] for p in json.loads(out)["problems"]] == [
        "graven.toml (named by the provenance)"
    ]


def test_the_library_verify_checks_trust_too_and_records_the_failure(
    graven_home: Path, built: tuple[Path, str]
) -> None:
    """An architecture review: the service's verify_artifact only re-hashed objects, and graven verify
    put the rest together in the CLI, so a library caller got ok for an artifact no key it trusts
    signed. graven.service.artifacts.verify is the whole check."""
    import shutil

    from graven.home import Home
    from graven.service.artifacts import verify
    from graven.service.context import Context
    from graven.service.provenance import load_policy

    _, digest = built
    shutil.move(graven_home / "trust", graven_home.parent / "trust-aside")
    with Context(home=Home(root=graven_home)) as ctx:
        result = verify(ctx, Digest.parse(digest), policy=load_policy(ctx, None))
        assert result.report.ok and not result.ok and not result.provenance.ok
        assert "no trusted keys" in result.reason
        with ctx.db.connect() as conn:
            events = [r[0] for r in conn.execute("SELECT event FROM log_entries ORDER BY idx")]
    assert events[-1] == "verify-failure"


def test_verify_for_an_environment_nothing_defines_is_refused_naming_the_known_ones(
    world: World, run_cli: Run, tmp_path: Path
) -> None:
    """`verify --env prdo` (a typo) was checked with the default keys and passed (exit 0), where
    prod's own keys may refuse the artifact. An environment known here still is: defined in the
    artifact's graven.toml, deployed to here, or given keys in the policy file (the default keys when
    it has none of its own, as a deployment checks it)."""
    from graven.errors import NotFoundError
    from graven.service.artifacts import verify
    from graven.service.provenance import load_policy

    v1 = world.build()
    known = "known here: prod, staging"
    code, out, err = run_cli("verify", v1, "--env", "prdo")
    assert (code, out) == (2, ""), err
    assert err.startswith(f"graven: error: unknown environment 'prdo' ({known}); did you mean 'prod'? "), err
    assert err.count("\n") == 1 and "[env.NAME] section in graven.toml" in err
    code, out, err = run_cli("verify", v1, "--env", "qa", "--json")
    assert code == 2 and json.loads(out)["error"]["message"].startswith(
        f"unknown environment 'qa' ({known}); def"
    )
    ctx = world.ctx()
    with pytest.raises(NotFoundError, match="unknown environment 'prdo'"):
        verify(ctx, Digest.parse(v1), policy=load_policy(ctx), env="prdo")
    assert run_cli("verify", v1, "--env", "staging")[0] == 0  # its graven.toml defines it
    (key,) = (world.home / "trust").glob("*.pub")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[env.canary]\nkeys = ["{key}"]\n')
    assert run_cli("verify", v1, "--env", "canary")[0] == 2
    code, out, err = run_cli("verify", v1, "--env", "canary", "--policy", policy)
    assert code == 0 and out.startswith(f"ok {v1} "), err

    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app"))  # no [env] at all: only what is deployed here is known
    code, out, err = run_cli("verify", v2, "--env", "staging")
    assert code == 0, err
    code, _, err = run_cli("verify", v2, "--env", "prod")
    assert code == 2 and err.startswith(
        "graven: error: unknown environment 'prod' (known here: staging); "
    ), err


def test_verify_for_an_environment_where_none_is_configured_says_how_to_make_one(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    code, out, err = run_cli("verify", built[1], "--env", "prod")
    assert (code, out) == (2, "")
    assert err == (
        "graven: error: unknown environment 'prod': none is configured here; define it with an [env.prod] "
        "section in graven.toml (and build again) or [env.prod] keys in a trust policy file\n"
    )


def test_verify_for_an_environment_of_a_corrupt_graven_toml_names_the_corruption(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """`verify --env staging` of an artifact whose graven.toml (the one that defines staging) was
    damaged in the store said `unknown environment 'staging' ...; define it` (exit 2, bad input): the
    name was looked for in what could not be read. It is checked as it is without --env: the damage
    is named (exit 1)."""
    import sqlite3

    toml = '[artifact]\nname = "docs"\ninclude = ["docs/**"]\n\n[env.staging]\npath = "staging"\n'
    digest = _build(run_cli, make_repo(tmp_path / "repo", FILES, toml))
    assert run_cli("verify", digest, "--env", "staging")[0] == 0
    code, out, _ = run_cli("show", digest, "--json")
    pipeline = json.loads(out)["builds"][0]["pipeline_digest"]
    lost = f"sha256:{'0' * 64}"
    with sqlite3.connect(graven_home / "graven.db") as db:  # a graven.toml no provenance names is lost
        db.execute("UPDATE artifacts SET pipeline_digest = ? WHERE digest = ?", (lost, digest))
    # its build's graven.toml defines staging; the row's graven.toml (what export carries) is no signed one
    code, _, err = run_cli("verify", digest, "--env", "staging")
    assert code == 1 and f"graven.toml {lost[:19]}) for it, but no signed provenance" in err, err
    code, _, err = run_cli("verify", digest, "--env", "prdo")  # what could not be read is named first
    assert code == 1 and "no signed provenance of it names that" in err, err
    with sqlite3.connect(graven_home / "graven.db") as db:  # the build's record names the lost one now
        db.execute("UPDATE artifacts SET pipeline_digest = ? WHERE digest = ?", (pipeline, digest))
        db.execute("UPDATE builds SET pipeline_digest = ? WHERE digest = ?", (lost, digest))
    assert run_cli("verify", digest, "--env", "staging")[0] == 0  # the artifact's graven.toml defines it
    code, _, err = run_cli("verify", digest, "--env", "prdo")  # verified whole: the name is still unknown
    assert code == 2 and "unknown environment 'prdo' (known here: staging)" in err, err
    _flip_packed(graven_home / "objects", pipeline)
    code, out, err = run_cli("verify", digest, "--env", "staging")
    assert code == 1 and out == "", err
    assert _problems(err) == [f"corrupt: graven.toml (named by the provenance) (object {pipeline})"]
    code, _, err = run_cli("verify", digest, "--env", "prdo")  # it may be a typo: the damage first
    assert code == 1 and "corrupt: graven.toml" in err, err


def test_attest_verify_for_an_environment_nothing_defines_is_refused_as_verify_refuses_it(
    world: World, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`attest verify ... --env prdo` (a typo) was checked with the default keys and passed (exit 0),
    where prod's own keys may refuse the attestation. It now knows the environments `verify --env`
    knows (the policy's, those deployed to here, the artifact's graven.toml's) and refuses any other
    name in one line (exit 2), naming the known ones; --json says it as `verify --json` does."""
    v1 = world.build()
    envelope = tmp_path / "v1.intoto.json"
    code, _, err = run_cli("export", v1, "-o", tmp_path / "v1.tar", "--attestation", envelope)
    assert code == 0, err
    attest = ("attest", "verify", envelope, "--artifact", v1)
    code, out, err = run_cli(*attest, "--env", "prdo")
    assert (code, out) == (2, ""), err
    assert err.startswith(
        "graven: error: unknown environment 'prdo' (known here: prod, staging); did you mean 'prod'? "
    ), err
    assert err.count("\n") == 1
    code, out, err = run_cli(*attest, "--env", "qa", "--json")
    assert code == 2 and json.loads(out)["error"]["message"].startswith(
        "unknown environment 'qa' (known here: prod, staging); def"
    ), out
    code, out, err = run_cli(*attest, "--env", "staging")  # its graven.toml defines it
    assert code == 0 and out.startswith(f"ok {v1}: "), err
    (key,) = (world.home / "trust").glob("*.pub")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[env.canary]\nkeys = ["{key}"]\n')
    assert run_cli(*attest, "--env", "canary")[0] == 2
    code, _, err = run_cli(*attest, "--env", "canary", "--policy", policy)
    assert code == 0, err

    # a home that stores nothing (the artifact checked offline, by its whole digest): only the
    # environments of its policy are known
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "trust").mkdir(mode=0o700)
    (other / "trust" / key.name).write_bytes(key.read_bytes())
    monkeypatch.setenv("GRAVEN_HOME", str(other))
    code, out, err = run_cli(*attest)
    assert code == 0, err
    code, _, err = run_cli(*attest, "--env", "prod")
    assert code == 2 and err.startswith(
        "graven: error: unknown environment 'prod': none is configured here; "
    ), err
    code, _, err = run_cli(*attest, "--env", "canary", "--policy", policy)
    assert code == 0, err
    assert sorted(path.name for path in other.iterdir()) == ["trust"]  # no database made for it


def test_verify_says_how_many_lookups_it_makes_so_none_are_spent_before_a_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify_artifact asks about each object twice (has, then the verified read); it told the store
    once per object, so with a budget between the two it spent the whole budget in binary searches
    and then loaded the index anyway."""
    from graven.service.artifacts import verify_artifact
    from helpers_deploy import make_world

    world = make_world(tmp_path, monkeypatch)
    files = {f"src/f{i}.py": f"X = {i}\n" for i in range(40)}
    world.commit(files)
    digest = Digest.parse(world.build())
    ctx = world.ctx()
    store = ctx.store
    objects = len({e.sha256 for e in world.manifest(str(digest)).files()})
    store._lookups_left()  # the index files mapped, the budget set; now one between n and 2n:
    store._point_left = objects + 5
    searched: list[bytes] = []
    real = LocalStore._search_maps

    def counting(self: LocalStore, raw: bytes) -> object:
        searched.append(raw)
        return real(self, raw)

    monkeypatch.setattr(LocalStore, "_search_maps", counting)
    assert verify_artifact(ctx, digest).ok
    assert store._index is not None  # more lookups than the budget: loaded ...
    assert len(searched) <= 3, len(searched)  # ... before the objects, not after a budget of searches
    world.close()


def _envelope_of(home: Path, digest: str) -> str:
    import sqlite3

    with sqlite3.connect(home / "graven.db") as conn:
        rows = conn.execute("SELECT envelope_digest FROM attestations WHERE artifact_digest = ?", (digest,))
        (envelope,) = (row[0] for row in rows)
    return str(envelope)


def test_a_corrupt_provenance_envelope_is_named_as_an_object_of_the_artifact(
    graven_home: Path, built: tuple[Path, str], run_cli: Run
) -> None:
    """A verify review: the signed provenance is a stored object of the artifact, but a corrupt one was
    no problem line (``problems`` was empty in --json): only the provenance's reason said it, so a
    script reading ``problems`` took a damaged store for an untrusted signer."""
    _, digest = built
    envelope = _envelope_of(graven_home, digest)
    _flip_packed(graven_home / "objects", envelope)
    code, out, err = run_cli("verify", digest)
    assert code == 1 and out == ""
    assert _problems(err) == [f"corrupt: (provenance) (object {envelope})"]
    code, out, _ = run_cli("verify", digest, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["provenance"]["ok"] is False
    assert [(p["path"], p["object"], p["kind"]) for p in report["problems"]] == [
        ("(provenance)", envelope, "corrupt")
    ]
