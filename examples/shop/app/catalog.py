"""The product catalogue: plain data, so the demo needs no database."""

from __future__ import annotations

PRODUCTS = [
    {"sku": "tea-green", "name": "Green tea", "price_cents": 450},
    {"sku": "tea-black", "name": "Black tea", "price_cents": 390},
    {"sku": "mug", "name": "Stoneware mug", "price_cents": 1200},
]


def find(sku: str) -> dict[str, object] | None:
    """The product with this SKU, if any."""
    return next((p for p in PRODUCTS if p["sku"] == sku), None)
