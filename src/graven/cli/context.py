"""Contexts opened by CLI commands are closed when the command ends (even on errors)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from graven.service.context import Context

__all__ = ["close_all", "closing"]

_OPEN: list[Context] = []


def closing(ctx: Context) -> Context:
    """Close ``ctx`` (its database connections) when the current command finishes."""
    _OPEN.append(ctx)
    return ctx


def close_all() -> None:
    """Close every context the command opened, newest first."""
    while _OPEN:
        _OPEN.pop().close()
