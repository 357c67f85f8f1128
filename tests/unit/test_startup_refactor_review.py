"""Review of ab564a1 (hand-written value classes, lazy hooks): what a caller of the old dataclasses and
of the deploy use case could rely on and no longer can."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graven.core.checkpoint import Checkpoint
from graven.deploy.plan import PolicyDecision, TreeDiff
from graven.model.digest import Digest
from graven.model.logentry import LogEvent
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry
from graven.service import environments
from graven.service.environments import EnvState
from helpers_deploy import World, env_toml, make_world

SHA = "ab" * 32


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Staging without activate or health commands: no deployment step needs graven.deploy.hooks."""
    made = make_world(tmp_path, monkeypatch, env_toml("app", {"staging": {"path": "staging"}}))
    yield made
    made.close()


def test_a_failure_after_the_switch_is_switched_back_without_importing_hooks(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the switch must switch back even if graven.deploy.hooks cannot be loaded then."""
    import graven.deploy
    import graven.service.deploy as deploy_mod

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    from graven.service.deploy_release import switch as real_switch  # what deploy_mod calls

    def switch_then_fail(*args: Any, **kwargs: Any) -> None:
        real_switch(*args, **kwargs)
        # From here on the hooks module cannot be loaded (EMFILE, or the install replaced mid-deploy):
        # the failure path, which needs no hook here, must not depend on loading it.
        monkeypatch.delattr(graven.deploy, "hooks", raising=False)
        monkeypatch.setitem(sys.modules, "graven.deploy.hooks", None)
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(deploy_mod, "switch", switch_then_fail)
    result = world.deploy(v2, "staging")
    assert not result.ok and result.rolled_back_to == v1
    assert world.live("staging") == v1
    history = [(h["kind"], h["result"]) for h in environments.history(world.ctx(), "staging")]
    assert history == [("deploy", "ok"), ("deploy", "failed"), ("auto-rollback", "ok")]


@pytest.mark.parametrize(
    "assign",
    [
        lambda: setattr(Digest(SHA), "hex", "cd" * 32),
        lambda: setattr(FileEntry("a", SHA, 1), "size", 2),
        lambda: setattr(LogEvent("deploy"), "result", "failed"),
        lambda: setattr(PolicyDecision(), "refusal", "no"),
    ],
    ids=["Digest", "FileEntry", "LogEvent", "PolicyDecision"],
)
def test_assignment_to_a_frozen_value_still_raises_attribute_error(assign: Any) -> None:
    """Assignment to a frozen value raises an AttributeError (graven's FrozenInstanceError)."""
    from graven.core.record import FrozenInstanceError

    with pytest.raises(FrozenInstanceError) as caught:
        assign()
    assert isinstance(caught.value, AttributeError)


def _shape(value: object) -> str:
    # _Fields.__init_subclass__ sets __match_args__ at run time, out of mypy's sight: hence [misc]
    # (the manifest entries are NamedTuples, whose __match_args__ mypy knows)
    match value:
        case FileEntry(path, sha256, size, executable):
            return f"file {path} {sha256[:4]} {size} {executable}"
        case SymlinkEntry(path, target):
            return f"link {path} -> {target}"
        case DirEntry(path):
            return f"dir {path}"
        case Digest(hex_):  # type: ignore[misc]
            return f"digest {hex_[:4]}"
        case TreeDiff(added, removed, changed, unchanged):  # type: ignore[misc]
            return f"diff {len(added)} {len(removed)} {len(changed)} {unchanged}"
        case EnvState(name, path):  # type: ignore[misc]
            return f"env {name} {path}"
        case Checkpoint(origin, size):  # type: ignore[misc]
            return f"checkpoint {origin} {size}"
    return "?"


def test_positional_class_patterns_still_match() -> None:
    """match/case with positional sub-patterns worked on the dataclasses (__match_args__) and still does."""
    assert _shape(FileEntry("a", SHA, 1)) == "file a abab 1 False"
    assert _shape(SymlinkEntry("l", "a")) == "link l -> a"
    assert _shape(DirEntry("d")) == "dir d"
    assert _shape(Digest(SHA)) == "digest abab"
    assert _shape(TreeDiff(("a",), (), (), 3)) == "diff 1 0 0 3"
    assert _shape(EnvState("prod", "/srv")) == "env prod /srv"
    assert _shape(Checkpoint("o", 2, bytes(32))) == "checkpoint o 2"


def test_random_uuid_is_a_version_4_uuid_the_stdlib_reads_back() -> None:
    """graven.runtime.random_uuid replaces uuid.uuid4 on the build's start-up path."""
    import uuid

    from graven.runtime import random_uuid

    seen = set()
    for _ in range(200):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 200
