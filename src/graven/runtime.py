"""How graven uses its own process: pausing the cyclic garbage collector around work that makes tens of
thousands of objects without cycles, and when forking a helper process is safe."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["can_fork", "no_gc"]


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Keep the cyclic collector off while the block runs (then as it was). For work such as building
    or checking a release: its many small objects (stat results, records, manifest entries) hold no
    cycles and live until it ends, and the collector would walk them again and again for nothing (a
    third of a drift check's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def can_fork() -> bool:
    """Fork only where it is safe and worth it: Linux, two cores or more, and no other thread alive (a
    thread holding a lock at fork time would leave it locked in the child)."""
    return sys.platform == "linux" and (os.cpu_count() or 1) > 1 and threading.active_count() == 1
