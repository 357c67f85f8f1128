"""The drift values written by hand instead of @dataclass (start-up of `graven drift`) behave as the
dataclasses they replaced: construction, defaults, ==, hash, repr, order, refused assignment."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from graven.core.drift import Alert, Difference, EnvExpectation, EnvObservation, HealPlan
from graven.core.record import Frozen, Record
from graven.deploy.statdb import StatTable
from graven.drift.cache import VerifiedCache
from graven.drift.scan import ScanResult
from graven.model.manifest import FileEntry, SymlinkEntry

DIFF = Difference("app/a.py", "modified", "sha256:1", "sha256:2")

# class, keyword arguments (every field, in field order), frozen
CASES: list[tuple[type, dict[str, Any], bool]] = [
    (Difference, {"path": "a", "kind": "added", "expected": None, "actual": "file"}, True),
    (EnvExpectation, {"release_hex": "ab" * 32, "config": "config/prod.toml"}, True),
    (
        EnvObservation,
        {
            "current_kind": "symlink",
            "current_target": "releases/x",
            "current_known": True,
            "config_kind": "missing",
            "config_target": None,
        },
        True,
    ),
    (
        Alert,
        {
            "event": "drift",
            "env": "prod",
            "path": "/srv",
            "digest": None,
            "commit": None,
            "name": "web",
            "time": "t",
            "differences": (DIFF,),
            "new": (DIFF,),
            "error": None,
        },
        True,
    ),
    (
        HealPlan,
        {
            "remove": ("x",),
            "mkdirs": ("d",),
            "files": (FileEntry("f", "ab" * 32, 1),),
            "symlinks": (SymlinkEntry("l", "f"),),
            "current": True,
            "config": False,
        },
        True,
    ),
    (VerifiedCache, {"release": "ab" * 32, "dev": 1, "files": [None], "dirs": []}, False),
    (
        ScanResult,
        {
            "observed": {},
            "verified": {"a"},
            "root_mode": 0o555,
            "root_missing": False,
            "files": 1,
            "hashed": 1,
            "listed": 1,
            "cache": None,
            "root_attrs": None,
        },
        False,
    ),
    (StatTable, {"dev": 3, "inodes": {}, "owners": {}, "groups": {}}, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case[0].__name__)
def test_behaves_as_the_dataclass_it_replaced(case: tuple[type, dict[str, Any], bool]) -> None:
    cls, fields, frozen = case
    assert issubclass(cls, Frozen if frozen else Record)
    assert tuple(fields) == cls._fields
    value = cls(**fields)
    old = dataclasses.make_dataclass(cls.__name__, list(fields), frozen=frozen)(**fields)
    assert repr(value) == repr(old).replace("types.", "")
    assert value == cls(*fields.values())
    first = next(iter(fields))
    if frozen:
        with pytest.raises(AttributeError, match="cannot assign to field"):
            setattr(value, first, fields[first])
        assert hash(value) == hash(old)
    else:
        with pytest.raises(TypeError, match="unhashable type"):
            hash(value)
        setattr(value, first, fields[first])
    assert copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(value)) == value


def test_defaults_and_fresh_containers() -> None:
    assert Difference("a", "added") == Difference("a", "added", None, None)
    assert EnvExpectation("ab") == EnvExpectation("ab", None)
    assert HealPlan() == HealPlan((), (), (), (), False, False)
    assert Alert("drift", "e", "p", None, None, None, "t", ()).new == ()
    assert ScanResult() == ScanResult({}, set(), None, False, 0, 0, 0, None)
    assert ScanResult().observed is not ScanResult().observed
    assert VerifiedCache("r", 1).files is not VerifiedCache("r", 1).files
    assert StatTable().inodes is not StatTable().inodes and StatTable().dev is None


def test_differences_order_as_the_dataclass_did() -> None:
    made = dataclasses.make_dataclass("Difference", ["path", "kind", "expected", "actual"], order=True)
    items = [("b", "added", None, None), ("a", "removed", "x", None), ("a", "modified", "x", "y")]
    items += [("a", "modified", "w", "z")]
    assert [tuple(vars(d).values()) for d in sorted(made(*i) for i in items)] == [
        (d.path, d.kind, d.expected, d.actual) for d in sorted(Difference(*i) for i in items)
    ]
    one, same = DIFF, Difference(DIFF.path, DIFF.kind, DIFF.expected, DIFF.actual)
    assert one <= same and one >= same and not one < same and not one > same
    with pytest.raises(TypeError, match="'<' not supported between instances"):
        assert DIFF < ("app/a.py",)
