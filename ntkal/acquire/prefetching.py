"""Run a host-side iterator ahead of its consumer on a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yield ``items`` in order while a daemon thread computes up to ``depth`` of them ahead.

    Host work inside ``items`` (building and padding graphs in numpy, which releases the GIL in
    its copies) then overlaps with the consumer's device work (JAX dispatches asynchronously).
    ``depth = 0`` yields directly. An exception raised by ``items`` is re-raised in the consumer
    at the position where it happened; closing the generator early stops the thread.
    """
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as err:  # handed to the consumer
            put((False, err))
            return
        put((True, _DONE))

    thread = threading.Thread(target=work, name="ntkal-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)
