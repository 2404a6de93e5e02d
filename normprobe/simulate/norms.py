"""Steps to align positive pairs as a function of their embedding norm, with and without weight decay.

Section 4.1 of the paper: "we sampled 500 pairs of points directly on [the sphere in 20 dimensions]
[...] We then evaluate Theorem 3.4 by applying the cosine similarity gradients to all positive pairs of
embeddings until convergence." Figure 2(a) shows that the number of steps grows quadratically with the
embedding norm. With weight decay, "we now optimize [cos - lambda ||z||^2] [...] We initialize embedding
pairs with different initial norms (1, 4, and 7)". Table 1 of the paper reports 64 / 526 / 1080 steps
without weight decay, 49 / 318 / 610 with moderate weight decay, and divergence when it is too large:
"the representation collapses entirely, presumably because the embedding is more incentivized to shrink
to the origin than to maximize the cosine similarity".

The paper's weight-decay strengths did not survive in its text, so the defaults here are chosen to show
the three regimes under this learning rate: no decay, two moderate strengths, and one past the collapse.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from normprobe.simulate.configs import NormsConfig
from normprobe.simulate.descent import align_pairs, steps_or_nan
from normprobe.simulate.sphere import random_positive_pairs


def _align_at_norms(
    config: NormsConfig, norms: Sequence[float], weight_decays: Sequence[float], device: torch.device | str
) -> pd.DataFrame:
    """Every (norm, weight decay) combination, all starting from the same pairs scaled to the norm."""
    generator = torch.Generator().manual_seed(config.seed)
    anchors, partners = (
        points.to(device) for points in random_positive_pairs(config.pairs, config.dim, generator)
    )
    grid = [(norm, decay) for norm in norms for decay in weight_decays]
    scales = torch.tensor([norm for norm, _ in grid], dtype=torch.float64, device=device).reshape(-1, 1, 1)
    alignments = align_pairs(
        scales * anchors,
        scales * partners,
        learning_rate=config.learning_rate,
        weight_decays=torch.tensor([decay for _, decay in grid], dtype=torch.float64),
        threshold=1.0 - config.tolerance,
        max_steps=config.max_steps,
        patience=config.patience,
    )
    return pd.DataFrame(
        {
            "initial_norm": [norm for norm, _ in grid],
            "weight_decay": [decay for _, decay in grid],
            "steps": [steps_or_nan(alignment) for alignment in alignments],
            "converged": [alignment.converged for alignment in alignments],
            "final_mean_norm": [alignment.final_mean_norm for alignment in alignments],
            "final_mean_cosine": [alignment.final_mean_cosine for alignment in alignments],
        }
    )


def steps_versus_norm(config: NormsConfig, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Figure 2(a), norm axis: steps until the mean cosine similarity exceeds 1 - tolerance, per norm.

    Adds ``steps_per_norm_squared``: Theorem 3.4 predicts it to be roughly constant.
    """
    table = _align_at_norms(config, config.norms, (0.0,), device).drop(columns="weight_decay")
    table["steps_per_norm_squared"] = table["steps"] / table["initial_norm"] ** 2
    return table


def steps_versus_weight_decay(config: NormsConfig, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Table 1 in long form: one row per (initial norm, weight decay); ``steps`` is NaN on divergence."""
    return _align_at_norms(config, config.initial_norms, config.weight_decays, device)


def weight_decay_table(long: pd.DataFrame) -> pd.DataFrame:
    """Table 1's layout: initial norms down, weight decays across, steps or "divergence" in the cells."""
    cells = long.assign(
        cell=[
            f"{int(steps)}" if converged else "divergence"
            for steps, converged in zip(long["steps"], long["converged"], strict=True)
        ]
    )
    table = cells.pivot(index="initial_norm", columns="weight_decay", values="cell")
    table.columns = [f"lambda={decay:g}" for decay in table.columns]
    return table.rename_axis("initial norm").reset_index()
