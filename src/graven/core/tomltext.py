"""Reading TOML text: :mod:`tomllib`, with every way it refuses a document said as one reason.

tomllib raises TOMLDecodeError for a malformed document, but lets two other failures through: int()'s
ValueError for an integer of more than ``sys.get_int_max_str_digits()`` digits, and a RecursionError
for arrays or tables nested thousands deep. The files graven reads (a commit's graven.toml, the trust
policy) must be refused in one line whatever they hold.
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any

__all__ = ["TomlError", "loads"]


class TomlError(ValueError):
    """Why a TOML document cannot be read: one line, without the source (the caller names it)."""


def loads(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``; :class:`TomlError` for whatever makes it refuse the document."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(str(exc)) from None
    except ValueError:  # int() refuses more than 4,300 digits; tomllib lets that ValueError through
        raise TomlError(f"an integer of more than {sys.get_int_max_str_digits():,} digits") from None
    except RecursionError:
        raise TomlError("arrays or tables nested too deeply") from None
