"""Steps to align positive pairs as a function of the mean initial angle between them.

Figure 2(a) of the paper, angle axis, and Appendix C.2 ("opposite-halves effect"): the gradient of the
cosine similarity has magnitude sin(phi)/||z|| (Proposition 3.1), so pairs that start nearly antipodal
(phi close to pi) barely move at first. The paper finds that "the angle between positive samples only
has a non-negligible impact as the angle approaches its upper limit", whereas the norm slows
convergence without bound; compare with :mod:`normprobe.simulate.norms`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from normprobe.simulate.descent import align_pairs, steps_or_nan
from normprobe.simulate.sphere import mean_angle, random_positive_pairs, steer_partners
from normprobe.simulate.validation import require


@dataclass(frozen=True)
class AnglesConfig:
    """Parameters of ``normprobe simulate angles``; defaults follow the paper's Appendix B.1.

    The interpolation values ``t`` run evenly over [-max_interpolation, max_interpolation]
    (``interpolation_count`` values); see :func:`normprobe.simulate.sphere.steer_partners`.
    """

    seed: int = 0
    pairs: int = 500
    dim: int = 20
    norm: float = 1.0
    learning_rate: float = 0.02
    tolerance: float = 1e-3
    max_steps: int = 20_000
    patience: int = 500
    interpolation_count: int = 49
    max_interpolation: float = 0.96

    def __post_init__(self) -> None:
        require(
            self.pairs >= 1 and self.dim >= 2,
            f"need at least 1 pair in at least 2 dimensions, got {self.pairs} pairs in {self.dim}",
        )
        require(self.norm > 0 and self.learning_rate > 0, "norm and learning_rate must be positive")
        require(0 < self.tolerance < 2, f"tolerance must lie in (0, 2), got {self.tolerance}")
        require(self.max_steps >= 1 and self.patience >= 1, "max_steps and patience must be at least 1")
        require(
            self.interpolation_count >= 2,
            f"interpolation_count must be at least 2, got {self.interpolation_count}",
        )
        require(
            0 < self.max_interpolation < 1,
            f"max_interpolation must lie in (0, 1), got {self.max_interpolation}",
        )

    def interpolations(self) -> list[float]:
        return [
            float(value)
            for value in np.linspace(
                -self.max_interpolation, self.max_interpolation, self.interpolation_count
            )
        ]


def steps_versus_angle(config: AnglesConfig, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Steps until the mean cosine similarity exceeds 1 - tolerance, per mean initial angle.

    Every interpolation value steers the same random partners, so the rows differ only in the angle.
    """
    generator = torch.Generator().manual_seed(config.seed)
    anchors, partners = (
        points.to(device) for points in random_positive_pairs(config.pairs, config.dim, generator)
    )
    interpolations = config.interpolations()
    steered = [steer_partners(anchors, partners, value) for value in interpolations]
    alignments = align_pairs(
        config.norm * anchors.expand(len(steered), -1, -1),
        config.norm * torch.stack(steered),
        learning_rate=config.learning_rate,
        weight_decays=torch.zeros(len(steered), dtype=torch.float64),
        threshold=1.0 - config.tolerance,
        max_steps=config.max_steps,
        patience=config.patience,
    )
    return pd.DataFrame(
        {
            "interpolation": interpolations,
            "mean_initial_angle": [mean_angle(anchors, partner) for partner in steered],
            "steps": [steps_or_nan(alignment) for alignment in alignments],
            "converged": [alignment.converged for alignment in alignments],
        }
    )
