"""The line a deploy prints says what its hard links are: a first deploy has no live release to link
from, only files of the same content within the artifact (it said "N linked from the live release")."""

from __future__ import annotations

from collections.abc import Callable

from helpers_deploy import World

Run = Callable[..., tuple[int, str, str]]


def test_a_first_deploy_links_duplicates_and_a_next_one_unchanged_files(world: World, run_cli: Run) -> None:
    world.commit({"app/copy.py": "print('hello')\n"})  # the content of app/main.py
    v1 = world.build()
    code, out, err = run_cli("deploy", v1, "staging", "--root", world.root)
    assert code == 0, err
    assert "7 files: 1 hard-linked (duplicates), 6 copied" in out, out
    assert "live release" not in out.splitlines()[0], out
    v2 = world.version(2)
    code, out, err = run_cli("deploy", v2, "staging", "--root", world.root)
    assert code == 0, err
    assert "8 files: 7 hard-linked (unchanged or duplicates), 1 copied" in out, out
