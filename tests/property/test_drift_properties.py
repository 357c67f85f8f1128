"""Properties of drift detection: a tree that is exactly its manifest has no differences, and any single
change to it is found and named by path and kind, and only that change."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from graven.core.drift import DIR_MODE, Observed, compare_tree, deployed_mode, expected_dirs, plan_heal
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest

segment = st.text(alphabet=string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=5).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
sha = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def manifests(draw: st.DrawFn) -> TreeManifest:
    chosen = draw(st.lists(paths, min_size=1, max_size=15, unique=True))
    leaves = [p for p in chosen if not any(o.startswith(p + "/") for o in chosen)]
    entries: list[TreeEntry] = []
    for path in leaves:
        kind = draw(st.sampled_from(["file", "file", "file", "symlink", "dir"]))
        if kind == "file":
            entries.append(FileEntry(path, draw(sha), draw(st.integers(0, 2**31)), draw(st.booleans())))
        elif kind == "symlink":
            entries.append(SymlinkEntry(path, draw(segment)))  # a sibling: stays inside
        else:
            entries.append(DirEntry(path))
    return TreeManifest.of(entries)


def observe(manifest: TreeManifest, *, hashed: bool) -> dict[str, Observed]:
    """The tree a correct deployment of ``manifest`` shows."""
    tree: dict[str, Observed] = {d: Observed("dir", DIR_MODE) for d in expected_dirs(manifest)}
    for entry in manifest.entries:
        if isinstance(entry, FileEntry):
            digest = entry.sha256 if hashed else None
            tree[entry.path] = Observed("file", deployed_mode(entry.executable), entry.size, digest)
        elif isinstance(entry, SymlinkEntry):
            tree[entry.path] = Observed("symlink", target=entry.target)
    return tree


@settings(max_examples=300)
@given(manifests(), st.booleans())
def test_an_identical_tree_has_no_differences(manifest: TreeManifest, hashed: bool) -> None:
    tree = observe(manifest, hashed=hashed)
    assert compare_tree(manifest, tree) == []
    assert plan_heal(manifest, []).empty


MUTATIONS = ["content", "size", "mode", "remove", "add", "to_symlink", "retarget", "to_file", "dir_mode"]


@settings(max_examples=500)
@given(manifests(), st.sampled_from(MUTATIONS), st.data())
def test_any_single_change_is_found_and_named(
    manifest: TreeManifest, mutation: str, data: st.DataObject
) -> None:
    tree = observe(manifest, hashed=False)
    files = [e for e in manifest.entries if isinstance(e, FileEntry)]
    links = [e for e in manifest.entries if isinstance(e, SymlinkEntry)]
    dirs = sorted(expected_dirs(manifest))
    leaves = [e.path for e in manifest.entries if not isinstance(e, DirEntry)]
    expected: tuple[str, str]
    if mutation in ("content", "size", "mode", "to_symlink") and files:
        entry = data.draw(st.sampled_from(files))
        seen = tree[entry.path]
        if mutation == "content":
            other = data.draw(sha.filter(lambda s: s != entry.sha256))
            tree[entry.path] = Observed("file", seen.mode, seen.size, other)
            expected = (entry.path, "modified")
        elif mutation == "size":
            tree[entry.path] = Observed("file", seen.mode, seen.size + data.draw(st.integers(1, 9)))
            expected = (entry.path, "modified")
        elif mutation == "mode":
            tree[entry.path] = Observed("file", deployed_mode(not entry.executable), seen.size)
            expected = (entry.path, "mode")
        else:
            tree[entry.path] = Observed("symlink", target=entry.path.rpartition("/")[2] + ".x")
            expected = (entry.path, "type")
    elif mutation in ("retarget", "to_file") and links:
        link = data.draw(st.sampled_from(links))
        if mutation == "retarget":
            tree[link.path] = Observed("symlink", target=link.target + "2")
            expected = (link.path, "target")
        else:
            tree[link.path] = Observed("file", 0o444, 1)
            expected = (link.path, "type")
    elif mutation == "dir_mode" and dirs:
        directory = data.draw(st.sampled_from(dirs))
        tree[directory] = Observed("dir", 0o755)
        expected = (directory, "mode")
    elif mutation == "remove" and leaves:
        path = data.draw(st.sampled_from(leaves))
        del tree[path]
        expected = (path, "removed")
    else:
        parent = data.draw(st.sampled_from(["", *dirs]))
        name = data.draw(segment)
        path = f"{parent}/{name}" if parent else name
        if path in tree:
            return
        tree[path] = Observed(data.draw(st.sampled_from(["file", "symlink", "dir", "other"])))
        expected = (path, "added")
    diffs = compare_tree(manifest, tree)
    assert [(d.path, d.kind) for d in diffs] == [expected]
    plan = plan_heal(manifest, diffs)
    assert not plan.empty
