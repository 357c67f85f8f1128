"""Contexts opened by CLI commands are closed when the click context ends (even on errors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from graven.service.context import Context

__all__ = ["closing"]


def closing(ctx: Context) -> Context:
    """Close ``ctx`` (its database connections) when the current command finishes."""
    click.get_current_context().call_on_close(ctx.close)
    return ctx
