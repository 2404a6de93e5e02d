"""Run one benchmark point in a fresh process, so that its peak resident memory (``ru_maxrss``) and
its allocator state are its own.

``target(*args, conn)`` runs in a spawned child and sends its result dict through ``conn``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any


def pin_child_threads(threads: int) -> None:
    """BLAS and OpenMP thread pools of the processes started from now on: these variables are read
    when the children import numpy, torch or faiss."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


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
