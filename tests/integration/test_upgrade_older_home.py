"""A home an older graven left (schema 9: no log subtrees, no index on the pending deployments; a
deployer killed after its switch) upgraded by this one: the first command that upgrades it is
SIGKILLed half-way and changes nothing, the next one upgrades it whole, and every command then works
on it with nothing lost. (An upgrade review ran a5f7799 and 0.4.0 on real homes; CI's clone may lack
that history, so the older schema is made by hand here.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import CliResult
from graven.db import SCHEMA_VERSION
from graven.home import Home
from graven.service.context import Context, NullReporter
from graven.service.deploy import DeployOptions, deploy
from helpers_deploy import World

_KILLED_UPGRADE = """
import os, signal, sys
from graven import db
from graven.cli.main import main

def killed(conn):  # the upgrade's transaction has run every statement up to its backfill
    os.kill(os.getpid(), signal.SIGKILL)

db.BACKFILLS[10] = killed
sys.argv = ["graven", "status"]
sys.exit(main())
"""


def _sql(home: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(home / "graven.db")
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _as_schema_9(home: Path) -> None:
    conn = sqlite3.connect(home / "graven.db", isolation_level=None)
    try:
        conn.execute("DROP TABLE log_subtrees")
        conn.execute("DROP INDEX ix_deployments_pending")
        conn.execute("""UPDATE graven_meta SET value = '9' WHERE "key" = 'schema_version'""")
    finally:
        conn.close()


def _killed_after_switch(world: World, digest: str) -> None:
    pid = os.fork()
    if pid == 0:
        try:

            class _Die(NullReporter):
                def progress(self, stage: str, done: int, total: int | None) -> None:
                    if stage == "deploy:switched":
                        os.kill(os.getpid(), signal.SIGKILL)

            with Context(home=Home(root=world.home), reporter=_Die()) as ctx:
                deploy(ctx, digest, "staging", DeployOptions(root=str(world.root)))
        finally:
            os._exit(1)
    os.waitpid(pid, 0)


def test_an_older_home_upgraded_after_a_killed_first_upgrade_keeps_everything(
    world: World, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    cli = run_cli
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    assert world.deploy(v1, "prod").ok
    v2 = world.version(2)
    _killed_after_switch(world, v2)
    world.close()
    _as_schema_9(world.home)
    entries = _sql(world.home, "SELECT idx, entry FROM log_entries ORDER BY idx")
    deployments = _sql(world.home, "SELECT id, env, digest, result FROM deployments ORDER BY id")
    assert deployments[-1][2:] == (v2, "pending")

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "GRAVEN_HOME": str(world.home), "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_UPGRADE], check=False, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert _sql(world.home, """SELECT value FROM graven_meta WHERE "key" = 'schema_version'""") == [("9",)]
    assert _sql(world.home, "SELECT name FROM sqlite_master WHERE name = 'log_subtrees'") == []

    code, out, err = cli("status", "--json")
    assert code == 0, err
    status = {e["env"]: (e["live"], e["on_disk"], e["pending"]) for e in json.loads(out)}
    assert status == {"staging": (v1, v2, v2), "prod": (v1, v1, None)}  # as recorded; settled by a deploy
    assert _sql(world.home, """SELECT value FROM graven_meta WHERE "key" = 'schema_version'""") == [
        (str(SCHEMA_VERSION),)
    ]
    assert _sql(world.home, "SELECT name FROM sqlite_master WHERE name = 'ix_deployments_pending'")
    assert _sql(world.home, "SELECT idx, entry FROM log_entries ORDER BY idx") == entries
    code, _, err = cli("log", "verify")
    assert code == 0, err
    code, _, err = cli("log", "prove", "0")
    assert code == 0, err
    code, _, err = cli("drift", "--full")
    assert code == 0, err
    v3 = world.version(3)
    code, _, err = cli("deploy", v3, "staging", "--root", str(world.root))
    assert code == 0, err
    code, out, err = cli("history", "staging", "--json")
    assert code == 0, err
    rows = [(h["digest"], h["result"]) for h in json.loads(out)]
    assert rows == [(v1, "ok"), (v2, "interrupted"), (v3, "ok")]
    code, _, err = cli("rollback", "staging", "--root", str(world.root))
    assert code == 0, err
    copy = tmp_path / "copy.db"
    code, _, err = cli("db", "copy", f"sqlite:///{copy}")
    assert code == 0, err
    assert _sql(world.home, "SELECT count(*) FROM deployments") == [(len(deployments) + 2,)]
