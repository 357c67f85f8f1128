"""No key is ever trusted without its audit log entry: `keys generate` and `keys trust` log first, so a
failure (a busy database, a kill) between the two leaves an entry and no effect, never the reverse;
trusting a key again, or in two processes at once, is not an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graven.cli import keys_cmds
from graven.errors import BackendError
from graven.signing import trust
from helpers_repo import run_cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(path))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    return path


def _trusted(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "trust").glob("*.pub")) if (home / "trust").is_dir() else []


def _logged(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, err = run_cli(capsys, "log", "--json")
    assert code == 0, err
    return [e["reason"] for e in json.loads(out) if e["event"] == "key-trusted"]


def _busy(*_args: object) -> None:
    raise BackendError("the database is busy")


@pytest.mark.parametrize("command", ["generate", "trust"])
def test_a_trust_whose_log_entry_fails_takes_no_effect(
    command: str,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if command == "trust":
        assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
        code, pem, err = run_cli(capsys, "keys", "export", "ci")
        assert code == 0, err
        (tmp_path / "ci.pub").write_text(pem)
        args = ["keys", "trust", str(tmp_path / "ci.pub")]
    else:
        args = ["keys", "generate", "--name", "second"]
    with monkeypatch.context() as patch:
        patch.setattr(keys_cmds, "_log", _busy)
        code, _, err = run_cli(capsys, *args)
    assert code == 1, err
    assert _trusted(home) == []  # not trusted, as the log says
    assert _logged(capsys) == []


def test_trusting_a_key_twice_or_at_once_succeeds_and_logs_once(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
    pem = run_cli(capsys, "keys", "export", "ci")[1]
    (tmp_path / "ci.pub").write_text(pem)
    real_write = trust.write_public_key

    def another_process_first(path: Path, key: object) -> None:
        """The same key written by another `keys trust` between our check and our write."""
        real_write(path, key)  # type: ignore[arg-type]
        real_write(path, key)  # ours: the file exists now

    with monkeypatch.context() as patch:
        patch.setattr(trust, "write_public_key", another_process_first)
        code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"))
    assert code == 0, err
    assert len(_trusted(home)) == 1
    code, again, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"))
    assert code == 0, err
    assert again == out
    assert len(_logged(capsys)) == 1  # the second trust changed nothing, and says nothing new


def test_trust_and_revoke_report_as_json(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "keys", "generate", "--name", "ci", "--no-trust")[0] == 0
    (tmp_path / "ci.pub").write_text(run_cli(capsys, "keys", "export", "ci")[1])
    code, out, err = run_cli(capsys, "keys", "trust", str(tmp_path / "ci.pub"), "--json")
    assert code == 0, err
    trusted = json.loads(out)
    assert trusted["changed"] is True and Path(trusted["path"]).is_file()
    code, out, err = run_cli(capsys, "keys", "revoke", trusted["keyid"], "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "keyid": trusted["keyid"],
        "path": str(home / "trust" / "revoked"),
        "changed": True,
    }
    assert json.loads(run_cli(capsys, "keys", "revoke", trusted["keyid"], "--json")[1])["changed"] is False
