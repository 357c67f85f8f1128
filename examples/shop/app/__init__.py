"""shop: a tiny catalogue service used by the graven demo."""
