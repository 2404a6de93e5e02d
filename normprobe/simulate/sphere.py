"""Random positive pairs on the unit hypersphere, the data of the paper's non-parametric simulations.

Appendix B.1: "we produced two datasets [...] independently by randomly sampling points [...] from a
standard normal distribution and normalizing them to the hypersphere. The i-th point in [the first]
dataset is the positive counterpart for the i-th point in [the second]." The angle between the two
points of a pair is then controlled by interpolating the second point towards the antipode of the
first, and the norm by scaling.
"""

from __future__ import annotations

import torch


def random_unit_vectors(count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` points drawn uniformly on the unit sphere in ``dim`` dimensions, as float64.

    Sampled on the CPU so that a seed gives the same points whatever device the caller runs on.
    """
    points = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return points / points.norm(dim=-1, keepdim=True)


def random_positive_pairs(
    count: int, dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent sets of unit vectors; row i of each is a positive pair (mean angle about pi/2)."""
    anchors = random_unit_vectors(count, dim, generator)
    partners = random_unit_vectors(count, dim, generator)
    return anchors, partners


def steer_partners(anchors: torch.Tensor, partners: torch.Tensor, interpolation: float) -> torch.Tensor:
    """Appendix B.1's angle control: move each partner towards the anchor's antipode, or towards the anchor.

    The controlled partner is ``normalize((1 - |t|) * partner - t * anchor)``. A random partner sits at
    about pi/2 from its anchor; ``t -> 1`` sends it to the antipode (angle pi), ``t -> -1`` onto the
    anchor (angle 0), so ``t`` sets the mean angle between positives.
    """
    if not -1.0 < interpolation < 1.0:
        raise ValueError(f"interpolation must lie strictly between -1 and 1, got {interpolation}")
    steered = (1.0 - abs(interpolation)) * partners - interpolation * anchors
    return steered / steered.norm(dim=-1, keepdim=True)


def mean_angle(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean angle (radians) between corresponding rows."""
    cosines = torch.nn.functional.cosine_similarity(first, second, dim=-1).clamp(-1.0, 1.0)
    return float(torch.arccos(cosines).mean())
