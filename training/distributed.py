"""Several processes through ``torchrun``: rank helpers and a gather that keeps gradients.

Without ``torch.distributed`` initialised every helper degrades to the single-process answer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# the rank helpers are normprobe's (extraction under torchrun uses them too); re-exported here
from normprobe.distributed import init_from_env, is_distributed, rank, world_size

__all__ = ["gather_with_grad", "init_from_env", "is_distributed", "rank", "world_size"]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for my rows and returns them,
    so a loss computed on gathered rows trains the rows' owners."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n : (rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x) if world_size() > 1 else x
