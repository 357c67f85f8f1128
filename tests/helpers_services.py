"""Skip, or fail, tests whose external tools or services are missing.

By default a missing tool skips the test, so that the suite runs anywhere. With the environment
variable ``GRAVEN_REQUIRE_SERVICES`` set (to anything), a missing tool fails the test instead, so that
CI cannot go green by silently skipping the checks it was set up to run.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

REQUIRE_SERVICES_ENV = "GRAVEN_REQUIRE_SERVICES"


def services_required() -> bool:
    """Whether missing tools and services must fail tests rather than skip them."""
    return REQUIRE_SERVICES_ENV in os.environ


def unavailable(reason: str) -> NoReturn:
    """Skip the current test because of ``reason``, or fail it when services are required."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV} is set)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> None:
    """Skip (or fail, see :func:`unavailable`) unless the program ``name`` is on PATH."""
    if shutil.which(name) is None:
        unavailable(f"{name!r} is not on PATH")
