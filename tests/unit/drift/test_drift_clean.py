"""graven.drift.clean: the snapshot of a clean check, its encoding and its comparison with a tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.drift import clean

KEY = b"k" * 32
INT64 = st.integers(min_value=0, max_value=2**63 - 1)
PATHS = st.lists(st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s), max_size=8, unique=True)


def test_names_with_a_nul_byte_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        clean.encode(
            KEY,
            _bound(),
            dirs=[""],
            dir_records=[(1, 2, 3)],
            files=["a\x00b"],
            file_records=[(1, 2, 3, 4, 5)],
            links=[],
            targets=[],
        )


def _bound(dev: int = 1) -> dict[str, str | int]:
    return clean.binding(
        env="prod",
        path="/srv/prod",
        release="a" * 64,
        config="config/prod.toml",
        pipeline=None,
        trust="f" * 64,
        dev=dev,
        current=("symlink", "releases/" + "a" * 64),
        config_link=("missing", None),
    )


@settings(max_examples=60, deadline=None)
@given(
    dirs=PATHS,
    files=PATHS,
    links=PATHS,
    numbers=st.lists(INT64, min_size=5, max_size=5),
    targets=st.text(max_size=30).filter(lambda s: "\x00" not in s),
)
def test_encode_decode_round_trip(
    dirs: list[str], files: list[str], links: list[str], numbers: list[int], targets: str
) -> None:
    all_dirs = ["", *dirs]
    dir_records = [(numbers[0], numbers[1], numbers[2])] * len(all_dirs)
    file_records = [(numbers[0], numbers[1], numbers[2], numbers[3], numbers[4])] * len(files)
    data = clean.encode(
        KEY,
        _bound(),
        dirs=all_dirs,
        dir_records=dir_records,
        files=files,
        file_records=file_records,
        links=links,
        targets=[targets] * len(links),
    )
    snap = clean.decode(KEY, data)
    assert snap is not None
    assert snap.binding == _bound()
    fs = [p.encode("utf-8", "surrogateescape") for p in all_dirs]
    assert snap.dirs == fs and list(snap.dir_records) == [v for r in dir_records for v in r]
    assert snap.files == [p.encode("utf-8", "surrogateescape") for p in files]
    assert list(snap.file_records) == [v for r in file_records for v in r]
    assert snap.links == [p.encode("utf-8", "surrogateescape") for p in links]
    assert snap.targets == [targets.encode("utf-8", "surrogateescape")] * len(links)
    assert clean.decode(b"x" * 32, data) is None  # another home's key
    for cut in (1, 32, len(data) // 2):
        assert clean.decode(KEY, data[:-cut]) is None
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x40
    assert clean.decode(KEY, bytes(flipped)) is None


def _snapshot_of(root: Path) -> clean.CleanSnapshot:
    """What a clean check would record for the tree at ``root`` now."""
    dirs, dir_records, files, file_records, links, targets = [""], [], [], [], [], []
    st_root = os.lstat(root)
    dir_records.append((st_root.st_ino, st_root.st_mtime_ns, st_root.st_ctime_ns))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            s = os.lstat(root / rel)
            if (root / rel).is_symlink():
                links.append(rel)
                targets.append(os.readlink(root / rel))
            elif (root / rel).is_dir():
                dirs.append(rel)
                dir_records.append((s.st_ino, s.st_mtime_ns, s.st_ctime_ns))
            else:
                files.append(rel)
                file_records.append((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_mode))
    data = clean.encode(
        KEY,
        _bound(os.lstat(root).st_dev),
        dirs=dirs,
        dir_records=dir_records,
        files=files,
        file_records=file_records,
        links=links,
        targets=targets,
    )
    snap = clean.decode(KEY, data)
    assert snap is not None
    return snap


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "release"
    (root / "app").mkdir(parents=True)
    (root / "app/main.py").write_text("print('hi')\n")
    (root / "app/current.py").symlink_to("main.py")
    (root / "empty").mkdir()
    return root


def test_unchanged_tree_and_each_kind_of_change(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert clean.unchanged(_snapshot_of(root), str(root))
    # a symlink retargeted, with the directory's record made to match (as a forger with the key
    # would): the target itself is compared
    snap = _snapshot_of(root)
    (root / "app/current.py").unlink()
    (root / "app/current.py").symlink_to("other.py")
    snap.dir_records = _snapshot_of(root).dir_records
    assert not clean.unchanged(snap, str(root))
    assert clean.unchanged(_snapshot_of(root), str(root))
    # a file's content (size, times and ctime move)
    snap = _snapshot_of(root)
    (root / "app/main.py").write_text("print('HI')\n")
    assert not clean.unchanged(snap, str(root))
    # a directory replaced by a symlink to an identical copy: stopped at the directory
    snap = _snapshot_of(root)
    os.rename(root / "app", tmp_path / "app-copy")
    (root / "app").symlink_to(tmp_path / "app-copy")
    assert not clean.unchanged(snap, str(root))
    # another device than recorded; a release that is a symlink; a missing release
    snap = _snapshot_of(root)
    snap.binding["dev"] = int(snap.binding["dev"]) + 1
    assert not clean.unchanged(snap, str(root))
    (tmp_path / "alias").symlink_to(root)
    assert clean.unchanged(_snapshot_of(root), str(root))
    assert not clean.unchanged(_snapshot_of(root), str(tmp_path / "alias"))
    assert not clean.unchanged(_snapshot_of(root), str(tmp_path / "missing"))


def test_trust_fingerprint_follows_every_trust_file(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    empty = clean.trust_fingerprint(trust)  # no directory: nothing trusted
    trust.mkdir()
    assert clean.trust_fingerprint(trust) == empty
    (trust / "ci.pub").write_text("key one\n")
    one = clean.trust_fingerprint(trust)
    assert one not in (empty, "")
    (trust / ".hidden").write_text("ignored")
    assert clean.trust_fingerprint(trust) == one
    (trust / "revoked").write_text("ab" * 32 + "\n")
    revoked = clean.trust_fingerprint(trust)
    assert revoked != one
    (trust / "revoked").unlink()
    (trust / "ci.pem").write_text("key one\n")  # the same bytes under another name
    assert clean.trust_fingerprint(trust) not in (one, revoked)
    (trust / "ci.pem").unlink()
    (trust / "ci.pub").write_text("key two\n")
    assert clean.trust_fingerprint(trust) not in (one, revoked, "")


def test_trust_fingerprint_follows_the_home_policy_and_the_key_files_it_names(tmp_path: Path) -> None:
    trust, policy = tmp_path / "trust", tmp_path / "policy.toml"
    trust.mkdir()
    none = clean.trust_fingerprint(trust, policy)
    assert none == clean.trust_fingerprint(trust)  # no policy.toml: as before it
    policy.write_text(f'keys = ["ci.pub"]\n[env.prod]\nkeys = ["sha256:{"ab" * 32}"]\n')
    missing = clean.trust_fingerprint(trust, policy)  # a key named by its id is no file
    assert missing not in (none, "")
    (tmp_path / "ci.pub").write_text("key one\n")
    one = clean.trust_fingerprint(trust, policy)
    assert one not in (none, missing, "")
    (tmp_path / "ci.pub").write_text("key two\n")
    assert clean.trust_fingerprint(trust, policy) not in (none, missing, one, "")
    policy.write_text("keys = [\n")  # not TOML: the full check names it
    assert clean.trust_fingerprint(trust, policy) == ""
