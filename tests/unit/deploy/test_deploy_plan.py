"""Pure deployment decisions: manifest diffs, retention and policy."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from graven.deploy.plan import (
    PolicyFacts,
    ReleaseInfo,
    config_diff,
    diff_manifests,
    evaluate_policy,
    plan_retention,
)
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeManifest


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(**files: str) -> TreeManifest:
    return TreeManifest.of(FileEntry(p.replace("__", "/"), sha(c), len(c)) for p, c in files.items())


# -- diff ---------------------------------------------------------------------------------------------


def test_diff_names_added_removed_and_changed_paths() -> None:
    old = TreeManifest.of(
        [
            FileEntry("a.txt", sha("a"), 1),
            FileEntry("b.txt", sha("b"), 1),
            FileEntry("run", sha("r"), 1),
            SymlinkEntry("link", "a.txt"),
            DirEntry("empty"),
        ]
    )
    new = TreeManifest.of(
        [
            FileEntry("a.txt", sha("a"), 1),
            FileEntry("c.txt", sha("c"), 1),
            FileEntry("run", sha("r"), 1, executable=True),
            SymlinkEntry("link", "c.txt"),
            DirEntry("empty"),
        ]
    )
    diff = diff_manifests(old, new)
    assert diff.added == ("c.txt",)
    assert diff.removed == ("b.txt",)
    assert diff.changed == ("link", "run")  # a mode change and a new link target are changes
    assert diff.unchanged == 2
    assert not diff.empty


def test_diff_against_nothing_adds_everything() -> None:
    new = manifest(a="1", b__c="2")
    diff = diff_manifests(None, new)
    assert diff.added == ("a", "b/c") and not diff.removed and not diff.changed


paths = st.lists(st.sampled_from(["a", "b", "c/d", "c/e", "f/g/h", "z"]), unique=True, max_size=6)
contents = st.sampled_from(["x", "y", "z"])


@st.composite
def manifests(draw: st.DrawFn) -> TreeManifest:
    chosen = draw(paths)
    return TreeManifest.of(FileEntry(p, sha(draw(contents)), 1, draw(st.booleans())) for p in chosen)


@given(manifests(), manifests())
@settings(max_examples=200, deadline=None)
def test_diff_partitions_both_trees(old: TreeManifest, new: TreeManifest) -> None:
    diff = diff_manifests(old, new)
    old_paths, new_paths = set(old.by_path()), set(new.by_path())
    assert set(diff.added) == new_paths - old_paths
    assert set(diff.removed) == old_paths - new_paths
    assert set(diff.changed) | set(diff.added) | {
        p for p in new_paths & old_paths if p not in diff.changed
    } == (new_paths)
    assert len(diff.changed) + diff.unchanged == len(old_paths & new_paths)
    assert diff_manifests(new, new).empty
    back = diff_manifests(new, old)
    assert set(back.added) == set(diff.removed) and set(back.changed) == set(diff.changed)


def test_config_diff_is_unified_and_names_binary_files() -> None:
    text = config_diff(
        {"c.toml": b"port = 1\n", "bin.dat": b"\xff\x00"},
        {"c.toml": b"port = 2\n", "bin.dat": b"\xfe", "new.toml": b"x = 1"},
        old_label="old",
        new_label="new",
    )
    assert "--- old/c.toml" in text and "+++ new/c.toml" in text
    assert "-port = 1" in text and "+port = 2" in text
    assert "binary config file bin.dat differs" in text
    assert "+++ new/new.toml" in text and "No newline at end of file" in text
    assert config_diff({"a": b"1"}, {"a": b"1"}, old_label="o", new_label="n") == ""


# -- retention -------------------------------------------------------------------------------------


def test_retention_keeps_protected_then_newest_and_drops_failed() -> None:
    releases = [
        ReleaseInfo("r1", 1),
        ReleaseInfo("r2", 2),
        ReleaseInfo("r3", 3),
        ReleaseInfo("bad", None, failed=True),
        ReleaseInfo("r4", 4),
        ReleaseInfo("unknown", None),
    ]
    plan = plan_retention(releases, keep=3, protected={"r4", "r1"})
    assert set(plan.keep) == {"r4", "r1", "r3"}
    assert set(plan.delete) == {"r2", "bad", "unknown"}


def test_retention_never_deletes_protected_even_when_keep_is_small() -> None:
    releases = [ReleaseInfo("a", 1), ReleaseInfo("b", 2), ReleaseInfo("held", None, failed=True)]
    plan = plan_retention(releases, keep=1, protected={"a", "b", "held"})
    assert set(plan.keep) == {"a", "b", "held"} and plan.delete == ()


@st.composite
def release_sets(draw: st.DrawFn) -> tuple[list[ReleaseInfo], int, set[str]]:
    names = draw(st.lists(st.sampled_from([f"r{i}" for i in range(10)]), unique=True, max_size=10))
    releases = [
        ReleaseInfo(
            n,
            draw(st.one_of(st.none(), st.integers(1, 5))),
            failed=draw(st.booleans()),
        )
        for n in names
    ]
    protected = set(draw(st.lists(st.sampled_from(names), max_size=3))) if names else set()
    return releases, draw(st.integers(1, 8)), protected


@given(release_sets())
@settings(max_examples=300, deadline=None)
def test_retention_properties(case: tuple[list[ReleaseInfo], int, set[str]]) -> None:
    releases, keep, protected = case
    plan = plan_retention(releases, keep=keep, protected=protected)
    names = {r.digest for r in releases}
    kept, deleted = set(plan.keep), set(plan.delete)
    assert kept | deleted == names and not kept & deleted
    assert protected <= kept  # live, previous and held are never deleted
    good = {r.digest for r in releases if not r.failed}
    assert len(kept) == max(len(protected), min(keep, len(good | protected)))
    assert len(kept) <= max(keep, len(protected))
    for r in releases:  # failed releases go unless protected
        if r.failed and r.digest not in protected:
            assert r.digest in deleted
    for gone in deleted:  # nothing deleted is newer than a good, unprotected release that was kept
        info = next(r for r in releases if r.digest == gone)
        if info.failed:
            continue
        for r in releases:
            if r.digest in kept and r.digest not in protected:
                assert (r.last_ok or 0) >= (info.last_ok or 0)


# -- policy ----------------------------------------------------------------------------------------

D = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def test_policy_allows_a_plain_deploy() -> None:
    decision = evaluate_policy(PolicyFacts(D, "staging", "deploy"))
    assert decision.allowed and decision.overridden == ()


def test_policy_requires_a_healthy_deployment_to_the_required_env() -> None:
    facts = PolicyFacts(D, "prod", "deploy", requires=("staging",))
    refused = evaluate_policy(facts)
    assert not refused.allowed
    assert "never deployed healthy to staging" in (refused.refusal or "")
    assert "--override-policy" in (refused.refusal or "")
    ok = evaluate_policy(
        PolicyFacts(D, "prod", "promote", requires=("staging",), healthy_in=frozenset({"staging"}))
    )
    assert ok.allowed


def test_a_withdrawn_healthy_deployment_is_named_as_such() -> None:
    """Healthy in staging once, then rolled back there: refused saying so, qa still "never"."""
    facts = PolicyFacts(
        D, "prod", "deploy", requires=("staging", "qa"), withdrawn=(("staging", "rolled back"),)
    )
    refusal = evaluate_policy(facts).refusal or ""
    assert "was rolled back in staging after its healthy deployment there" in refusal
    assert "never deployed healthy to qa" in refusal and "deploy it to staging again first" in refusal
    over = evaluate_policy(
        PolicyFacts(
            D, "prod", "deploy", requires=("staging",), override=True, withdrawn=(("staging", "failed"),)
        )
    )
    assert over.allowed and over.overridden == ("staging",)


def test_override_bypasses_requires_only() -> None:
    over = evaluate_policy(PolicyFacts(D, "prod", "deploy", requires=("staging", "qa"), override=True))
    assert over.allowed and over.overridden == ("staging", "qa")
    rejected = evaluate_policy(PolicyFacts(D, "prod", "deploy", rejected="CVE", override=True))
    assert not rejected.allowed and "rejected (CVE)" in (rejected.refusal or "")
    held = evaluate_policy(PolicyFacts(D, "prod", "deploy", held=True, held_digest=OTHER, override=True))
    assert not held.allowed and "graven unhold prod" in (held.refusal or "")


def test_an_untested_graven_toml_is_refused_and_its_override_names_where() -> None:
    """Healthy in staging and qa, but its graven.toml ran only in staging: qa is bypassed by an
    override, as a requirement never met is, and named with it (in the order of requires)."""
    healthy = frozenset({"staging", "qa"})
    facts = PolicyFacts(D, "prod", "deploy", requires=("qa", "staging"), healthy_in=healthy, untested=("qa",))
    refused = evaluate_policy(facts)
    assert not refused.allowed and "never ran healthy in qa" in (refused.refusal or "")
    over = PolicyFacts(D, "prod", "deploy", requires=("qa", "staging"), untested=("staging",), override=True)
    assert evaluate_policy(over).overridden == ("qa", "staging")


def test_a_promote_refused_by_requires_names_the_command_that_overrides() -> None:
    """promote has no --override-policy (argparse refused what the hint said): the hint names the
    deploy that does."""
    for untested in ((), ("staging",)):
        healthy = frozenset(untested)
        facts = PolicyFacts(
            D, "prod", "promote", requires=("staging",), healthy_in=healthy, untested=untested
        )
        refusal = evaluate_policy(facts).refusal or ""
        assert "`graven deploy aaaaaaaaaaaa prod --override-policy --reason TEXT`" in refusal, refusal


def test_a_hold_refuses_other_digests_but_not_the_held_one() -> None:
    assert evaluate_policy(PolicyFacts(D, "prod", "deploy", held=True, held_digest=D)).allowed
    refused = evaluate_policy(PolicyFacts(D, "prod", "promote", held=True, held_digest=OTHER))
    assert not refused.allowed and "held on bbbbbbbbbbbb" in (refused.refusal or "")
    assert not evaluate_policy(PolicyFacts(D, "prod", "deploy", held=True, held_digest=None)).allowed


def test_rollback_ignores_hold_and_requires_but_not_rejection_or_history() -> None:
    facts = PolicyFacts(D, "prod", "rollback", requires=("staging",), held=True, held_digest=OTHER)
    assert evaluate_policy(facts).allowed
    never = evaluate_policy(PolicyFacts(D, "prod", "rollback", history_ok=False))
    assert not never.allowed and "graven history prod" in (never.refusal or "")
    assert not evaluate_policy(PolicyFacts(D, "prod", "rollback", rejected="bad")).allowed


@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["deploy", "promote", "rollback"]),
    st.booleans(),
)
def test_rejection_always_refuses(
    healthy: bool, override: bool, held: bool, kind: str, history: bool
) -> None:
    facts = PolicyFacts(
        D,
        "prod",
        kind,
        requires=("staging",),
        healthy_in=frozenset({"staging"}) if healthy else frozenset(),
        rejected="broken",
        held=held,
        held_digest=D,
        override=override,
        history_ok=history,
    )
    assert not evaluate_policy(facts).allowed


# -- which graven.toml ran where -------------------------------------------------------------------


def test_a_graven_toml_counts_only_where_it_ran_healthy() -> None:
    from graven.deploy.plan import TestedPipelines

    tested = TestedPipelines(
        ["staging", "qa"],
        {"staging": [("p2", "2026-03"), ("p1", "2026-02")], "qa": [("p1", "2026-02")]},
        {"p1": "2026-01", "p2": "2026-03"},
    )
    assert tested.healthy_everywhere
    assert tested.ran_everywhere("p1") and not tested.ran_everywhere("p2")
    assert tested.missing("p2") == ["qa"] and tested.missing("p1") == []
    assert tested.tested() == ["p1"]
    assert not TestedPipelines(["staging", "qa"], {"staging": [("p1", "x")]}, {}).healthy_everywhere


def test_old_records_count_only_for_a_graven_toml_built_here_before_the_first_of_them() -> None:
    """Records from before pipeline_digest may have run any graven.toml built here before the first
    such record; never one built later, nor one only imported (its arrival time is not known)."""
    from graven.deploy.plan import TestedPipelines

    tested = TestedPipelines(
        ["staging"],
        {"staging": [(None, "2026-05"), (None, "2026-02")]},
        {"early": "2026-01", "same": "2026-02", "late": "2026-03"},
    )
    assert tested.ran_in("early", "staging") and tested.ran_in("same", "staging")
    assert not tested.ran_in("late", "staging")  # built after the first old record
    assert not tested.ran_in("imported", "staging")  # never built here
    assert tested.tested() == ["early", "same"]
