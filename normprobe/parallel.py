"""Work split into independent tasks, computed side by side on threads and handed back in order.

Used where numpy or torch release the GIL for the heavy part of each task (kNN query blocks,
blocks of bootstrap resamples), so threads scale with cores without copying data to processes.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


def ordered_map(
    fn: Callable[[_T], _R], items: Iterable[_T], workers: int, *, name: str, ahead: int = 2
) -> Iterator[_R]:
    """``fn(item)`` of every item, computed on ``workers`` threads (named ``name``), yielded in the
    items' order. Items are taken from ``items`` on the calling thread, lazily, at most ``ahead``
    per worker in flight: an iterator that draws random numbers as it goes draws them in order, as a
    serial loop would. One worker runs everything on the calling thread."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        source = iter(items)
        pending: collections.deque[Future[_R]] = collections.deque(
            pool.submit(fn, item) for item in itertools.islice(source, ahead * workers)
        )
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(source, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()
