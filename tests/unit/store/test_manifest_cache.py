"""The cache of parsed manifests: exact round trips, and anything not written under this home's key for
this digest is ignored."""

from __future__ import annotations

import os
import stat
import string
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import BackendError
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.store import manifest_cache
from graven.store.manifest_cache import FORMAT, KEEP, RULES, ManifestCache, decode, encode

KEY = bytes(range(32))
DIGEST = "ab" * 32

segment = st.text(alphabet=string.ascii_letters + string.digits + "._- éあ😀", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)


@st.composite
def manifests(draw: st.DrawFn) -> TreeManifest:
    chosen = draw(st.lists(paths, min_size=1, max_size=25, unique=True))
    leaves = [p for p in chosen if not any(o.startswith(p + "/") for o in chosen)]
    entries: list[TreeEntry] = []
    for path in leaves:
        kind = draw(st.sampled_from(["file", "file", "link", "dir"]))
        if kind == "file":
            sha = draw(st.binary(min_size=32, max_size=32)).hex()
            entries.append(FileEntry(path, sha, draw(st.integers(0, 2**62)), draw(st.booleans())))
        elif kind == "link":
            entries.append(SymlinkEntry(path, draw(segment)))
        else:
            entries.append(DirEntry(path))
    return TreeManifest.of(entries)


def sample() -> TreeManifest:
    return TreeManifest.of(
        [
            FileEntry("app/main.py", "01" * 32, 120),
            FileEntry("bin/run", "02" * 32, 0, True),
            SymlinkEntry("app/current", "main.py"),
            DirEntry("var/empty"),
            FileEntry("zé/naïve ✓.txt", "03" * 32, 2**40),
        ]
    )


@settings(max_examples=200)
@given(manifests())
def test_encode_decode_round_trips(manifest: TreeManifest) -> None:
    data = encode(KEY, DIGEST, manifest.entries)
    back = decode(KEY, DIGEST, data)
    assert back == manifest.entries
    assert TreeManifest(back).to_bytes() == manifest.to_bytes()


def test_layout_starts_with_the_format_and_digest() -> None:
    data = encode(KEY, DIGEST, sample().entries)
    assert data.startswith(FORMAT + RULES + b"\n" + DIGEST.encode() + b"\n")


def test_an_entry_of_another_graven_version_is_a_miss() -> None:
    from graven.deploy.recordkey import tag

    body = encode(KEY, DIGEST, sample().entries)[:-32].replace(RULES, b"graven/0.0.0", 1)
    assert decode(KEY, DIGEST, body + tag(KEY, body)) is None


def test_a_size_past_int64_is_not_cached(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "m", lambda: KEY)
    cache.put(DIGEST, [FileEntry("big", "01" * 32, 2**63)])  # no error: simply not kept
    assert cache.get(DIGEST) is None


def test_another_key_or_digest_is_refused() -> None:
    data = encode(KEY, DIGEST, sample().entries)
    assert decode(bytes(32), DIGEST, data) is None
    assert decode(KEY, "cd" * 32, data) is None


@settings(max_examples=150)
@given(st.data())
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    raw = bytearray(encode(KEY, DIGEST, sample().entries))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    assert decode(KEY, DIGEST, bytes(raw)) is None


@settings(max_examples=100)
@given(st.data())
def test_truncated_or_extended_is_refused(data: st.DataObject) -> None:
    raw = encode(KEY, DIGEST, sample().entries)
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert decode(KEY, DIGEST, raw[:cut]) is None
    assert decode(KEY, DIGEST, raw + data.draw(st.binary(min_size=1, max_size=8))) is None


def test_well_tagged_but_malformed_is_refused() -> None:
    """Even bytes tagged under the key are parsed defensively (a bug elsewhere must not crash here)."""
    from graven.deploy.recordkey import tag

    good = encode(KEY, DIGEST, sample().entries)[:-32]
    head = len(FORMAT) + len(RULES) + 66
    for body in (
        good[: head + 8] + b"q" + good[head + 9 :],  # an unknown kind
        good[:head] + (10**6).to_bytes(8, "big") + good[head + 8 :],  # a count past the end
        good.replace(b"current\0main.py", b"current/main.py"),  # one string fewer
        good[: head + 8] + good[head + 8 : head + 13] + good[-40:],  # shas running into the tag
    ):
        assert decode(KEY, DIGEST, body + tag(KEY, body)) is None


def test_a_nul_in_a_path_is_not_cached(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode(KEY, DIGEST, [FileEntry("a\0b", "01" * 32, 1)])
    cache = ManifestCache(tmp_path / "cache" / "manifests", lambda: KEY)
    cache.put(DIGEST, [FileEntry("a\0b", "01" * 32, 1)])
    assert cache.get(DIGEST) is None


def test_put_get_permissions_and_key_on_first_use(tmp_path: Path) -> None:
    asked: list[int] = []

    def key() -> bytes:
        asked.append(1)
        return KEY

    directory = tmp_path / "cache" / "manifests"
    cache = ManifestCache(directory, key)
    assert cache.get(DIGEST) is None
    assert asked == []  # nothing found: no key read
    cache.put(DIGEST, sample().entries)
    assert cache.get(DIGEST) == sample().entries
    assert stat.S_IMODE((directory / DIGEST).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    assert ManifestCache(directory, lambda: bytes(32)).get(DIGEST) is None  # another home's key
    assert cache.get("not a digest") is None


def test_entry_moved_to_another_name_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    cache = ManifestCache(directory, lambda: KEY)
    cache.put(DIGEST, sample().entries)
    os.rename(directory / DIGEST, directory / ("cd" * 32))
    assert cache.get("cd" * 32) is None


def test_symlink_in_place_of_an_entry_is_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    cache = ManifestCache(directory, lambda: KEY)
    cache.put(DIGEST, sample().entries)
    os.rename(directory / DIGEST, tmp_path / "elsewhere")
    (directory / DIGEST).symlink_to(tmp_path / "elsewhere")
    assert cache.get(DIGEST) is None


def test_failures_are_ignored(tmp_path: Path) -> None:
    def no_key() -> bytes:
        raise BackendError("no key")

    cache = ManifestCache(tmp_path / "m", no_key)
    cache.put(DIGEST, sample().entries)  # no key: nothing written, no error
    assert not (tmp_path / "m").exists()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    ManifestCache(blocked / "m", lambda: KEY).put(DIGEST, sample().entries)  # cannot make it: ignored


def test_keeps_only_the_newest(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    cache = ManifestCache(directory, lambda: KEY)
    names = [f"{i:064x}" for i in range(KEEP + 3)]
    for i, name in enumerate(names):
        cache.put(name, sample().entries)
        os.utime(directory / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    cache.put(names[-1], sample().entries)  # rewritten: newest; prunes
    left = sorted(os.listdir(directory))
    assert len(left) == KEEP
    assert names[0] not in left and names[1] not in left and names[2] not in left
    assert names[-1] in left


def test_old_temp_files_are_removed_live_ones_kept(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    old = directory / f".{DIGEST}.tmp-000000000000"
    new = directory / f".{DIGEST}.tmp-111111111111"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (1, 1))
    ManifestCache(directory, lambda: KEY).put(DIGEST, sample().entries)
    assert not old.exists() and new.exists()


def test_keeps_at_most_max_bytes_but_always_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "m"
    cache = ManifestCache(directory, lambda: KEY)
    size = len(encode(KEY, DIGEST, sample().entries))
    monkeypatch.setattr(manifest_cache, "MAX_BYTES", 2 * size + size // 2)  # room for two entries
    names = [f"{i:064x}" for i in range(4)]
    for i, name in enumerate(names):
        cache.put(name, sample().entries)
        os.utime(directory / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    assert sorted(os.listdir(directory)) == names[2:]
    monkeypatch.setattr(manifest_cache, "MAX_BYTES", 1)  # smaller than any entry: the newest stays
    cache.put(names[0], sample().entries)
    assert os.listdir(directory) == [names[0]]


@pytest.mark.parametrize("level", ["cache", "manifests"])
def test_a_symlinked_cache_directory_is_not_written_through(tmp_path: Path, level: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / f"{0:064x}"
    victim.write_bytes(b"someone else's file")
    os.utime(victim, (1, 1))
    home = tmp_path / "home"
    home.mkdir()
    if level == "cache":
        (home / "cache").symlink_to(tmp_path)  # cache/manifests would be tmp_path/manifests
        (tmp_path / "manifests").symlink_to(outside)
    else:
        (home / "cache").mkdir()
        (home / "cache" / "manifests").symlink_to(outside)
    cache = ManifestCache(home / "cache" / "manifests", lambda: KEY)
    with mock.patch.object(manifest_cache, "KEEP", 1):
        cache.put(DIGEST, sample().entries)  # refused quietly: no write, no prune through the link
    assert sorted(os.listdir(outside)) == [victim.name]
    assert victim.read_bytes() == b"someone else's file"
