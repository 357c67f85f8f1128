"""The symlinks of one tree are each resolved once (graven.core.paths.link_checker): a crafted tree (an
archive to import) of 41 links with ~4 KB targets, each naming the next, and many short links into the
first made every short link follow the whole chain again (80,000 names each: a 3 KB .tar.zst of 1,000
of them took 20 s to import, MAX_ENTRIES of them days, and every `graven verify` of it as long)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from graven.core.paths import MAX_LINK_HOPS, link_checker, link_stays_inside


def _reference(path: str, target: str, links: Mapping[str, str]) -> bool:
    """link_stays_inside as it was before each link's resolution was kept: the whole queue of names
    followed for each link, again and again (the two must agree exactly)."""
    children: dict[tuple[int, str], int] = {}
    targets: dict[int, str] = {}
    for link, linked in links.items():
        node = 0
        for name in link.split("/"):
            node = children.setdefault((node, name), len(children) + 1)
        targets[node] = linked
    if target.startswith("/") or not target:
        return False
    stack: list[int | None] = []
    at: int | None = 0
    for name in path.split("/")[:-1]:
        at = None if at is None else children.get((at, name))
        stack.append(at)
    queue = deque(target.split("/"))
    hops = 0
    while queue:
        segment = queue.popleft()
        if segment in ("", "."):
            continue
        if segment == "..":
            if not stack:
                return False
            stack.pop()
            continue
        parent = stack[-1] if stack else 0
        at = None if parent is None else children.get((parent, segment))
        stack.append(at)
        found = None if at is None else targets.get(at)
        if found is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return True
            if found.startswith("/"):
                return False
            stack.pop()
            queue.extendleft(reversed(found.split("/")))
    return True


def test_many_links_into_one_long_chain_take_linear_time() -> None:
    links = {f"c{k}": "d/.." + "/d/.." * 815 + f"/c{k + 1}" for k in range(MAX_LINK_HOPS)}
    links[f"c{MAX_LINK_HOPS}"] = "ok.txt"
    links.update({f"l{i}": "c0" for i in range(3_000)})
    check = link_checker(links)
    started = time.monotonic()
    assert all(check(path, target) for path, target in links.items())  # l -> c0 -> ...: 41 links, a loop
    # generous for a loaded machine: 57 s when each link followed the chain again, ~0.1 s now
    assert time.monotonic() - started < 15
    assert check("x", "c1/..") is True and check("x", "c1/../..") is False
    assert check("sub/x", "../c1/../..") is False and check("sub/x", "../c1/..") is True


def test_a_loop_through_links_being_resolved_counts_as_inside() -> None:
    links = {"a": "b/x", "b": "c/..", "c": "a/../.."}
    for path, target in links.items():
        assert link_stays_inside(path, target, links) is _reference(path, target, links)


def test_a_chain_of_links_far_past_the_recursion_limit_is_no_recursion() -> None:
    links = {f"l{i}": f"l{i + 1}" for i in range(100_000)}
    links["l100000"] = ".."
    check = link_checker(links)
    assert check("l0", "l1") is True  # past MAX_LINK_HOPS: a loop to the kernel
    assert check("l99990", "l99991") is False


_NAMES = st.sampled_from(["a", "b", "c", "d"])
_SEGMENTS = st.sampled_from(["a", "b", "c", "d", "..", ".", ""])
_PATHS = st.lists(_NAMES, min_size=1, max_size=3).map("/".join)
_TARGETS = st.one_of(
    st.lists(_SEGMENTS, min_size=1, max_size=6).map("/".join),
    st.lists(_SEGMENTS, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_PATHS, _TARGETS, max_size=8), _PATHS, _TARGETS)
def test_resolution_matches_the_reference(links: dict[str, str], path: str, target: str) -> None:
    check = link_checker(links)
    for link, linked in links.items():
        assert check(link, linked) is _reference(link, linked, links), (link, linked)
    assert check(path, target) is _reference(path, target, links)


@settings(max_examples=300, deadline=None)
@given(st.integers(MAX_LINK_HOPS - 3, MAX_LINK_HOPS + 3), st.sampled_from(["..", "x", "/e", "l0", "."]))
def test_chains_about_the_hop_limit_match_the_reference(length: int, end: str) -> None:
    links = {f"l{i}": f"l{i + 1}" for i in range(length)}
    links[f"l{length}"] = end
    links["m"] = "l3/.."
    check = link_checker(links)
    for link, linked in links.items():
        assert check(link, linked) is _reference(link, linked, links), link
