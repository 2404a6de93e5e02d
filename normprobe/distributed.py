"""Several processes through ``torchrun``: rank helpers, contiguous shards and a gather to rank 0.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`init_from_env` joins the process group
(gloo on the CPU, nccl on CUDA); without ``torch.distributed`` initialised every helper degrades
to the single-process answer. The training package (``training.distributed``) uses the same helpers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched() -> bool:
    """Whether this process was started as one of several by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None, device: torch.device) -> bool:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    if not launched() or is_distributed():
        return is_distributed()
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return True


def local_device(device: torch.device) -> torch.device:
    """``device``, or for an unnumbered CUDA device under torchrun, the GPU of this process's local
    rank (made current, as nccl expects)."""
    if device.type == "cuda" and device.index is None and launched():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def join(device: torch.device) -> torch.device:
    """Under torchrun, join the process group (once) for work on ``device`` and return this rank's
    device; otherwise return ``device`` unchanged.

    On CUDA the group gets both backends, nccl for CUDA tensors and gloo for CPU ones (results are
    gathered on the CPU); on the CPU, gloo.
    """
    if not launched():
        return device
    device = local_device(device)
    init_from_env("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", device)
    return device


def shard(n: int, batch_size: int, ranks: int | None = None, me: int | None = None) -> slice:
    """The contiguous rows of ``n`` that rank ``me`` of ``ranks`` processes (default: this process's).

    Shards are whole runs of ``batch_size`` consecutive rows, as one process would batch them, so
    every rank's batches are batches of the single-process run (the same inputs to every kernel).
    Each rank gets ``ceil(n_batches / ranks)`` batches, the last ranks fewer (or none).
    """
    ranks = world_size() if ranks is None else ranks
    me = rank() if me is None else me
    batches = math.ceil(n / batch_size)
    per_rank = math.ceil(batches / ranks) * batch_size
    return slice(min(n, me * per_rank), min(n, (me + 1) * per_rank))


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable, small), in rank order, on every rank."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` (picklable, small) on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _transport() -> torch.device:
    """Where collective tensors live: the CPU, unless the group has only nccl (then this rank's GPU)."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def gather_rows(part: np.ndarray, n: int) -> np.ndarray | None:
    """Rank 0: the ``n`` rows of every rank's ``part`` in rank order (float32); other ranks: None.

    Each rank's ``part`` holds its shard's rows (same columns on every rank; a rank may have none).
    Parts travel padded to the largest one and land in one array on rank 0; with :func:`shard`'s
    layout (full shards, then one short one, then empty ones) the merged rows are a view of it, so
    rank 0 holds the merged array once. Without a process group: ``part`` itself.
    """
    if not is_distributed():
        return part
    sizes = all_gather_object(len(part))
    height = max(sizes)
    device = _transport()
    padded = torch.zeros((height, *part.shape[1:]), dtype=torch.float32, device=device)
    if len(part):
        padded[: len(part)] = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(device)
    if rank() != 0:
        dist.gather(padded, None, dst=0)
        return None
    merged = torch.empty((len(sizes) * height, *part.shape[1:]), dtype=torch.float32, device=device)
    dist.gather(padded, list(merged.split(height)), dst=0)
    full = next((r for r, size in enumerate(sizes) if size < height), len(sizes))
    if all(size == 0 for size in sizes[full + 1 :]):
        out = merged[:n]
    else:  # short shards in the middle: drop each one's padding in order
        out = torch.cat([merged[r * height : r * height + size] for r, size in enumerate(sizes)])
    if len(out) != n:
        raise RuntimeError(f"gathered {len(out)} rows from {len(sizes)} ranks, expected {n}")
    return out.cpu().numpy()
