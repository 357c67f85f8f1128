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
