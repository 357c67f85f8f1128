"""A damaged store, driven through the CLI: a rebuild repairs a corrupt object, and one damaged pack
index leaves the other artifacts usable (docs/formats/store-v1.md)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from graven.model.digest import Digest
from graven.store.local import LocalStore

Run = Callable[..., tuple[int, str, str]]

BIG = random.Random(7).randbytes(2 << 20)  # 2 MiB: stored loose
PACKED = random.Random(8).randbytes(100_000)  # incompressible: stored raw inside a pack


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flip(path: Path, offset: int) -> None:
    path.chmod(0o644)  # objects are read-only
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))


def _build(run_cli: Run, repo: Path, *args: str) -> str:
    code, out, err = run_cli("build", *args, "-C", repo)
    assert code == 0, err
    return out.splitlines()[-1]


def _verify_ok(run_cli: Run, digest: str) -> None:
    code, out, err = run_cli("verify", digest)
    assert code == 0, err
    assert out.startswith(f"ok {digest}")


def test_a_rebuild_without_the_cache_repairs_corrupt_objects(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"big/blob.bin": BIG, "data/random.bin": PACKED})
    digest = _build(run_cli, repo)
    objects = graven_home / "objects"
    loose = LocalStore.at(objects).loose_path(Digest(_sha(BIG)))
    _flip(loose, len(BIG) // 2)
    (pack,) = (objects / "pack").glob("*.pack")
    _flip(pack, pack.read_bytes().find(PACKED) + 1000)
    code, _, err = run_cli("verify", digest)
    assert code == 1
    assert "corrupt: big/blob.bin" in err and "corrupt: data/random.bin" in err, err

    assert _build(run_cli, repo, "--no-cache") == digest
    _verify_ok(run_cli, digest)
    assert hashlib.sha256(loose.read_bytes()).hexdigest() == _sha(BIG)
    assert not loose.stat().st_mode & 0o222  # read-only again
    code, _, err = run_cli("export", digest, "-o", tmp_path / "out.tar")
    assert code == 0, err


def _two_artifacts(
    tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, objects: Path
) -> tuple[str, str, Path]:
    """Two artifacts sharing no object, one pack each: (the artifact in pack A, the one in pack B,
    A's index), where A's index is the one loaded first."""
    digests = []
    for n in range(2):
        files = {f"f{n}/data.bin": random.Random(n).randbytes(50_000), "common.txt": f"artifact {n}\n"}
        repo = make_repo(tmp_path / f"repo{n}", files, f'[artifact]\nname = "app{n}"\n')
        digests.append(_build(run_cli, repo))
    idx_a = sorted((objects / "pack").glob("*.idx"))[0]
    assert len(list((objects / "pack").glob("*.idx"))) == 2
    in_a = Digest.parse(digests[0]).raw in idx_a.read_bytes()
    first, second = digests if in_a else digests[::-1]
    return first, second, idx_a


def test_a_damaged_pack_index_leaves_every_artifact_usable(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    objects = graven_home / "objects"
    in_a, in_b, idx_a = _two_artifacts(tmp_path, make_repo, run_cli, objects)
    _flip(idx_a, 40)
    _verify_ok(run_cli, in_b)
    _verify_ok(run_cli, in_a)  # its index is rebuilt from the pack's record headers
    for n, digest in enumerate((in_a, in_b)):
        code, _, err = run_cli("export", digest, "-o", tmp_path / f"out{n}.tar")
        assert code == 0, err


def test_objects_lost_with_a_damaged_index_are_missing_and_the_index_is_named(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    objects = graven_home / "objects"
    in_a, in_b, idx_a = _two_artifacts(tmp_path, make_repo, run_cli, objects)
    _flip(idx_a, 40)
    pack_a = idx_a.with_suffix(".pack")
    pack_a.chmod(0o644)
    pack_a.write_bytes(b"")  # nothing left to rebuild the index from
    _verify_ok(run_cli, in_b)
    code, out, err = run_cli("verify", "--json", in_a)
    assert code == 1, err
    problem, envelope = json.loads(out)["problems"]  # its signed provenance was in that pack too
    assert (problem["path"], problem["object"], problem["kind"]) == ("(manifest)", in_a, "missing")
    assert (envelope["path"], envelope["kind"]) == ("(provenance)", "missing")
    assert idx_a.name in problem["detail"]


def test_a_deleted_pack_whose_index_remains_reports_missing(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    objects = graven_home / "objects"
    in_a, in_b, idx_a = _two_artifacts(tmp_path, make_repo, run_cli, objects)
    pack_a = idx_a.with_suffix(".pack")
    pack_a.chmod(0o644)
    pack_a.unlink()
    _verify_ok(run_cli, in_b)
    code, _, err = run_cli("verify", in_a)
    assert code == 1
    assert f"missing: (manifest) (object {in_a})" in err.splitlines(), err


def _error_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("graven: error: ")]
    return line


def test_verify_says_how_to_put_a_damaged_object_back_and_that_way_works(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """An operator review: `graven verify` named the lost files and stopped there ("1 missing or
    corrupt"), and deploy's error sent to verify; a plain `graven build` of the commit then said "built"
    (the blob cache vouches for a stored object without reading it) and left the damage in place."""
    repo = make_repo(tmp_path / "repo", {"big/blob.bin": BIG, "data/random.bin": PACKED})
    digest = _build(run_cli, repo)
    (record,) = json.loads(run_cli("artifacts", "--json")[1])
    commit = record["commit"]
    loose = LocalStore.at(graven_home / "objects").loose_path(Digest(_sha(BIG)))
    _flip(loose, 10)
    code, _, err = run_cli("verify", digest)
    line = _error_line(err)
    assert code == 1 and "1 missing or corrupt" in line, err
    assert f"`graven build --no-cache {commit}` in its repository" in line, line
    assert "`graven import`" in line and "`graven pull`" in line and "README: Backups" in line, line

    # followed literally: the command it names, in the repository
    named = line.split("`graven build --no-cache ", 1)[1].split("`", 1)[0].split()
    code, _, err = run_cli("build", "--no-cache", *named, cwd=repo)
    assert code == 0, err
    _verify_ok(run_cli, digest)


def test_an_export_of_a_damaged_object_sends_to_verify(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    repo = make_repo(tmp_path / "repo", {"big/blob.bin": BIG})
    digest = _build(run_cli, repo)
    _flip(LocalStore.at(graven_home / "objects").loose_path(Digest(_sha(BIG))), 10)
    for args in (("-o", str(tmp_path / "out.tar.zst")), ("-o", "-")):
        code, _, err = run_cli("export", digest, *args)
        assert code == 1 and err.count("\n") == 1, err
        assert f"(while exporting {digest}); run `graven verify` on the artifact" in err, err
