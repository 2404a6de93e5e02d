"""Run one benchmark point in a fresh process, so that its peak resident memory (``ru_maxrss``) and
its allocator state are its own.

``target(*args, conn)`` runs in a spawned child and sends its result dict through ``conn``.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def run_fresh(target: Callable[..., None], *args: Any) -> dict[str, Any]:
    """``target(*args, conn)`` in a spawned process; its result, or RuntimeError if it failed."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    result = parent.recv()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{args[0]} failed with exit code {proc.exitcode}")
    return result
