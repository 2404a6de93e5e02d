"""Losses on raw embeddings, and the GradScale layer (Draganov et al., 2025, Sec. 6 and Appendix D).

Every loss takes the *un-normalised* embeddings and normalises inside, so the embedding norm is
part of the computation graph: "cos(z_i, z_j)" has gradient magnitude inversely proportional to
||z_i|| -- the embedding-norm effect. GradScale undoes it per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from normprobe.training import distributed


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies sample i's gradient by ||z_i||^p."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, power: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.power = power
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        # half-precision embeddings get their norm in float32; float32/64 keep their precision
        wide = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        scale = torch.linalg.vector_norm(wide, dim=1, keepdim=True).pow(ctx.power)
        return grad * scale.to(grad.dtype), None


def grad_scale(z: torch.Tensor, power: float) -> torch.Tensor:
    """GradScale: "the identity function in the forward pass. However, the backwards pass multiplies
    each sample i's contribution to the gradient by ||z_i||^p"; p=0 is default training, p=1 cancels
    the 1/||z|| factor of the cosine similarity's gradient."""
    return z if power == 0 else _GradScale.apply(z, float(power))


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: for each of the 2N views, cross-entropy of its positive among the other
    2N-1 views, similarities = cosine / temperature. Under DDP the views of every rank are gathered
    (gradients flow back to their owners) and each rank averages over its own 2n anchors, so the
    DDP-averaged gradient equals the single-process one on the global batch."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    all1, all2 = distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)
    total = all1.shape[0]
    offset = distributed.rank() * n
    keys = torch.cat((all1, all2))  # 2N×d, first view then second view
    queries = torch.cat((z1, z2))  # 2n×d
    logits = queries @ keys.T / temperature
    own = torch.cat((torch.arange(n), torch.arange(n) + total)).to(z1.device) + offset
    logits[torch.arange(2 * n, device=z1.device), own] = float("-inf")
    positives = torch.cat((torch.arange(n) + total, torch.arange(n))).to(z1.device) + offset
    return F.cross_entropy(logits, positives)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam / BYOL: D(p, z) = -cos(p, stopgrad(z)), averaged over the batch."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def moco_infonce(
    q: torch.Tensor, k: torch.Tensor, temperature: float, queue: torch.Tensor | None = None
) -> torch.Tensor:
    """MoCo: cross-entropy of each query's own key among the negatives.

    v2: logits = [q.k+, q.queue] / tau (Chen et al., 2020b). v3 (``queue=None``): the keys of the
    whole global batch are the candidates, "2 tau" times the loss (Chen, Xie & He, 2021).
    """
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.detach().float(), dim=1)
    if queue is not None:
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat((positive, q @ queue.T), dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
    keys = distributed.gather_with_grad(k)
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + distributed.rank() * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)
