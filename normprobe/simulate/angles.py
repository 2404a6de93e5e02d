"""Steps to align positive pairs as a function of the mean initial angle between them.

Figure 2(a) of the paper, angle axis, and Appendix C.2 ("opposite-halves effect"): the gradient of the
cosine similarity has magnitude sin(phi)/||z|| (Proposition 3.1), so pairs that start nearly antipodal
(phi close to pi) barely move at first. The paper finds that "the angle between positive samples only
has a non-negligible impact as the angle approaches its upper limit", whereas the norm slows
convergence without bound; compare with :mod:`normprobe.simulate.norms`.
"""

from __future__ import annotations

import pandas as pd
import torch

from normprobe.simulate.configs import AnglesConfig
from normprobe.simulate.descent import align_pairs, steps_or_nan
from normprobe.simulate.sphere import mean_angle, random_positive_pairs, steer_partners


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
