"""Environments on file systems other than ext4: what graven must refuse, and how it says so.

- FAT (vfat, exFAT, some FUSE file systems) has no symbolic links, hard links or permission bits: a
  first deploy there failed at the deploy lock ("cannot open the deploy lock ...: Function not
  implemented", exit 1). It is refused before anything is made, naming what is missing (exit 2).
- A directory that folds case (ext4/f2fs ``casefold``, FAT) cannot hold an artifact with ``README`` and
  ``readme``: the release failed with "File exists" (exit 1); the two paths are now named (exit 2).
- A hook that runs a file of the release on a ``noexec`` mount exits 126 ("Permission denied"); the
  error said "fix the artifact", and now says that the mount is noexec.

Each test mounts its own small file system (helpers_mounts) and unmounts it whatever happens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graven.deploy.fscheck import folds_case
from graven.deploy.materialize import build_release
from graven.deploy.statdb import StatTable
from graven.errors import InputError
from graven.model.manifest import FileEntry, TreeManifest
from graven.store.local import LocalStore
from helpers_deploy import World, env_toml, make_world
from helpers_mounts import mounted_tmpfs

CliResult = tuple[int, str, str]


@pytest.mark.parametrize("plan", [[], ["--plan"]], ids=["deploy", "plan"])
def test_a_first_deploy_onto_a_fat_is_refused_before_anything_is_made(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fat: Path,
    run_cli: Callable[..., CliResult],
    plan: list[str],
) -> None:
    """--plan refuses it alike (it said all was well, and the deploy then failed)."""
    world = make_world(tmp_path, monkeypatch)
    try:
        digest = world.version(1)
        code, out, err = run_cli("deploy", digest, "staging", "--root", fat, *plan)
    finally:
        world.close()
    assert code == 2, (out, err)
    (line,) = err.splitlines()
    assert line.startswith(
        f"graven: error: {fat / 'staging'} is on a file system that cannot hold releases ("
    )
    assert "no Unix permission bits" in line or "no symbolic links" in line, line
    assert sorted(p.name for p in fat.iterdir()) == []  # neither PATH nor .graven nor a probe is left


def test_a_release_with_names_that_differ_only_in_case_is_refused_where_case_folds(
    tmp_path: Path, fat: Path
) -> None:
    store = LocalStore.at(tmp_path / "objects")
    try:
        files = {"app/README": b"big\n", "app/main.py": b"x = 1\n", "app/readme": b"small\n"}
        entries = []
        with store.batch() as batch:
            for path, data in files.items():
                entries.append(FileEntry(path, batch.add(data).hex, len(data), executable=False))
        manifest = TreeManifest.of(entries)
        with pytest.raises(InputError) as raised:
            build_release(store, manifest, fat / "release", StatTable(), fork=False)
    finally:
        store.close()
    assert raised.value.exit_code == 2
    assert "app/README and app/readme are one name there (its file system folds case" in str(raised.value)


@pytest.fixture
def noexec_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    toml = env_toml(
        "app",
        {"staging": {"path": "staging", "activate": "current/bin/run", "health_retries": 0}},
    )
    world = make_world(tmp_path, monkeypatch, toml)
    with mounted_tmpfs(tmp_path / "srv", "noexec"):
        try:
            yield world
        finally:
            world.close()


def test_a_hook_that_cannot_run_on_a_noexec_mount_says_so(noexec_world: World) -> None:
    world = noexec_world
    (world.repo / "bin" / "run").write_text("#!/bin/sh\nexit 0\n")
    digest = world.version(1)
    result = world.deploy(digest, "staging")
    assert not result.ok
    assert "exit 126" in result.message
    assert f"{world.root / 'staging'} is on a file system mounted noexec" in result.message


def test_a_fat_folds_case(fat: Path) -> None:
    assert folds_case(fat) is True
    assert sorted(p.name for p in fat.iterdir()) == []
