"""The pure core of drift detection: every kind of difference, ignore globs, racy records, alerts and
heal plans."""

from __future__ import annotations

import json
import os
from pathlib import Path

from graven.core.drift import (
    Difference,
    EnvExpectation,
    EnvObservation,
    Observed,
    alert_transition,
    compare_env,
    compare_tree,
    is_racy,
    keys_of,
    make_alert,
    plan_heal,
    summarize,
)
from graven.core.globs import GlobSet
from graven.drift.alerts import AlertSender
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest

A = "a" * 64
B = "b" * 64
HEX = "c" * 64

MANIFEST = TreeManifest.of(
    [
        FileEntry("app/main.py", A, 10),
        FileEntry("bin/run", B, 20, executable=True),
        SymlinkEntry("app/current.py", "main.py"),
        DirEntry("var/empty"),
    ]
)


def clean_tree() -> dict[str, Observed]:
    return {
        "app": Observed("dir", 0o555),
        "bin": Observed("dir", 0o555),
        "var": Observed("dir", 0o555),
        "var/empty": Observed("dir", 0o555),
        "app/main.py": Observed("file", 0o444, 10),
        "bin/run": Observed("file", 0o555, 20, B),
        "app/current.py": Observed("symlink", target="main.py"),
    }


def kinds(diffs: list[Difference]) -> list[tuple[str, str]]:
    return [(d.path, d.kind) for d in diffs]


def test_an_identical_tree_has_no_differences() -> None:
    assert compare_tree(MANIFEST, clean_tree()) == []
    assert compare_tree(MANIFEST, clean_tree(), root_mode=0o555) == []
    assert kinds(compare_tree(MANIFEST, clean_tree(), root_mode=0o755)) == [(".", "mode")]
    verified = {"app/main.py", "bin/run"}
    tree = {k: v for k, v in clean_tree().items() if k not in verified}
    assert compare_tree(MANIFEST, tree, verified=verified) == []


def test_every_kind_of_tree_difference_is_named() -> None:
    tree = clean_tree()
    tree["app/main.py"] = Observed("file", 0o444, 10, B)  # same size, other content
    tree["bin/run"] = Observed("file", 0o444, 20)  # chmod -x
    tree["app/current.py"] = Observed("symlink", target="../bin/run")
    tree["app/new.py"] = Observed("file", 0o644, 3)
    del tree["var/empty"]
    tree["bin"] = Observed("dir", 0o755)
    assert kinds(compare_tree(MANIFEST, tree)) == [
        ("app/current.py", "target"),
        ("app/main.py", "modified"),
        ("app/new.py", "added"),
        ("bin", "mode"),
        ("bin/run", "mode"),
        ("var/empty", "removed"),
    ]


def test_type_changes_and_sizes() -> None:
    tree = clean_tree()
    tree["app/main.py"] = Observed("symlink", target="/etc/passwd")
    tree["app/current.py"] = Observed("file", 0o444, 7)
    tree["var/empty"] = Observed("file", 0o444, 0)
    tree["bin/run"] = Observed("file", 0o555, 21)  # not hashed, but the size differs
    diffs = compare_tree(MANIFEST, tree)
    assert kinds(diffs) == [
        ("app/current.py", "type"),
        ("app/main.py", "type"),
        ("bin/run", "modified"),
        ("var/empty", "type"),
    ]
    assert diffs[1].expected == "file" and diffs[1].actual == "symlink"


def test_a_directory_replaced_by_a_file_removes_what_was_below() -> None:
    tree = {k: v for k, v in clean_tree().items() if not k.startswith("app")}
    tree["app"] = Observed("file", 0o644, 5)
    assert kinds(compare_tree(MANIFEST, tree)) == [
        ("app", "type"),
        ("app/current.py", "removed"),
        ("app/main.py", "removed"),
    ]


def test_ignore_globs_cover_paths_and_the_directories_below_them() -> None:
    tree = clean_tree()
    tree["var/cache"] = Observed("dir", 0o755)
    tree["var/cache/x"] = Observed("file", 0o644, 1)
    tree["var/log.txt"] = Observed("file", 0o644, 1)
    del tree["var/empty"]
    tree["app/main.py"] = Observed("file", 0o444, 10, B)
    assert kinds(compare_tree(MANIFEST, tree, ignore=GlobSet.of(["var/**"]))) == [("app/main.py", "modified")]
    assert ("var/log.txt", "added") not in kinds(
        compare_tree(MANIFEST, tree, ignore=GlobSet.of(["var/*.txt"]))
    )


def test_unreadable_files_are_modified() -> None:
    tree = clean_tree()
    tree["app/main.py"] = Observed("file", 0o444, 10, "unreadable: Permission denied")
    diffs = compare_tree(MANIFEST, tree)
    assert kinds(diffs) == [("app/main.py", "modified")]
    assert diffs[0].actual == "unreadable: Permission denied"


def test_the_environment_links() -> None:
    want = EnvExpectation(HEX, "config/prod.toml")
    good = EnvObservation("symlink", f"releases/{HEX}", True, "symlink", "current/config/prod.toml")
    assert compare_env(want, good) == []
    swapped = EnvObservation("symlink", f"releases/{A}", True, "symlink", "current/config/prod.toml")
    assert kinds(compare_env(want, swapped)) == [("current", "current")]
    unknown = EnvObservation("symlink", f"releases/{B}", False, "symlink", "current/config/prod.toml")
    assert kinds(compare_env(want, unknown)) == [("current", "unknown-release")]
    elsewhere = EnvObservation("symlink", "/srv/evil", False, "missing", None)
    assert kinds(compare_env(want, elsewhere)) == [("current", "current"), ("config", "config")]
    assert kinds(compare_env(want, EnvObservation("dir", None, False, "file", None))) == [
        ("current", "current"),
        ("config", "config"),
    ]
    no_config = EnvExpectation(HEX, None)
    assert compare_env(no_config, EnvObservation("symlink", f"releases/{HEX}", True, "missing", None)) == []
    assert kinds(compare_env(no_config, good)) == [("config", "config")]


def test_racy_records_are_never_trusted() -> None:
    assert not is_racy(100, 100, 101)
    assert is_racy(100, 101, 101)  # changed in the tick of the recording
    assert is_racy(101, 100, 101)
    assert is_racy(5, 5, None)  # unknown recording time


def test_one_alert_per_new_drift_and_one_when_it_resolves() -> None:
    a, b = ("x", "modified"), ("y", "added")
    event, alerted = alert_transition(frozenset(), frozenset({a}))
    assert event == "drift" and alerted == {a}
    event, alerted = alert_transition(alerted, frozenset({a}))
    assert event is None
    event, alerted = alert_transition(alerted, frozenset({a, b}))
    assert event == "drift"
    event, alerted = alert_transition(alerted, frozenset({b}))
    assert event is None and alerted == {b}
    event, alerted = alert_transition(alerted, frozenset())
    assert event == "resolved" and alerted == frozenset()
    assert alert_transition(alerted, frozenset()) == (None, frozenset())


def test_the_alert_payload() -> None:
    diffs = [Difference(f"f{i}", "modified") for i in range(7)] + [Difference("g", "added")]
    alert = make_alert(
        "drift",
        env="prod",
        path="/srv/prod",
        digest="sha256:" + HEX,
        commit="abc",
        name="shop",
        time="2026-01-01T00:00:00Z",
        differences=diffs,
        alerted=keys_of(diffs[:2]),
    )
    doc = alert.to_json()
    assert doc["format"] == "graven.drift-alert/v1" and doc["env"] == "prod" and doc["commit"] == "abc"
    assert doc["kinds"] == {"modified": 7, "added": 1} == summarize(diffs)
    assert doc["paths"] == [*(f"f{i}" for i in range(7)), "g"] and len(doc["new"]) == 6
    assert doc["text"].startswith(
        "graven: DRIFT in prod (shop cccccccccccc at /srv/prod): 7 modified, 1 added"
    )
    assert doc["text"].endswith("f0, f1, f2, f3, f4 and 3 more")
    resolved = make_alert(
        "resolved", env="prod", path="/p", digest=None, commit=None, name=None, time="t", differences=[]
    )
    assert "resolved" in resolved.to_json()["text"]


def test_an_alert_about_a_tree_wiped_whole_is_cut_to_a_payload_chat_tools_take() -> None:
    """Every drifted path went into the payload three times over: a release wiped whole made a POST of
    megabytes, which chat tools refuse (413) and a slow link may not send in the webhook's time."""
    diffs = [Difference(f"app/f{i:05d}.py", "removed") for i in range(2500)]
    doc = make_alert(
        "drift", env="prod", path="/p", digest=None, commit=None, name=None, time="t", differences=diffs
    ).to_json()
    assert doc["count"] == 2500 and doc["kinds"] == {"removed": 2500} and doc["truncated"] is True
    assert len(doc["paths"]) == len(doc["differences"]) == len(doc["new"]) == 1000
    assert doc["paths"][0] == "app/f00000.py" and doc["paths"][-1] == "app/f00999.py"
    assert len(json.dumps(doc)) < 300_000
    small = make_alert(
        "drift", env="prod", path="/p", digest=None, commit=None, name=None, time="t", differences=diffs[:3]
    ).to_json()
    assert small["truncated"] is False and len(small["paths"]) == 3


def test_heal_plans() -> None:
    diffs = [
        Difference("current", "current"),
        Difference("config", "config"),
        Difference("app", "type", "dir", "file"),
        Difference("app/main.py", "removed", "file"),
        Difference("app/current.py", "removed", "symlink"),
        Difference("bin/run", "mode"),
        Difference("extra", "added"),
        Difference("extra/deeper", "added"),
        Difference("var/empty", "removed", "dir"),
    ]
    plan = plan_heal(MANIFEST, diffs)
    assert plan.current and plan.config and not plan.empty
    assert plan.remove == ("app", "extra")
    assert plan.mkdirs == ("app", "var/empty")
    assert [f.path for f in plan.files] == ["app/main.py", "bin/run"]
    assert [s.path for s in plan.symlinks] == ["app/current.py"]
    assert plan_heal(MANIFEST, []).empty


def test_a_heal_plan_of_many_added_paths_takes_time_in_proportion() -> None:
    """Whoever can write a directory of the release adds 100,000 empty files: the plan kept only the
    outermost paths to remove by comparing each with every one kept before (quadratic: 38 s for 20,000
    names, hours for 100,000), all of it under the deploy lock (no deployment meanwhile) and before a
    stopping watcher could abandon the heal. Each path's own parents are looked up instead."""
    import time

    many = [Difference(f"app/x{i}", "added") for i in range(100_000)]
    nested = [Difference("extra", "added"), Difference("extra/a", "added"), Difference("extra/a/b", "added")]
    nested += [Difference(f"extra/a/f{i}", "added") for i in range(100_000)]
    for diffs, outermost in ((many, 100_000), (nested, 1)):
        started = time.monotonic()
        plan = plan_heal(MANIFEST, diffs)
        assert time.monotonic() - started < 5.0  # well under 1 s; quadratic, it never ends
        assert len(plan.remove) == outermost
    plan = plan_heal(MANIFEST, [*nested[:3], Difference("extra2", "added"), Difference("ext/ra", "added")])
    assert plan.remove == ("ext/ra", "extra", "extra2")  # deepest first; "extra2" is not below "extra"


def test_a_heal_plan_counts_fixing_the_release_directory_itself() -> None:
    """A release directory whose owner, extended attributes or mode drifted is fixed by every heal, but
    the plan left it out: `graven heal` said "create or fix 0 directories" and --plan --json had no
    step for it. It is the plan's directory "." (a missing one is rebuilt whole, not planned)."""
    for kind in ("attributes", "mode"):
        plan = plan_heal(MANIFEST, [Difference(".", kind, "as deployed", "owner uid 12345 (deployed as 0)")])
        assert plan.mkdirs == (".",) and not plan.empty, kind
        assert plan.to_json()["mkdirs"] == ["."]
    plan = plan_heal(MANIFEST, [Difference(".", "mode"), Difference("var/empty", "removed", "dir")])
    assert plan.mkdirs == (".", "var/empty")
    assert plan_heal(MANIFEST, [Difference(".", "removed", "dir")]).mkdirs == ()


def test_an_alert_about_a_name_that_is_not_utf8_is_still_delivered(tmp_path: Path) -> None:
    """An added file whose name is not UTF-8 (os.fsdecode gives it surrogate escapes) was listed raw in
    the payload's `paths`: the alert sender's UTF-8 encoding failed, so neither the alert command nor
    the webhook got the alert (recorded as alert-failed). An intruder could silence the alert of a
    drift by naming its file with one such byte. `paths` names it as `differences` does (`\\xNN`)."""
    name = os.fsdecode(b"app/evil\xff.py")
    diffs = [Difference(name, "added", None, "file"), Difference("app/main.py", "modified")]
    alert = make_alert(
        "drift",
        env="prod",
        path="/srv/prod",
        digest="sha256:" + HEX,
        commit="abc",
        name="shop",
        time="2026-01-01T00:00:00Z",
        differences=diffs,
    )
    doc = alert.to_json()
    assert doc["paths"] == [d["path"] for d in doc["differences"]] == ["app/evil\\xff.py", "app/main.py"]
    out = tmp_path / "alert.json"
    ok, channels = AlertSender(command=f"cat > {out}").send(doc)
    assert (ok, channels) == (True, {"command": "exit 0"})
    assert json.loads(out.read_bytes().decode("utf-8"))["paths"][0] == "app/evil\\xff.py"
