"""A writer thread stops when its queue is closed, even after Ctrl-C interrupted a hand-over.

Ctrl-C (or SIGTERM, which graven raises the same way) can land in ``Queue.put`` between
``Condition.notify()`` waking the writer thread and removing its waiter from the condition's list. The
woken waiter, locked again by the thread it woke, stays first in the list; the next ``notify()`` (the
one that hands over the closing None) releases that stale waiter instead of the thread's current one,
and the thread sleeps on: ``graven import`` interrupted at the wrong moment hung for good in
``_PackWriter.close`` (its ``join()``), and an export could in ``_ThreadedSink.close``."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graven.archive.writer import _ThreadedSink
from graven.store.local import LocalStore, _PackWriter


def _stale_waiter(handover: queue.Queue[Any]) -> None:
    """Leave the condition as an interrupted ``notify()`` does: once the consumer thread waits for an
    item, a waiter it already took (released, then locked again) is first in the list."""
    waiters = handover.not_empty._waiters  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not waiters:
        assert time.monotonic() < deadline, "the consumer thread never waited for an item"
        time.sleep(0.001)
    stale = threading.Lock()
    stale.acquire()
    with handover.mutex:
        waiters.appendleft(stale)


def _ends(close: Callable[[], None]) -> bool:
    """Whether ``close`` returns within 10 s (in a thread of its own: a hang must not hang the test)."""
    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(10)
    return not closer.is_alive()


def test_pack_writer_closes_after_an_interrupted_handover(tmp_path: Path) -> None:
    writer = _PackWriter(LocalStore.at(tmp_path / "objects"))
    _stale_waiter(writer._queue)
    assert _ends(lambda: writer.close(commit=False))
    assert not writer._thread.is_alive()


def test_archive_sink_closes_after_an_interrupted_handover() -> None:
    written: list[bytes | bytearray] = []
    sink = _ThreadedSink(written.append)
    sink.write(b"piece")
    _stale_waiter(sink._queue)
    assert _ends(sink.close)
    assert written == [b"piece"]
