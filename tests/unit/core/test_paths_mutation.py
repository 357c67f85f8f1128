"""Mutation-testing gaps in graven.core.paths (hop limit of link_stays_inside)."""

from graven.core.paths import MAX_LINK_HOPS, link_stays_inside


def _chain(further: int, end: str) -> tuple[str, str, dict[str, str]]:
    """The link ``l0`` -> ``l1`` -> ... -> ``l<further>`` -> ``end``: ``further`` links after the first."""
    links = {f"l{i}": f"l{i + 1}" for i in range(further)}
    links[f"l{further}"] = end
    return "l0", links["l0"], links


def test_hop_limit_is_forty() -> None:
    # The kernel follows 40 links in one lookup (MAXSYMLINKS); the check must not give up earlier.
    assert MAX_LINK_HOPS == 40


def test_an_escape_at_the_end_of_the_longest_followed_chain_is_refused() -> None:
    # the link itself and then MAX_LINK_HOPS more: every one is followed, so the escape is seen
    path, target, links = _chain(MAX_LINK_HOPS, "..")
    assert link_stays_inside(path, target, links) is False
    path, target, links = _chain(MAX_LINK_HOPS, "/etc")
    assert link_stays_inside(path, target, links) is False


def test_a_chain_longer_than_the_limit_counts_as_a_loop() -> None:
    # one more link than is followed: resolution gives up (ELOOP), so it cannot escape
    path, target, links = _chain(MAX_LINK_HOPS + 1, "..")
    assert link_stays_inside(path, target, links) is True
    path, target, links = _chain(MAX_LINK_HOPS - 1, "..")
    assert link_stays_inside(path, target, links) is False


def test_implied_dirs_are_the_ancestors_only_in_order() -> None:
    # never the root ("") and never the paths themselves; each ancestor once, in the order found
    from graven.core.paths import implied_dirs

    assert list(implied_dirs(["a/b/c", "d", "a/x", "e/f"])) == ["a/b", "a", "e"]
    assert implied_dirs(["top"]) == {}


def test_following_long_targets_through_many_links_takes_linear_time() -> None:
    # A crafted commit of 41 links, each a target of ~4 KB (what a file system takes) that names the
    # next link and then 2,000 directories: resolving the first follows 80,000 names. Each name looked
    # up as the join of every one before it took minutes per link (quadratic), and the manifest of
    # such a tree is validated at every build, verify and import.
    import time

    links = {f"l{i}": f"l{i + 1}/" + "/".join(["a"] * 2040) for i in range(MAX_LINK_HOPS)}
    links[f"l{MAX_LINK_HOPS}"] = "a"
    started = time.monotonic()
    assert link_stays_inside("l0", links["l0"], links) is True
    assert link_stays_inside("l0", links["l0"] + "/.." * 90_000, links) is False
    assert time.monotonic() - started < 2
