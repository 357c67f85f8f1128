"""Names graven takes from users and configuration. Pure: patterns only (compiled where they are used,
so that importing this costs nothing at start-up)."""

from __future__ import annotations

__all__ = ["ENV_NAME_PATTERN"]

# an environment's name: deploy's ENV argument, [env.NAME] of graven.toml and of a trust policy
ENV_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
