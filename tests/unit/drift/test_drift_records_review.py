"""Review of the drift / deploy values written by hand instead of @dataclass: the ones the other tests
leave out (ReleaseIndex, Checked), EnvSettings.with_requires against dataclasses.replace, and that the
modules on the path of `graven drift` / `deploy` create no dataclass."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from graven.core.drift import Difference, EnvExpectation
from graven.core.globs import GlobSet
from graven.core.record import Frozen, Record
from graven.deploy.settings import EnvSettings
from graven.drift.scan import ReleaseIndex, ScanResult
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest
from graven.service.drift_check import Checked
from graven.service.drift_report import DriftReport

_MODULES = (
    "graven.core.drift",
    "graven.drift.cache",
    "graven.drift.scan",
    "graven.deploy.statdb",
    "graven.deploy.settings",
    "graven.service.drift_check",
    "graven.service.deploy_verify",
)


def _manifest() -> TreeManifest:
    return TreeManifest.of(
        [DirEntry("empty"), FileEntry("app/a.py", "ab" * 32, 1), SymlinkEntry("link", "app/a.py")]
    )


def test_release_index_is_a_frozen_value() -> None:
    index = ReleaseIndex.of(_manifest())
    assert isinstance(index, Frozen) and not hasattr(index, "__dict__")
    assert index._fields == vars(ReleaseIndex)["__match_args__"]
    assert index._fields == (
        "manifest",
        "digest_hex",
        "files",
        "symlinks",
        "dirs",
        "dir_set",
        "children",
        "positions",
    )
    again = ReleaseIndex(*(getattr(index, name) for name in index._fields))
    assert again == index and again == ReleaseIndex(**{n: getattr(index, n) for n in index._fields})
    assert repr(again).startswith("ReleaseIndex(manifest=")
    with pytest.raises(AttributeError):
        index.digest_hex = "x"
    # dict fields: unhashable, as the frozen dataclass was
    with pytest.raises(TypeError, match="unhashable type"):
        hash(index)


def test_checked_is_a_mutable_value() -> None:
    index = ReleaseIndex.of(_manifest())
    report = DriftReport(
        env="prod",
        path="/srv",
        digest="ab",
        name=None,
        commit=None,
        mode="full",
        differences=[Difference("a", "added")],
    )
    fields = (report, index, ScanResult(), EnvExpectation("ab"), GlobSet(()))
    checked = Checked(*fields)
    assert isinstance(checked, Record) and checked == Checked(*fields)
    assert Checked.__hash__ is None
    old = dataclasses.make_dataclass("Checked", list(Checked._fields))(*fields)
    assert repr(checked) == repr(old).replace("types.", "")
    checked.scan = ScanResult(files=1)
    assert checked != Checked(*fields)


def test_with_requires_is_what_dataclasses_replace_made() -> None:
    settings = EnvSettings("prod", "/srv", None, None, 60.0, None, 2, 1.0, 10.0, 5, ())
    old = dataclasses.make_dataclass("EnvSettings", list(EnvSettings._fields), frozen=True)(
        *(getattr(settings, n) for n in EnvSettings._fields)
    )
    more = settings.with_requires(("staging",))
    expected = dataclasses.replace(old, requires=("staging",))
    assert tuple(getattr(more, n) for n in more._fields) == dataclasses.astuple(expected)
    assert settings.requires == ()


def test_these_modules_create_no_dataclass() -> None:
    code = f"""
        import importlib, sys
        found = []
        for module in {_MODULES!r}:
            for name, value in vars(importlib.import_module(module)).items():
                if isinstance(value, type) and value.__module__ == module:
                    if "__dataclass_fields__" in vars(value):
                        found.append(module + "." + name)
        print(found)
        """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
