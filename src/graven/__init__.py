"""graven: reproducible, signed, content-addressed artifacts from a git commit."""

__version__ = "0.2.0"

__all__ = ["__version__"]
