"""graven's file names are UTF-8 bytes whatever the locale: under a locale that is not UTF-8, Python
decodes names with the locale's charset, and a step build's ``café`` became another name in the
manifest (another digest for the same commit), or a refusal, or a traceback. The CLI runs in Python's
UTF-8 mode there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from graven import __version__
from helpers_services import unavailable

TOML = """[artifact]
name = "loc"
[build]
sandbox = "none"
steps = ["mkdir -p out && printf x > out/café && cp src/* out/"]
outputs = ["out/"]
"""


def _build(repo: Path, env: dict[str, str]) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "build", "-C", str(repo), "--json"],
        env=env,
        capture_output=True,
        check=False,
    )
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8", "replace")


def test_a_step_build_gives_one_digest_whatever_the_locale(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo(tmp_path / "repo", {"src/日本.txt": "nihon\n", "src/plain.txt": "p\n"}, TOML)
    base = {**os.environ, "GRAVEN_HOME": str(graven_home), "GRAVEN_ALLOW_UNSANDBOXED": "1"}
    utf8 = {**base, "LC_ALL": "C.UTF-8"}
    # the C locale without Python's coercion and UTF-8 mode: file names decode as ASCII
    ascii_fs = {**base, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    results = [_build(repo, env) for env in (utf8, ascii_fs)]
    for code, _out, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    digests = [json.loads(out)["digest"] for _code, out, _err in results]
    assert digests[0] == digests[1]
    shown = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "show", digests[0], "--files", "--json"],
        env=ascii_fs,
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")
    assert "out/café" in shown and "out/日本.txt" in shown


@pytest.fixture(scope="module")
def latin1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user whose locale is en_US.ISO-8859-1 (made with localedef)."""
    where = tmp_path_factory.mktemp("locales")
    done = subprocess.run(
        ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(where / "en_US.ISO-8859-1")],
        capture_output=True,
        check=False,
    )
    if done.returncode not in (0, 1) or not (where / "en_US.ISO-8859-1").is_dir():  # 1: warnings only
        unavailable(f"cannot make a Latin-1 locale (apt-get install locales): {done.stderr.decode()[:200]}")
    env = {**os.environ, "LOCPATH": str(where), "LC_ALL": "en_US.ISO-8859-1"}
    check = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
        env=env,
        capture_output=True,
        check=False,
    )
    if check.stdout.strip() != b"iso8859-1":
        unavailable(f"the Latin-1 locale is not used by Python here ({check.stdout!r})")
    return env


def test_under_a_latin1_locale_the_console_script_never_imports_from_the_current_directory(
    latin1: dict[str, str], tmp_path: Path
) -> None:
    """The UTF-8 re-run was `python -m graven.cli.main`, which puts the current directory first on
    the import path: a checkout's graven/ ran instead of graven."""
    (tmp_path / "graven").mkdir()
    (tmp_path / "graven" / "__init__.py").write_text("print('PWNED'); raise SystemExit(99)\n")
    script = Path(sys.executable).parent / "graven"
    done = subprocess.run(
        [str(script), "--version"], cwd=tmp_path, env=latin1, capture_output=True, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"graven {__version__}\n".encode()), done


def test_a_reason_typed_in_latin1_is_recorded_as_text(
    latin1: dict[str, str], graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    env = {**latin1, "GRAVEN_HOME": str(graven_home)}
    built = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "build", "-C", str(repo)],
        env=env,
        capture_output=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    digest = built.stdout.decode().splitlines()[-1]
    reason = "caf\xe9 closed".encode("latin-1")  # as the user's terminal sends it
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"graven.cli.main", b"reject", digest.encode(), b"--reason", reason],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    log = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", "log", "--json"], env=env, capture_output=True, check=True
    )
    assert any(e["reason"] == "café closed" for e in json.loads(log.stdout.decode("utf-8")))
    shown = subprocess.run(  # not free text (a digest): its bytes are checked as they are, and refused
        [sys.executable.encode(), b"-m", b"graven.cli.main", b"show", reason],
        env=env,
        capture_output=True,
        check=False,
    )
    assert shown.returncode == 2 and shown.stderr.count(b"\n") == 1, shown.stderr
    assert b"not valid UTF-8 text" in shown.stderr
