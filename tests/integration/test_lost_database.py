"""A home whose database was lost (graven.db deleted, or replaced by an empty one) while its log key
and high-water mark (``log/in-use``) survive: the reads that would answer "nothing here yet" say what
happened instead, as ``graven log`` and every write do. ``graven drift`` answered "no live
environments", exit 0, while every environment stayed live and unwatched; ``status`` and
``artifacts`` showed a new home."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from graven.home import Home
from graven.service.context import Context
from helpers_deploy import World

CliResult = tuple[int, str, str]
Run = Callable[..., CliResult]


def _lose_database(world: World, *, empty: bool) -> None:
    for ctx in world.contexts:
        ctx.close()
    for name in ("graven.db", "graven.db-wal", "graven.db-shm"):
        (world.home / name).unlink(missing_ok=True)
    if empty:  # a new database in its place, with graven's tables and no rows (a new GRAVEN_DB_URL)
        other = world.home.parent / "other-home"
        with Context(home=Home(root=other)) as ctx, ctx.db.connect() as conn:
            assert conn.execute("SELECT 1 FROM log_entries LIMIT 1").first() is None
        shutil.copyfile(other / "graven.db", world.home / "graven.db")


@pytest.mark.parametrize("empty", [False, True], ids=["deleted", "empty"])
@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("artifacts",),
        ("artifacts", "--json"),
        ("drift",),
        ("drift", "--full"),
        ("drift", "staging"),
        ("verify", "{d}"),
        ("history", "staging"),
        ("hold", "staging", "--reason", "x"),
        ("rollback", "staging", "--reason", "x", "--root", "{root}"),
        ("promote", "staging", "prod", "--root", "{root}"),
    ],
)
def test_a_lost_database_is_named_not_shown_as_a_new_home(
    world: World, run_cli: Run, args: tuple[str, ...], empty: bool
) -> None:
    digest = world.version(1)
    assert world.deploy(digest, "staging").ok
    _lose_database(world, empty=empty)
    code, out, err = run_cli(*(a.format(d=digest[7:19], root=world.root) for a in args))
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("graven: error: the audit log is empty but its key"), err
    assert "restore it from a backup" in err, err


def test_a_new_home_still_says_nothing_yet(world: World, run_cli: Run) -> None:
    for args in (("status",), ("artifacts",), ("drift",)):
        code, out, err = run_cli(*args)
        assert code == 0 and err == "", (args, out, err)
        assert "yet" in out or "no live environments" in out, out
