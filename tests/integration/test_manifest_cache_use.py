"""Who reads the cache of parsed manifests (GRAVEN_HOME/cache/manifests) and who never does: deploy,
drift and a carried-forward build read it; `graven verify` re-hashes the store's copy; an entry that
was not written under this home's key is ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from graven.errors import IntegrityError
from graven.model.digest import Digest
from graven.model.manifest import FileEntry, TreeManifest
from graven.service.artifacts import load_manifest, verify_artifact
from graven.service.context import Context
from graven.service.drift import check
from graven.service.drift_targets import DriftSession
from graven.store.local import LocalStore
from graven.store.manifest_cache import encode
from helpers_deploy import World, tree_problems


def _with_record_key(world: World) -> World:
    """The cache is kept only in a home that has a record key (a deploy makes it; nothing else must)."""
    assert len(world.ctx().record_key) == 32
    return world


def _cache_file(world: World, digest: str) -> Path:
    return world.home / "cache" / "manifests" / Digest.parse(digest).hex


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count manifests parsed from bytes (what the cache saves)."""
    parsed: list[int] = []
    real = TreeManifest.from_bytes

    def counting(data: bytes) -> TreeManifest:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(TreeManifest, "from_bytes", staticmethod(counting))
    return parsed


def _store_refuses(monkeypatch: pytest.MonkeyPatch, digest: str) -> list[str]:
    """Make every store read of ``digest`` fail as a corrupt object would; the reads tried."""
    tried: list[str] = []
    real = LocalStore.read

    def read(self: LocalStore, wanted: Digest, *args: Any, **kwargs: Any) -> bytes:
        if str(wanted) == digest:
            tried.append(digest)
            raise IntegrityError(f"object {digest} is corrupt")
        return real(self, wanted, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "read", read)
    return tried


def test_a_deploy_fills_the_cache_and_drift_reads_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    assert _cache_file(world, digest).is_file()
    stored = load_manifest(world.ctx(), Digest.parse(digest), cached=False).to_bytes()
    parsed = _no_parsing(monkeypatch)
    manifest = load_manifest(world.ctx(), Digest.parse(digest))
    assert manifest.digest == Digest.parse(digest)
    assert manifest.to_bytes() == stored
    index = DriftSession(world.ctx()).index(digest)
    assert index.manifest.entries == manifest.entries
    (report,) = check(world.ctx(), ["staging"], full=True)
    assert report.clean
    assert parsed == []  # the manifest was never parsed again
    # a hit still reads the store's copy: a corrupt manifest fails as without the cache
    _store_refuses(monkeypatch, digest)
    with pytest.raises(IntegrityError):
        load_manifest(world.ctx(), Digest.parse(digest))
    assert tree_problems(world.env_dir("staging") / "current", manifest) == []


def test_a_build_keeps_its_manifest_and_an_import_only_home_keeps_nothing(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build leaves its parsed manifest for the commands that follow (and makes the record key
    for it); a home that only imports and verifies gets no keys/ and no cache."""
    from graven.home import Home
    from graven.service.transfer import export_artifact, import_archive

    digest = world.build()
    assert (world.home / "keys" / "records.hmac").is_file()
    assert _cache_file(world, digest).is_file()
    parsed = _no_parsing(monkeypatch)
    archive = tmp_path / "app.tar"
    export_artifact(world.ctx(), Digest.parse(digest), archive)  # the manifest from the cache
    assert parsed == []
    monkeypatch.undo()
    other = Context(home=Home(root=tmp_path / "home2"))
    try:
        assert import_archive(other, archive).digest == digest
        assert verify_artifact(other, Digest.parse(digest)).ok
        assert world.manifest(digest).entries == load_manifest(other, Digest.parse(digest)).entries
    finally:
        other.close()
    assert not (tmp_path / "home2" / "keys").exists()
    assert not (tmp_path / "home2" / "cache").exists()


def test_verify_never_trusts_the_cache(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = _with_record_key(world).build()
    world.manifest(digest)  # cached now
    assert _cache_file(world, digest).is_file()
    _store_refuses(monkeypatch, digest)
    report = verify_artifact(world.ctx(), Digest.parse(digest))
    assert not report.ok
    assert [p.path for p in report.problems] == ["(manifest)"]


def test_an_entry_under_another_key_is_ignored(world: World) -> None:
    digest = _with_record_key(world).build()
    real = world.manifest(digest)
    forged = [FileEntry("app/evil.sh", "00" * 32, 1, True)]
    _cache_file(world, digest).write_bytes(encode(bytes(32), Digest.parse(digest).hex, forged))
    assert world.manifest(digest).entries == real.entries
    result = world.deploy(digest, "staging")
    assert result.ok
    assert tree_problems(world.env_dir("staging") / "current", real) == []
    assert not (world.env_dir("staging") / "current" / "app" / "evil.sh").exists()
    # the entry was replaced by one this home wrote
    assert Context(home=world.ctx().home).manifest_cache.get(Digest.parse(digest).hex) == real.entries


def test_a_carried_build_reads_the_cached_manifest(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from graven.service import build as build_module
    from graven.service.build import build

    first = _with_record_key(world).build()
    world.manifest(first)  # cached
    world.commit({"app/version.txt": "version 2\n"})

    def refuse(data: bytes) -> Any:
        raise AssertionError("the earlier manifest was parsed again")

    monkeypatch.setattr(build_module, "unvalidated_entries", refuse)
    carried = build(world.ctx(), path=world.repo).digest
    monkeypatch.undo()
    assert carried == build(world.ctx(), path=world.repo, use_cache=False).digest
