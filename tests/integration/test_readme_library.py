"""The README's "As a library" example runs as written (on the bundled example service)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import commit_all, git

PROJECT = Path(__file__).resolve().parents[2]


def _snippet() -> str:
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## As a library") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's library section has no python block"
    return match.group(1)


def test_the_readme_library_example_builds_verifies_deploys_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "shop"
    shutil.copytree(PROJECT / "examples" / "shop", repo)
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "v1")
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    monkeypatch.chdir(repo)
    code = _snippet()
    assert '"/tmp/graven-srv"' in code
    exec(compile(code.replace('"/tmp/graven-srv"', repr(str(tmp_path / "srv"))), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "True"
    staging = json.loads(out[1])  # JSON, as the CLI's --json
    assert staging["env"] == "staging" and staging["live"] and not staging["held"], staging
    assert (tmp_path / "srv" / "shop" / "staging" / "current" / "app").is_dir()
