"""The blob cache's tags with the metadata in PostgreSQL (a module of its own: a fresh cluster, no
other home's log in it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_repo import commit, make_repo, run_cli

pytestmark = pytest.mark.services


def test_blob_cache_rows_without_a_tag_are_read_again_and_replaced_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Schema 7: a blob cache row counts only with its tag under the home's record key; one without
    (an older graven's, or a database edit) is a miss, and the build writes the row again (an upsert)."""
    from graven.db import Database

    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRAVEN_DB_URL", postgres_url)
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "b/c.txt": "c\n"}, '[artifact]\nname = "pgtag"\n')
    assert run_cli(capsys, "keys", "generate")[0] == 0

    def build() -> int:
        code, out, err = run_cli(capsys, "build", "--json", "-C", str(repo))
        assert code == 0, err
        files_read: int = json.loads(out)["files_read"]
        return files_read

    assert build() == 3
    database = Database.open(postgres_url)
    try:
        with database.begin() as conn:
            conn.execute("UPDATE git_blob_cache SET tag = NULL")
    finally:
        database.close()
    (repo / "graven.toml").write_text('[artifact]\nname = "pgtag"\n# 2\n')  # nothing to carry from
    commit(repo, "another graven.toml")
    assert build() == 3  # every row was a miss
    (repo / "graven.toml").write_text('[artifact]\nname = "pgtag"\n# 3\n')
    commit(repo, "a third graven.toml")
    assert build() == 1  # the rows were written again, tagged: only the new graven.toml is read
