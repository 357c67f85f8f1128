"""The commands whose CLI benchmarks are decided by start-up (build, deploy, rollback, drift --full,
export) load none of the modules that cost milliseconds without doing their work: dataclasses (with
inspect, ast, dis), the --check machinery, cryptography's serialization (PEM/SSH/ciphers), gettext
(argparse's messages stay untranslated: graven.cli.main._import_argparse)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_deploy import World, env_toml, make_world

AVOIDED = (
    "dataclasses",
    "inspect",
    "graven.build.compare",
    "graven.service.hermetic",
    "cryptography.hazmat.primitives.serialization",
    "gettext",
)

_RUN = (
    "import json, sys\n"
    "from graven.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    f"print(json.dumps({{'code': code, 'loaded': [m for m in {AVOIDED!r} if m in sys.modules]}}))\n"
)


def _loaded(*args: object) -> list[str]:
    """Run ``graven ARGS`` in a fresh interpreter; the avoided modules it loaded (it must succeed)."""
    out = subprocess.run(
        [sys.executable, "-c", _RUN, *map(str, args)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, out.stderr
    loaded: list[str] = result["loaded"]
    return loaded


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = make_world(tmp_path, monkeypatch, env_toml("app", {"staging": {"path": "staging"}}))
    yield made
    made.close()


def test_build_deploy_rollback_drift_and_export_start_light(world: World, tmp_path: Path) -> None:
    assert _loaded("build", "-C", world.repo) == []
    first = world.build()
    world.commit({"app/version.txt": "2\n"})
    assert _loaded("build", "-C", world.repo) == []  # carried forward from the first build
    second = world.build()
    root = f"--root={world.root}"
    assert _loaded("deploy", first, "staging", root) == []
    assert _loaded("deploy", second, "staging", root) == []
    assert _loaded("rollback", "staging", root, "--reason", "test") == []
    assert _loaded("drift", "staging", "--full") == []
    assert _loaded("export", second, "-o", tmp_path / "app.tar.zst") == []


def test_listing_an_empty_home_loads_no_context(tmp_path: Path) -> None:
    """`graven artifacts` on a home without a database answers before any use case is loaded (its
    start-up is one of the benchmarks: bench/run.py, row 6)."""
    run = (
        "import json, sys\n"
        "from graven.cli.main import main\n"
        "code = main(['artifacts'])\n"
        "heavy = ('graven.service.context', 'typing', 'datetime')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", run],
        capture_output=True,
        text=True,
        check=False,
        env={"GRAVEN_HOME": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_argparse_works_without_gettext_and_gettext_is_the_real_one_after() -> None:
    script = (
        "import sys\n"
        "from graven.cli.main import _import_argparse\n"
        "_import_argparse()\n"
        "import argparse\n"
        "assert 'gettext' not in sys.modules and 'locale' not in sys.modules\n"
        "parser = argparse.ArgumentParser(prog='x')\n"
        "parser.add_argument('n', nargs=2)\n"
        "print(parser.format_usage().strip())\n"
        "import gettext\n"
        "print(gettext.translation('x', fallback=True).ngettext('one', 'many', 2))\n"
        "parser.parse_args(['1', '2', '--nope'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stdout.splitlines() == ["usage: x [-h] n n", "many"]
    assert out.stderr.strip().endswith("x: error: unrecognized arguments: --nope")
