"""Secrets in what graven keeps for good or prints (a stored build log, a failed step's last lines, a
hook's output in the history and the audit log), after a review of :func:`redact_secrets`: a value the
operator passes into the build went by its name only."""

from __future__ import annotations

from pathlib import Path

import pytest

from graven.build.steps import BuildLog, _tail
from graven.deploy.hook_result import redact_secrets
from graven.service.build import _redacted_log

PASSED = {
    "GRAVEN_PASS_ENV": "NPM_RC, GH_PAT,NETRC AWS_SESSION CI",
    "NPM_RC": "//registry.npmjs.org/:_authToken=npm_Zq81xkq",
    "GH_PAT": "ghp_4Rk9Lm2Qw8",
    "NETRC": "machine h login me password n3trcpw",
    "AWS_SESSION": "FwoGZXIvYXdzEJr",
    "CI": "true",  # too short to be a secret: "true" stays readable everywhere
    "NOT_PASSED": "ordinary-value",
}


def test_the_value_of_every_variable_passed_into_the_build_is_redacted() -> None:
    """A passed ``NPM_RC`` or ``GH_PAT`` (names that do not look secret) that a step printed was kept
    in the build log verbatim: whatever the operator passes from the host may be a credential."""
    line = " ".join(PASSED[name] for name in ("NPM_RC", "GH_PAT", "NETRC", "AWS_SESSION"))
    assert (
        redact_secrets(f"{line} CI=true ordinary-value", PASSED) == "*** *** *** *** CI=true ordinary-value"
    )
    assert redact_secrets("ghp_4Rk9Lm2Qw8", {k: v for k, v in PASSED.items() if k != "GRAVEN_PASS_ENV"}) == (
        "ghp_4Rk9Lm2Qw8"  # not passed, not secret-looking: nothing says it is a secret
    )


def test_the_stored_build_log_and_a_failed_steps_last_lines_lose_a_passed_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in PASSED.items():
        monkeypatch.setenv(name, value)
    printed = f"$ echo $GH_PAT\n{PASSED['GH_PAT']}\n$ cat ~/.npmrc\n{PASSED['NPM_RC']}\n"
    assert _redacted_log(printed.encode()) == b"$ echo $GH_PAT\n***\n$ cat ~/.npmrc\n***\n"
    with BuildLog(tmp_path / "build.log") as log:
        log.write(printed.encode())
        tail = _tail(log)
    assert "ghp_" not in tail and "npm_" not in tail and tail.count("***") == 2, tail
