"""A second Ctrl-C or SIGTERM while a failed deployment is switched back (the first stopped its hooks,
or they failed): ``current`` is still put back on the previous release, the failure and the switch
back are recorded, the old release's hooks are not run, and the interrupted command says, before it
stops, what is live."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graven.cli.app import Terminated, _handle_sigterm
from graven.home import Home
from graven.service import environments
from graven.service.context import Context
from helpers_deploy import World, env_toml, staging_prod


class _Reporter:
    """Keeps the warnings; sends SIGTERM to this process when the deployment reaches ``stage``."""

    def __init__(self, stage: str | None = None) -> None:
        self.stage = stage
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage == self.stage:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def sigterm() -> Iterator[None]:
    """SIGTERM raises Terminated, as in the command line."""
    previous = _handle_sigterm()
    yield
    signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


def _stopped_by_ctrl_c(*_args: Any, **_kwargs: Any) -> Any:
    raise KeyboardInterrupt


def _then_sigterm(real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    return wrapped


def _deploy(world: World, digest: str, reporter: _Reporter) -> None:
    from graven.service.deploy import deploy

    with Context(home=Home(root=world.home), reporter=reporter) as ctx:
        deploy(ctx, digest, "staging", world.options())


def _check_settled(world: World, v1: str, v2: str, reporter: _Reporter) -> None:
    assert world.live("staging") == v1
    state = {s.env: s for s in environments.status(world.ctx())}["staging"]
    assert state.live == v1
    rows = environments.history(world.ctx(), "staging")
    assert [(h["digest"], h["kind"], h["result"]) for h in rows[-2:]] == [
        (v2, "deploy", "failed"),
        (v1, "auto-rollback", "ok"),
    ], rows
    assert rows[-1]["health"] == "unknown" and "not run" in str(rows[-1]["detail"]), rows[-1]
    said = [w for w in reporter.warnings if "switched back to" in w]
    assert len(said) == 1 and v1.removeprefix("sha256:")[:12] in said[0], reporter.warnings
    v3 = world.version(3, env_toml("app", staging_prod()))
    assert world.deploy(v3, "staging").ok  # and the next deployment has nothing to settle
    assert [h["result"] for h in environments.history(world.ctx(), "staging")].count("interrupted") == 0


def test_sigterm_before_current_is_pointed_back_still_switches_back(
    world: World, monkeypatch: pytest.MonkeyPatch, sigterm: None
) -> None:
    """Ctrl-C stops v2's health check; SIGTERM arrives while the switch back reads v1's settings."""
    from graven.service import deploy_verify

    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2)
    monkeypatch.setattr("graven.service.deploy.run_health", _stopped_by_ctrl_c)
    monkeypatch.setattr(deploy_verify, "verified_settings", _then_sigterm(deploy_verify.verified_settings))
    reporter = _Reporter()
    with pytest.raises(KeyboardInterrupt):
        _deploy(world, v2, reporter)
    monkeypatch.undo()
    _check_settled(world, v1, v2, reporter)


def test_sigterm_after_current_is_pointed_back_records_the_switch_back(
    world: World, monkeypatch: pytest.MonkeyPatch, sigterm: None
) -> None:
    """v2's health check fails; SIGTERM arrives once current names v1 again, before v1's hooks run."""
    v1 = world.build()
    assert world.deploy(v1, "staging").ok
    v2 = world.version(2, env_toml("app", staging_prod(health="exit 3")))
    reporter = _Reporter("deploy:switched-back")
    with pytest.raises(Terminated):
        _deploy(world, v2, reporter)
    _check_settled(world, v1, v2, reporter)
