"""``-n N`` / ``--limit N`` on the listing commands: ``graven log``, ``graven history ENV`` and
``graven artifacts`` show only the newest N, in the order each prints today (log and history oldest
first, as ``tail``; artifacts newest first), and the database is asked for only those N rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graven.db import Params, Result, _SqliteConnection
from graven.errors import InputError
from graven.home import Home
from graven.model.logentry import LogEvent
from graven.service import audit as audit_module
from graven.service.context import Context

Run = Callable[..., tuple[int, str, str]]
LOG_SIZE = 40  # entries 0..39; entry i is about env{i % 3} and artifact i % 4, at second i of the day
HISTORY_SIZE = 15  # deployments of staging (and as many of prod in between)
ARTIFACT_COUNT = 12


def _time(second: int) -> str:
    return f"2026-11-27T08:{second // 60:02d}:{second % 60:02d}.000000Z"


def _fill(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the home of GRAVEN_HOME and GRAVEN_DB_URL: a log of LOG_SIZE entries (times one second
    apart), HISTORY_SIZE deployments of staging and of prod, interleaved, and ARTIFACT_COUNT
    artifacts (recorded in the order of their number)."""
    times = iter(range(LOG_SIZE))
    with monkeypatch.context() as patch:
        patch.setattr(audit_module, "utc_now", lambda: _time(next(times)))
        with Context(home=Home.from_env()) as ctx:
            for i in range(LOG_SIZE):
                ctx.audit.record(
                    LogEvent("deploy", env=f"env{i % 3}", artifact=_digest(i % 4), reason=f"r{i}")
                )
    with Context(home=Home.from_env()) as ctx, ctx.db.begin() as conn:
        conn.execute(
            """INSERT INTO deployments (env, digest, kind, actor, started_at, finished_at, result,
                health, override, reason)
            VALUES (:env, :digest, 'deploy', 'alice', :time, :time, 'ok', 'healthy', :override, :reason)""",
            [
                {
                    "env": env,
                    "digest": _digest(i),
                    "time": _time(i),
                    "override": False,
                    "reason": f"{env} {i}",
                }
                for i in range(HISTORY_SIZE)
                for env in ("staging", "prod")
            ],
        )
        conn.execute(
            """INSERT INTO artifacts (digest, name, "commit", repository, revision, pipeline_digest,
                source_date_epoch, file_count, total_size, origin, created_at)
            VALUES (:digest, :name, NULL, NULL, NULL, NULL, 0, 1, 1, 'build', :time)""",
            [{"digest": _digest(i), "name": f"app{i}", "time": _time(i)} for i in range(ARTIFACT_COUNT)],
        )


def _digest(number: int) -> str:
    return f"sha256:{number:064x}"


@pytest.fixture
def filled(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _fill(monkeypatch)
    return home


def _json(run_cli: Run, *args: str) -> Any:
    code, out, err = run_cli(*args, "--json")
    assert code == 0 and err == "", err
    return json.loads(out)


# -- graven log ---------------------------------------------------------------------------------------


def test_log_shows_the_newest_n_oldest_first(filled: Path, run_cli: Run) -> None:
    assert [e["index"] for e in _json(run_cli, "log", "-n", "3")] == [37, 38, 39]
    assert [e["index"] for e in _json(run_cli, "log", "--limit", "3")] == [37, 38, 39]
    assert [e["index"] for e in _json(run_cli, "log", "--limit=1")] == [39]
    code, out, err = run_cli("log", "-n", "2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 3  # the header and two rows, in index order
    assert lines[0].split()[0] == "INDEX"
    assert [line.split()[0] for line in lines[1:]] == ["38", "39"]
    assert lines[2].split()[-1] == "r39"
    # the same entries as the tail of the whole log, field for field
    assert _json(run_cli, "log", "-n", "5") == _json(run_cli, "log")[-5:]


def test_log_limit_applies_after_the_filters(filled: Path, run_cli: Run) -> None:
    # entries at or after second 30: 30..39; the newest 4 of them
    since = ["--since", "2026-11-27T08:00:30Z"]
    assert [e["index"] for e in _json(run_cli, "log", *since, "-n", "4")] == [36, 37, 38, 39]
    # more asked than match: all of them, in order
    assert [e["index"] for e in _json(run_cli, "log", *since, "-n", "100")] == list(range(30, 40))
    # env1 is 1, 4, ..., 37: the newest three
    assert [e["index"] for e in _json(run_cli, "log", "--env", "env1", "-n", "3")] == [31, 34, 37]
    assert [e["index"] for e in _json(run_cli, "log", "--env", "env1", *since, "-n", "2")] == [34, 37]
    assert _json(run_cli, "log", "--since", "2026-11-28T00:00:00Z", "-n", "5") == []


def test_log_limit_larger_than_the_log_shows_everything(filled: Path, run_cli: Run) -> None:
    everything = _json(run_cli, "log")
    assert [e["index"] for e in everything] == list(range(LOG_SIZE))
    assert _json(run_cli, "log", "-n", str(LOG_SIZE)) == everything
    assert _json(run_cli, "log", "-n", "9223372036854775807") == everything


def test_log_limit_still_refuses_an_entry_that_is_not_canonical(filled: Path, run_cli: Run) -> None:
    """What ``graven log`` checks of each entry it prints (canonical graven.log/v1) holds with a
    limit; an entry outside the newest N is not read, so it does not stop them."""
    with sqlite3.connect(filled / "graven.db", isolation_level=None) as db:
        for index in (39, 0):
            (text,) = db.execute("SELECT entry FROM log_entries WHERE idx = ?", (index,)).fetchone()
            db.execute("UPDATE log_entries SET entry = ? WHERE idx = ?", (text + " ", index))
    code, _, err = run_cli("log", "-n", "2")
    assert code == 1 and "log entry 39 is damaged (log entry is not in canonical form)" in err
    assert [e["index"] for e in _json(run_cli, "log", "--env", "env1", "-n", "2")] == [34, 37]


def test_log_limit_on_a_home_without_a_log(home: Path, run_cli: Run) -> None:
    assert _json(run_cli, "log", "-n", "3") == []
    code, out, _ = run_cli("log", "-n", "3")
    assert code == 0 and out == "the audit log has no matching entries\n"


def test_log_limit_before_a_subcommand_is_refused(filled: Path, run_cli: Run) -> None:
    code, out, err = run_cli("log", "-n", "2", "verify")
    assert code == 2 and out == ""
    assert err.startswith("graven: error: --limit before `graven log verify` would not apply to it")
    assert err.endswith("(see `graven log verify --help`)\n")
    _one_line(err)


# -- graven history ENV --------------------------------------------------------------------------------


def test_history_shows_the_newest_n_oldest_first(filled: Path, run_cli: Run) -> None:
    everything = _json(run_cli, "history", "staging")
    assert [r["reason"] for r in everything] == [f"staging {i}" for i in range(HISTORY_SIZE)]
    rows = _json(run_cli, "history", "staging", "-n", "3")
    assert [r["reason"] for r in rows] == ["staging 12", "staging 13", "staging 14"]
    assert rows == everything[-3:]
    assert _json(run_cli, "history", "staging", "--limit", "100") == everything
    code, out, err = run_cli("history", "staging", "--limit", "2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "ID"
    assert [line.split()[-1] for line in lines[1:]] == ["13", "14"]  # the reasons "staging 13", "14"


# -- graven artifacts ----------------------------------------------------------------------------------


def test_artifacts_shows_the_newest_n_newest_first(filled: Path, run_cli: Run) -> None:
    everything = _json(run_cli, "artifacts")
    assert [a["name"] for a in everything] == [f"app{i}" for i in reversed(range(ARTIFACT_COUNT))]
    rows = _json(run_cli, "artifacts", "-n", "3")
    assert [a["name"] for a in rows] == ["app11", "app10", "app9"]
    assert rows == everything[:3]
    assert _json(run_cli, "artifacts", "--limit", "1000") == everything
    code, out, err = run_cli("artifacts", "-n", "2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 3 and [line.split()[1] for line in lines[1:]] == ["app11", "app10"]


def test_artifacts_limit_on_an_empty_home(home: Path, run_cli: Run) -> None:
    assert _json(run_cli, "artifacts", "-n", "3") == []
    assert not home.exists()  # answered without making a home or a database


# -- bad values ---------------------------------------------------------------------------------------


def _one_line(err: str) -> None:
    assert err.startswith("graven: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["log"], ["history", "staging"], ["artifacts"], ["log", "--json"]])
@pytest.mark.parametrize(
    "value",
    [
        "0",
        "-1",
        "-0",
        "+3",
        "1.5",
        "1e3",
        "x",
        "",
        " 3",
        "1_0",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: int() would take it
        "9223372036854775808",  # beyond what LIMIT takes (a signed 64-bit integer)
    ],
)
def test_a_bad_limit_is_one_line_and_exit_2(
    filled: Path, run_cli: Run, command: list[str], value: str
) -> None:
    for option in (["-n", value], [f"--limit={value}"]):
        code, out, err = run_cli(*command, *option)
        assert code == 2, (option, out, err)
        if "--json" in command:  # refused before the command ran: the error object, nothing else
            assert json.loads(out)["error"]["exit_code"] == 2, out
        else:
            assert out == "", (option, out, err)
        _one_line(err)
        assert "-n/--limit" in err, err


def test_a_missing_limit_is_a_usage_error(filled: Path, run_cli: Run) -> None:
    code, out, err = run_cli("artifacts", "-n")
    assert code == 2 and out == ""
    _one_line(err)
    assert "argument -n/--limit: expected one argument" in err


@pytest.mark.parametrize("limit", [0, -1, True, 2**63, "3", 1.0])
def test_the_library_refuses_a_bad_limit(filled: Path, limit: Any) -> None:
    from graven.service.artifacts import list_artifacts
    from graven.service.environments import history

    with Context(home=Home(root=filled)) as ctx:
        with pytest.raises(InputError, match="limit must be a positive integer"):
            list_artifacts(ctx, limit=limit)
        with pytest.raises(InputError, match="limit must be a positive integer"):
            history(ctx, "staging", limit=limit)
        with pytest.raises(InputError, match="limit must be a positive integer"):
            list(ctx.audit.entries(limit=limit))


# -- the database is asked for N rows ------------------------------------------------------------------


class _Statement:
    def __init__(self, sql: str, params: Params | None) -> None:
        self.sql = " ".join(sql.split())
        self.params = dict(params or {})
        self.rows = 0


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[_Statement]:
    """Every statement the SQLite connections run, with the number of rows read from its result."""
    seen: list[_Statement] = []
    original = _SqliteConnection.execute

    def execute(self: _SqliteConnection, sql: str, params: Any = None) -> Result:
        result = original(self, sql, params)
        statement = _Statement(sql, params if isinstance(params, dict) else None)
        seen.append(statement)

        def counted() -> Iterator[Any]:
            for row in result:
                statement.rows += 1
                yield row

        return Result(counted(), result.rowcount, result.close)

    monkeypatch.setattr(_SqliteConnection, "execute", execute)
    return seen


def _listing(statements: list[_Statement], table: str) -> _Statement:
    (statement,) = (s for s in statements if f"FROM {table}" in s.sql and "SELECT" in s.sql)
    return statement


@pytest.mark.parametrize(
    ("args", "table", "total"),
    [
        (["log"], "log_entries", LOG_SIZE),
        (["log", "--since", "2026-11-27T08:00:01Z"], "log_entries", LOG_SIZE - 1),
        (["log", "--env", "env1"], "log_entries", 13),
        (["log", "--artifact", f"sha256:{1:064x}"], "log_entries", 10),
        (["history", "staging"], "deployments", HISTORY_SIZE),
        (["artifacts"], "artifacts", ARTIFACT_COUNT),
    ],
)
def test_the_query_reads_only_n_rows_in_index_order(  # noqa: PLR0917 - fixtures and parameters
    filled: Path, run_cli: Run, statements: list[_Statement], args: list[str], table: str, total: int
) -> None:
    """With -n 3 the listing's one statement ends in ``ORDER BY ... LIMIT :limit`` and gives 3 rows,
    where without it gives every row; and SQLite reads the newest rows in index order (no sort of
    all the matches, ``USE TEMP B-TREE FOR ORDER BY``), unfiltered or by environment or artifact."""
    code, _, err = run_cli(*args, "--json")
    assert code == 0, err
    assert _listing(statements, table).rows == total
    statements.clear()
    code, out, err = run_cli(*args, "-n", "3", "--json")
    assert code == 0 and len(json.loads(out)) == 3, err
    statement = _listing(statements, table)
    assert statement.rows == 3
    assert statement.sql.endswith("LIMIT :limit") and statement.params["limit"] == 3
    if "--since" in args:
        return  # filtered: the planner chooses (both ways, only 3 rows leave the database)
    with sqlite3.connect(filled / "graven.db") as db:
        plan = " / ".join(
            row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + statement.sql, statement.params)
        )
    assert "TEMP B-TREE" not in plan and "INDEX" in plan, plan


# -- PostgreSQL ---------------------------------------------------------------------------------------


@pytest.mark.services
def test_limits_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    """The same statements (LIMIT with a bound parameter) through SQLAlchemy and psycopg."""
    home = tmp_path / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    _fill(monkeypatch)
    assert [e["index"] for e in _json(run_cli, "log", "-n", "3")] == [37, 38, 39]
    since = ["--since", "2026-11-27T08:00:30Z"]
    assert [e["index"] for e in _json(run_cli, "log", "--env", "env1", *since, "-n", "2")] == [34, 37]
    assert _json(run_cli, "log", "-n", "100") == _json(run_cli, "log")
    rows = _json(run_cli, "history", "staging", "-n", "3")
    assert [r["reason"] for r in rows] == ["staging 12", "staging 13", "staging 14"]
    assert [a["name"] for a in _json(run_cli, "artifacts", "-n", "3")] == ["app11", "app10", "app9"]
    assert _json(run_cli, "artifacts", "-n", "9223372036854775807") == _json(run_cli, "artifacts")


def test_log_event_filters_by_event_and_names_the_events_it_knows(home: Path, run_cli: Run) -> None:
    """An operator after one kind of event ran `graven log --event deploy` and was told "no such
    subcommand 'deploy'". --event filters the timeline, with the other filters and a limit."""
    with Context(home=Home.from_env()) as ctx:
        for i, event in enumerate(["deploy", "rollback", "deploy", "drift", "rollback", "deploy"]):
            ctx.audit.record(LogEvent(event, env="prod", artifact=_digest(i), reason=f"r{i}"))
    rollbacks = _json(run_cli, "log", "--event", "rollback")
    assert [(e["event"], e["reason"]) for e in rollbacks] == [("rollback", "r1"), ("rollback", "r4")]
    assert [e["reason"] for e in _json(run_cli, "log", "--event", "deploy", "-n", "2")] == ["r2", "r5"]
    assert _json(run_cli, "log", "--event", "heal") == []
    code, out, err = run_cli("log", "--event", "deploys")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "--event 'deploys' is no event of the log; one of: " in err and "rollback" in err, err
    code, _, err = run_cli("log", "--event", "deploy", "verify")
    assert code == 2 and "--event" in err, err
