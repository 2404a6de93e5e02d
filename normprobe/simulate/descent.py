"""Gradient ascent on the cosine similarity of positive pairs, run until the pairs align.

The paper's Section 4.1 optimises "the cosine similarity by performing standard gradient descent on
the embeddings themselves" and counts the steps until "the average cosine similarity between positive
pairs exceeds" 1 - 1e-3 (Appendix B.1). Section 4.1 adds weight decay: the objective becomes
cos(z_i, z_j) - lambda * ||z||^2 for each embedding z of the pair.

Proposition 3.1 gives the gradient in closed form: the gradient of cos(z_i, z_j) with respect to z_i is
(z_j/||z_j|| - cos(phi) z_i/||z_i||) / ||z_i||, the unit vector towards z_j projected onto the tangent
space at z_i and scaled by 1/||z_i||; its magnitude is sin(phi)/||z_i||. This module applies that exact
gradient (checked against autograd in the tests) rather than running autograd at every step, because a
run at norm 10 takes about ten thousand steps and the whole figure must stay well under a minute on a CPU.

The pairs never interact, so every pair follows its own gradient: summing the objective over pairs
(as here) with learning rate ``lr`` is the same as the paper's gradient descent on the *mean* over N
pairs with learning rate ``lr * N``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Alignment:
    """How one batch of positive pairs fared under gradient ascent.

    ``steps`` is the number of gradient steps after which the mean cosine similarity first exceeded the
    threshold, or ``None`` for the paper's "divergence": the mean cosine similarity stalled (no new
    maximum for ``patience`` steps), the embeddings stopped being finite, or the step budget ran out.
    The final statistics are taken at the step the run ended.
    """

    steps: int | None
    final_mean_cosine: float
    final_mean_norm: float

    @property
    def converged(self) -> bool:
        return self.steps is not None


def cosine_ascent_direction(
    first: torch.Tensor, second: torch.Tensor, weight_decay: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``cos(first, second) - weight_decay * (||first||^2 + ||second||^2)`` for each row pair.

    ``first`` and ``second`` have shape (..., D); ``weight_decay`` broadcasts against (..., 1).
    Returns the gradient with respect to ``first``, to ``second``, and the cosine similarities (..., 1).
    """
    first_norm = first.norm(dim=-1, keepdim=True)
    second_norm = second.norm(dim=-1, keepdim=True)
    first_unit = first / first_norm
    second_unit = second / second_norm
    cosine = (first_unit * second_unit).sum(dim=-1, keepdim=True)
    first_gradient = (second_unit - cosine * first_unit) / first_norm - 2.0 * weight_decay * first
    second_gradient = (first_unit - cosine * second_unit) / second_norm - 2.0 * weight_decay * second
    return first_gradient, second_gradient, cosine


def align_pairs(
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    learning_rate: float,
    weight_decays: torch.Tensor,
    threshold: float,
    max_steps: int,
    patience: int,
) -> list[Alignment]:
    """Run gradient ascent on C independent batches of N positive pairs at once, one result per batch.

    ``first`` and ``second`` have shape (C, N, D): batch c holds N pairs that share the weight decay
    ``weight_decays[c]``. Every step updates all pairs of all unfinished batches in one tensor
    operation; a batch leaves the computation as soon as its mean cosine similarity exceeds
    ``threshold``, turns non-finite or stalls, so a slow batch does not make the fast ones pay.

    Stalling is how collapse shows: without decay or with a moderate one every pair's angle shrinks at
    every step, so the mean cosine similarity keeps setting new maxima; under too strong a decay the
    norms shrink towards the origin, where each gradient step (of size proportional to 1/||z||)
    overshoots and the mean cosine similarity oscillates far below the threshold for good.
    """
    if first.shape != second.shape or first.dim() != 3:
        raise ValueError(
            f"expected two (configs, pairs, dim) tensors of one shape, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    results: list[Alignment | None] = [None] * first.shape[0]
    remaining = torch.arange(first.shape[0])
    decay = weight_decays.to(first).reshape(-1, 1, 1)
    best_cosine = torch.full((first.shape[0],), -math.inf, dtype=first.dtype, device=first.device)
    best_step = torch.zeros(first.shape[0], dtype=torch.long, device=first.device)
    for step in range(max_steps + 1):
        first_gradient, second_gradient, cosine = cosine_ascent_direction(first, second, decay)
        mean_cosine = cosine.mean(dim=(1, 2))
        improved = mean_cosine > best_cosine
        best_cosine = torch.where(improved, mean_cosine, best_cosine)
        best_step = torch.where(improved, step, best_step)
        aligned = mean_cosine > threshold
        stalled = step - best_step >= patience
        finished = aligned | stalled | ~torch.isfinite(mean_cosine) | (step == max_steps)
        if finished.any():
            mean_norm = 0.5 * (first.norm(dim=-1) + second.norm(dim=-1)).mean(dim=1)
            for index in torch.nonzero(finished).flatten().tolist():
                results[int(remaining[index])] = Alignment(
                    steps=step if bool(aligned[index]) else None,
                    final_mean_cosine=float(mean_cosine[index]),
                    final_mean_norm=float(mean_norm[index]),
                )
            keep = ~finished
            if not keep.any():
                break
            remaining, decay = remaining[keep.cpu()], decay[keep]
            best_cosine, best_step = best_cosine[keep], best_step[keep]
            first, second = first[keep], second[keep]
            first_gradient, second_gradient = first_gradient[keep], second_gradient[keep]
        first = first + learning_rate * first_gradient
        second = second + learning_rate * second_gradient
    # The last step finishes every batch still running, so every slot is filled.
    return [result for result in results if result is not None]


def steps_or_nan(alignment: Alignment) -> float:
    """Steps as a float for DataFrames and plots, NaN for a run that diverged."""
    return float(alignment.steps) if alignment.steps is not None else math.nan
