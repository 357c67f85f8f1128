"""step_error: how a deployment step that raised (instead of running a command) is recorded."""

from __future__ import annotations

from graven.deploy.hook_result import step_error
from graven.errors import InputError, PolicyError


def test_graven_findings_are_recorded_as_they_were_said() -> None:
    assert step_error("health check", PolicyError("abc was rejected\nmore")).error == "abc was rejected"
    assert step_error("activate", InputError("interrupted (Ctrl-C or SIGTERM)")).error == (
        "interrupted (Ctrl-C or SIGTERM)"
    )


def test_anything_else_names_its_type() -> None:
    """A review: a bug (ValueError: embedded null byte) was recorded as "failed (embedded null byte)",
    as if the health check had said so; history now names what raised it."""
    assert step_error("health check", ValueError("embedded null byte")).error == (
        "ValueError: embedded null byte"
    )
    assert step_error("health check", RuntimeError()).error == "RuntimeError"
    result = step_error("activate", OSError(28, "No space left on device"))
    assert result.error == "OSError: [Errno 28] No space left on device"
    assert not result.ok
    long = step_error("activate", KeyError("x" * 1000)).error
    assert long is not None and long.startswith("KeyError: 'xxx") and len(long) <= 310
