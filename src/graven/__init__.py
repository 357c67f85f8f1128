"""graven: reproducible, signed, content-addressed artifacts from a git commit."""

__version__ = "0.4.0"

__all__ = ["__version__"]
