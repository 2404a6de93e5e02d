"""Several processes through ``torchrun``: rank helpers and a gather that keeps gradients.

Without ``torch.distributed`` initialised every helper degrades to the single-process answer.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_nn

# the rank helpers are normprobe's (extraction under torchrun uses them too); re-exported here
from normprobe.distributed import init_from_env, is_distributed, rank, world_size

__all__ = ["gather_with_grad", "init_from_env", "is_distributed", "rank", "world_size"]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x``, concatenated in rank order, with gradients flowing back to each
    row's owner (the backward pass sums every rank's gradient for my rows): a loss computed on the
    gathered batch trains all ranks. ``torch.distributed.nn.functional.all_gather`` does exactly this."""
    if world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x.contiguous()))
