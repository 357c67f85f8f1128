"""The benchmark scripts stay runnable: each answers --help (which imports everything it uses)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")


def test_every_script_is_listed() -> None:
    assert {"run.py", "deploy_bench.py", "drift_bench.py", "log_bench.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_answers_help(script: str) -> None:
    argv = [sys.executable, str(BENCH / script), "--help"]
    done = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def _bench_module(name: str) -> ModuleType:
    """Import ``bench/NAME.py`` (its siblings, such as common.py, importable by name as it expects)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"graven_bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


class _SlowClose:
    """A Context whose close (SQLite's last close: the WAL checkpoint and its fsync) takes 50 ms."""

    CLOSE_SECONDS = 0.05

    def __init__(self, home: object) -> None:
        self.db = self
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            time.sleep(self.CLOSE_SECONDS)

    def __enter__(self) -> _SlowClose:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def test_in_process_runs_count_closing_the_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # closing the home's database checkpoints its WAL into graven.db and fsyncs it (6-22 ms after a
    # cold django build): work every CLI build waits for, so the in-process figure must count it too
    import graven.service.artifacts
    import graven.service.build
    import graven.service.context
    import graven.service.transfer

    run = _bench_module("run")
    monkeypatch.setattr(graven.service.context, "Context", _SlowClose)
    monkeypatch.setattr(
        graven.service.build, "build", lambda ctx, *, path, revision: SimpleNamespace(digest="sha256:00")
    )
    monkeypatch.setattr(graven.service.artifacts, "resolve_digest", lambda ctx, digest: digest)
    monkeypatch.setattr(graven.service.transfer, "export_artifact", lambda ctx, digest, out: out.touch())
    bench = run.Bench(tmp_path, tmp_path, 1, Path(sys.executable), Path(sys.executable))
    seconds, digest = bench.inproc_build(tmp_path / "home", tmp_path, "g1")
    assert digest == "sha256:00"
    assert seconds >= _SlowClose.CLOSE_SECONDS
    exported = bench.inproc_export(tmp_path / "home", "sha256:00", tmp_path / "out.tar.zst")
    assert exported >= _SlowClose.CLOSE_SECONDS
