"""Retention runs once the deployment is live and recorded: what it cannot do (a release it cannot
remove, the stat table it cannot write on a disk that filled up meanwhile) is a warning, never exit 1,
which would tell the operator that what was live stays live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers_deploy import env_toml, make_world
from helpers_mounts import mounted_tmpfs

CliResult = tuple[int, str, str]


def test_a_disk_full_after_the_health_check_leaves_a_recorded_deployment_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    srv, arm = tmp_path / "srv", tmp_path / "arm"
    # the application (its logs, say) fills the file system during the health check, once armed
    health = f"if [ -e {arm} ]; then head -c 64000000 /dev/zero > {srv}/fill 2>/dev/null; fi; true"
    toml = env_toml(
        "app",
        {
            "staging": {
                "path": "staging",
                "keep": 1,
                "health": health,
                "health_interval": 0,
                "health_retries": 0,
            }
        },
    )
    world = make_world(tmp_path, monkeypatch, toml)
    with mounted_tmpfs(srv):
        try:
            # empty files of their own: removing the oldest release frees no space
            world.commit({"app/one": ""})
            v1 = world.build()
            world.commit({"app/one": None, "app/two": ""})
            v2 = world.build()
            for digest in (v1, v2):
                assert run_cli("deploy", digest, "staging", "--root", srv)[0] == 0
            world.commit({"app/two": None, "app/three": ""})
            v3 = world.build()
            arm.touch()
            code, out, err = run_cli("deploy", v3, "staging", "--root", srv)
            assert world.live("staging") == v3
        finally:
            world.close()
    assert code == 0, (out, err)
    assert "is live in staging" in out
    stat_warning = [line for line in err.splitlines() if ".graven/stat" in line]
    assert stat_warning and stat_warning[0].startswith("graven: warning: cannot write "), err
    assert "No space left on device" in stat_warning[0]
    assert "live and recorded" in stat_warning[0]
    assert "graven: error:" not in err


def test_old_releases_it_cannot_look_at_are_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., CliResult]
) -> None:
    """Retention's look at the releases (their listing, the database's rows of them) failing after a
    recorded deployment (a busy database) was exit 1 for a deployment that is live and recorded."""
    from graven.deploy.layout import EnvLayout
    from graven.errors import DatabaseBusyError

    world = make_world(tmp_path, monkeypatch, env_toml("app", {"staging": {"path": "staging", "keep": 1}}))
    try:
        v1 = world.build()
        world.commit({"app/two": ""})
        v2 = world.build()
        assert run_cli("deploy", v1, "staging", "--root", world.root)[0] == 0

        def busy(layout: EnvLayout) -> list[str]:
            raise DatabaseBusyError("the database is locked")

        monkeypatch.setattr(EnvLayout, "release_names", busy)
        code, out, err = run_cli("deploy", v2, "staging", "--root", world.root)
        assert world.live("staging") == v2
    finally:
        world.close()
    assert code == 0, (out, err)
    assert "graven: warning: old releases were not looked at (the database is locked)" in err, err
    assert "graven: error:" not in err
