"""Byte counts and counts of things for people: what the CLI prints and what errors say of sizes."""

from __future__ import annotations

__all__ = ["counted", "human_size"]


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1, "file"`` -> ``1 file``; ``2, "file"`` -> ``2 files`` (``plural`` when not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
