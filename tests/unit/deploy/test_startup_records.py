"""The values written by hand instead of @dataclass (graven.core.record, for start-up) behave as the
dataclasses they replaced: positional and keyword construction, equality, hash, repr, refused
assignment, copy and pickle, and the --json forms that asdict() used to make. And the checks that
lost their start-up regexes accept and refuse exactly what the regexes did."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from graven.core.checkpoint import Checkpoint
from graven.core.globs import GlobSet, Selection
from graven.core.paths import check_path, display_path
from graven.core.record import Frozen, FrozenInstanceError, Record
from graven.deploy.hooks import HookResult
from graven.deploy.layout import EnvLayout
from graven.deploy.materialize import BuildStats, ReleaseCheck, Transfer
from graven.deploy.plan import PolicyDecision, PolicyFacts, ReleaseInfo, RetentionPlan, TreeDiff
from graven.deploy.settings import EnvSettings
from graven.errors import GravenError, InputError
from graven.home import Home
from graven.model.digest import Digest
from graven.model.logentry import LogEntry, LogEvent
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest
from graven.model.pipeline import ArtifactSection, BuildSection, EnvSection, FetchSection, Pipeline
from graven.service.artifacts import ArtifactRecord, Problem, VerifyReport
from graven.service.audit import LogVerifyReport, SubtreeRepair
from graven.service.context import Context, NullReporter
from graven.service.deploy import DeployResult
from graven.service.deploy_types import DeployOptions, Target
from graven.service.environments import EnvState, EnvStatus, HoldResult, RejectResult

SHA = "ab" * 32
_ENTRIES = (FileEntry, SymlinkEntry, DirEntry)
FILE = FileEntry("app/main.py", SHA, 12, True)
MANIFEST = TreeManifest.of([FILE, SymlinkEntry("app/link", "main.py"), DirEntry("var")])

# class, keyword arguments (every field, in field order), frozen
CASES: list[tuple[type, dict[str, Any], bool]] = [
    (Digest, {"hex": SHA}, True),
    (FileEntry, {"path": "a", "sha256": SHA, "size": 3, "executable": True}, True),
    (SymlinkEntry, {"path": "a", "target": "b"}, True),
    (DirEntry, {"path": "a"}, True),
    (TreeManifest, {"entries": MANIFEST.entries}, True),
    (
        LogEvent,
        {"event": "deploy", "artifact": SHA, "commit": "c", "env": "prod", "reason": "r", "result": "ok"},
        True,
    ),
    (
        LogEntry,
        {
            "index": 3,
            "time": "t",
            "actor": "a",
            "event": "deploy",
            "artifact": None,
            "commit": None,
            "env": "e",
            "reason": None,
            "result": "ok",
        },
        True,
    ),
    (Checkpoint, {"origin": "o", "size": 2, "root": bytes(32), "extensions": ("x",)}, True),
    (GlobSet, {"patterns": ("a/**", "*.py")}, True),
    (Selection, {"include": GlobSet(("**",)), "exclude": GlobSet(("*.pyc",))}, True),
    (ArtifactSection, {"name": "web", "include": ["**"], "exclude": []}, True),
    (FetchSection, {"steps": ["s"], "lockfiles": ["l"], "outputs": ["o"]}, True),
    (
        BuildSection,
        {
            "steps": ["make"],
            "outputs": ["out"],
            "timeout": 5,
            "sandbox": "none",
            "env": ["CC"],
            "tools": ["cc"],
            "fetch": None,
        },
        True,
    ),
    (
        EnvSection,
        {
            "path": "srv",
            "config": "c",
            "activate": "a",
            "activate_timeout": 1.0,
            "health": "h",
            "health_retries": 1,
            "health_interval": 0.5,
            "health_timeout": 2.0,
            "keep": 3,
            "requires": ["qa"],
            "ignore": ["log/"],
        },
        True,
    ),
    (Pipeline, {"artifact": ArtifactSection("web"), "build": BuildSection(), "env": {}}, True),
    (EnvLayout, {"root": Path("/srv/prod")}, True),
    (
        HookResult,
        {
            "command": "true",
            "returncode": 0,
            "output": "",
            "seconds": 0.5,
            "attempts": 2,
            "error": None,
            "timeout": 3.0,
            "dropped": 0,
        },
        True,
    ),
    (TreeDiff, {"added": ("a",), "removed": (), "changed": ("c",), "unchanged": 4}, True),
    (ReleaseInfo, {"digest": SHA, "last_ok": 2026, "failed": False}, True),
    (RetentionPlan, {"keep": ("a",), "delete": ("b",)}, True),
    (
        PolicyFacts,
        {
            "digest": SHA,
            "env": "prod",
            "kind": "deploy",
            "requires": ("qa",),
            "healthy_in": frozenset({"qa"}),
            "rejected": None,
            "held": True,
            "held_digest": SHA,
            "override": False,
            "history_ok": True,
            "untested": ("qa",),
            "withdrawn": (("qa", "rolled back"),),
        },
        True,
    ),
    (PolicyDecision, {"refusal": "no", "overridden": ("qa",)}, True),
    (
        DeployOptions,
        {"root": "/srv", "policy_file": Path("p.toml"), "wait": True, "reason": "r", "override": True},
        True,
    ),
    (
        ArtifactRecord,
        {
            "digest": SHA,
            "name": "web",
            "commit": "c",
            "repository": "r",
            "revision": "v",
            "pipeline_digest": None,
            "source_date_epoch": 1,
            "file_count": 2,
            "total_size": 3,
            "origin": "build",
            "created_at": "t",
        },
        True,
    ),
    (Problem, {"path": "a", "object": SHA, "kind": "missing", "detail": "d"}, True),
    (VerifyReport, {"digest": SHA, "objects_checked": 2, "problems": [Problem("a", SHA, "missing")]}, False),
    (
        LogVerifyReport,
        {
            "size": 1,
            "checkpoints_checked": 2,
            "first_bad_index": None,
            "problems": ["x"],
            "root": "r",
            "more_problems": 0,
            "bad_subtrees": 1,
            "repair": SubtreeRepair(1, 1),
        },
        False,
    ),
    (
        SubtreeRepair,
        {"size": 3, "rewritten": 1, "added": 0, "removed": 2, "entry": 3, "error": None},
        False,
    ),
    (HoldResult, {"env": "prod", "held": True, "changed": False, "digest": SHA}, True),
    (RejectResult, {"digest": SHA, "reason": "r", "already": False, "live_in": ("prod",)}, True),
    (
        EnvState,
        {
            "name": "prod",
            "path": "/srv",
            "live_digest": SHA,
            "live_deployment": 3,
            "previous_digest": None,
            "held": False,
            "held_digest": None,
            "hold_reason": None,
            "exists": True,
        },
        False,
    ),
    (Context, {"home": Home(root=Path("/nonexistent/home")), "reporter": NullReporter()}, False),
    (
        BuildStats,
        {
            "files": 3,
            "copied": 1,
            "linked": 2,
            "copied_bytes": 10,
            "linked_bytes": 20,
            "symlinks": 1,
            "dirs": 4,
        },
        False,
    ),
    (Transfer, {"linked": 2, "copied": (FILE,)}, True),
    (ReleaseCheck, {"problems": ["a: modified"], "rehashed": 1, "by_stat": False}, False),
    (
        EnvSettings,
        {
            "name": "prod",
            "path": "/srv/prod",
            "config": "config/prod.toml",
            "activate": None,
            "activate_timeout": 60.0,
            "health": "true",
            "health_retries": 2,
            "health_interval": 1.0,
            "health_timeout": 10.0,
            "keep": 5,
            "requires": ("staging",),
        },
        True,
    ),
]


def _dataclass_like(cls: type, frozen: bool) -> type:
    """The dataclass ``cls`` replaced: same name, same fields in the same order."""
    fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    made = dataclasses.make_dataclass(cls.__name__, list(fields), frozen=frozen)
    made.__qualname__ = cls.__qualname__
    return made


def _ids(case: tuple[type, dict[str, Any], bool]) -> str:
    return case[0].__name__


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_behaves_as_the_dataclass_it_replaced(case: tuple[type, dict[str, Any], bool]) -> None:
    cls, fields, frozen = case
    assert tuple(fields) == cls._fields  # type: ignore[attr-defined]  # every field, in order
    value = cls(**fields)
    old = _dataclass_like(cls, frozen)(**fields)
    assert repr(value) == repr(old)
    assert value == cls(*fields.values())  # positional, in field order
    assert value != old  # another class: never equal, as between two dataclasses
    if cls in _ENTRIES:  # NamedTuples (read in bulk: graven.model.manifest), frozen all the same
        assert issubclass(cls, tuple) and frozen
    else:
        assert issubclass(cls, Frozen if frozen else Record)
    first = next(iter(fields))
    if frozen:
        with pytest.raises(AttributeError, match="cannot assign to field"):
            setattr(value, first, fields[first])
        with pytest.raises(FrozenInstanceError, match="cannot delete field"):  # as the dataclass said
            delattr(value, first)
        try:
            hash(old)
        except TypeError:  # a list or dict field: neither is hashable
            with pytest.raises(TypeError, match="unhashable type"):
                hash(value)
        else:
            assert hash(value) == hash(old) == hash(cls(**fields))
        assert copy.copy(value) == value
    else:
        with pytest.raises(TypeError, match="unhashable type"):
            hash(value)
        setattr(value, first, fields[first])  # mutable, as before
    if cls is not Context:  # a context holds open resources; it was never copied
        assert copy.deepcopy(value) == value
        assert pickle.loads(pickle.dumps(value)) == value


def test_an_unequal_field_makes_unequal_values() -> None:
    assert Digest(SHA) != Digest("cd" * 32)
    assert FileEntry("a", SHA, 1) != FileEntry("a", SHA, 1, True)
    assert PolicyDecision() != PolicyDecision("refused")
    assert EnvState("prod", "/a") != EnvState("prod", "/b")
    assert Digest(SHA) != SHA and FileEntry("a", SHA, 1) != ("a", SHA, 1, False)


def test_an_entry_is_never_equal_to_a_plain_tuple() -> None:
    """The entries are tuples underneath; equality still looks at the kind, from either side."""
    plain: list[tuple[object, ...]] = [("a", SHA, 1, False), ("a", "b"), ("a",)]
    entries = [FileEntry("a", SHA, 1), SymlinkEntry("a", "b"), DirEntry("a")]
    for entry, same_fields in zip(entries, plain, strict=True):
        assert entry != same_fields and same_fields != entry
        assert not entry == same_fields and not same_fields == entry  # noqa: SIM201 (== itself)
        assert entry == tuple.__new__(type(entry), same_fields)  # the bulk readers' construction
        assert {entry: 1}.get(tuple.__new__(type(entry), same_fields)) == 1
    assert FileEntry("a", SHA, 1) not in [("a", SHA, 1, False)]


def test_digests_order_by_hex_and_validate() -> None:
    low, high = Digest("0" * 64), Digest("f" * 64)
    assert low < high and low <= high and high > low and high >= low and sorted([high, low]) == [low, high]
    with pytest.raises(TypeError, match="'<' not supported between instances"):
        assert low < SHA  # type: ignore[operator]
    with pytest.raises(InputError, match="not a sha256 digest"):
        Digest("xyz")


def test_defaults_are_the_dataclasses_defaults() -> None:
    assert ArtifactSection("web") == ArtifactSection("web", ["**"], [])
    assert BuildSection() == BuildSection([], [], 3600, "bubblewrap", [], [], None)
    assert BuildSection().steps is not BuildSection().steps  # a new list each time, as default_factory
    assert EnvSection("srv") == EnvSection("srv", None, None, 60.0, None, 2, 1.0, 10.0, 5, [], [])
    assert Pipeline(ArtifactSection("web")) == Pipeline(ArtifactSection("web"), BuildSection(), {})
    assert DeployOptions() == DeployOptions(None, None, False, None, False)
    assert PolicyDecision().allowed and PolicyDecision().overridden == ()
    assert LogEvent("deploy").result == "ok"
    assert isinstance(Context(Home(root=Path("/nonexistent"))).reporter, NullReporter)
    with pytest.raises(InputError, match="unknown log event type"):
        LogEvent("nothing")
    with pytest.raises(GravenError, match="checkpoint origin must not be empty"):
        Checkpoint("", 0, bytes(32))


def test_the_json_forms_are_what_asdict_made() -> None:
    result = DeployResult(
        True, "prod", "deploy", SHA, "web", None, "/srv", "/srv/releases/x", None, "healthy", "done",
        overridden=("qa",), stats={"files": 2}, removed=(SHA,), seconds=1.5,
    )  # fmt: skip
    data = dataclasses.asdict(
        _dataclass_like(DeployResult, True)(**{f: getattr(result, f) for f in result._fields})
    )
    data["overridden"], data["removed"] = ["qa"], [SHA]
    assert result.to_json() == data and list(result.to_json()) == list(data)
    assert result.to_json()["stats"] is not result.stats
    for value in (
        HoldResult("prod", True, True, SHA),
        ArtifactRecord(SHA, "web", "c", None, None, None, 1, 2, 3, "build", "t"),
        EnvStatus(
            "p", "/s", SHA, "n", "c", "t", "a", "deploy", "healthy", False, None, None, None, SHA, False
        ),
    ):
        old = _dataclass_like(type(value), True)(*value._values())
        assert value.to_json() == dataclasses.asdict(old), type(value).__name__
    reject = RejectResult(SHA, "bad", False, ("prod",))
    assert reject.to_json() == {"digest": SHA, "reason": "bad", "already": False, "live_in": ["prod"]}
    report = VerifyReport(SHA, 1, [Problem("a", SHA, "corrupt", "d")])
    problem = {"path": "a", "object": SHA, "kind": "corrupt", "detail": "d"}
    assert report.to_json() == {"digest": SHA, "ok": False, "objects_checked": 1, "problems": [problem]}


def test_a_target_holds_what_it_was_given() -> None:
    from graven.deploy.settings import resolve_env

    settings = resolve_env({"prod": EnvSection("srv")}, "prod", root="/x", source="graven.toml")
    target = Target(Digest(SHA), "web", None, MANIFEST, settings, "key", SHA)
    assert target.settings is settings and target.manifest is MANIFEST
    assert repr(target).startswith("Target(digest=Digest(hex=")


# -- the checks without start-up regexes ---------------------------------------------------------

_OLD_ANY_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]|(?:^|/)\\.{0,2}(?:/|$)")
_OLD_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ALPHABET = ["a", ".", "/", "\x00", "\x1f", "\x7f", " ", "\x80", "\x9f", "\ud800", "\u00e9"]


def _refused(path: str) -> bool:
    try:
        check_path(path)
    except GravenError:
        return True
    return False


def test_check_path_refuses_what_its_regex_refused() -> None:
    for size in range(5):
        for chars in itertools.product(_ALPHABET, repeat=size):
            path = "".join(chars)
            assert _refused(path) == (_OLD_ANY_BAD.search(path) is not None), repr(path)
            if _OLD_UNPRINTABLE.search(path) is None:
                assert display_path(path) == path


def test_symlink_targets_are_checked_as_before() -> None:
    for target in ("ok\x7f", "ok\x1f", "ok\x85", "ok\ud800", "ok"):
        entries: list[TreeEntry] = [FileEntry("a/f", SHA, 1), SymlinkEntry("a/l", target)]
        if target == "ok":
            TreeManifest.of(entries)
            continue
        with pytest.raises(GravenError, match=r"control characters|not valid UTF-8"):
            TreeManifest.of(entries)


def test_deploy_values_keep_their_defaults_and_json() -> None:
    assert BuildStats() == BuildStats(0, 0, 0, 0, 0, 0, 0)
    assert ReleaseCheck().problems is not ReleaseCheck().problems and not ReleaseCheck().by_stat
    stats = BuildStats(3, 1, 2, 10, 20, 1, 4)
    old = _dataclass_like(BuildStats, False)(*stats._values())
    assert stats.to_json() == dataclasses.asdict(old) and list(stats.to_json()) == list(
        dataclasses.asdict(old)
    )
    settings = EnvSettings("prod", "/srv", None, None, 60.0, None, 2, 1.0, 10.0, 5, ("staging",))
    more = settings.with_requires(("staging", "qa"))
    assert more.requires == ("staging", "qa") and settings.requires == ("staging",)
    assert more == EnvSettings("prod", "/srv", None, None, 60.0, None, 2, 1.0, 10.0, 5, ("staging", "qa"))
