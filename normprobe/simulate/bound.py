r"""Theorem 3.4 checked numerically: how much one gradient step can raise the cosine similarity.

The paper's Theorem 3.4: "Let z_i and z_j be embeddings with equal norm [rho]. Let z_i' and z_j' be the
embeddings after maximizing the cosine similarity via a step of gradient descent with learning rate
[gamma]. Then the change in cosine similarity is bounded from above by" a quantity proportional to
gamma * sin^2(phi) / rho^2: "the change in the cosine similarity via a step of gradient descent scales
quadratically with the embedding's norm and the sine of the angle to its positive counterpart."

Derivation (following the proof in the paper's Appendix A.4; the constant is ours, the formulas of the
available text having been lost). Write phi for the angle between z_i and z_j, ||z_i|| = ||z_j|| = rho.

1. Proposition 3.1: the gradient of cos(z_i, z_j) with respect to z_i is u_i / rho, where u_i is the
   unit vector towards z_j projected onto the subspace orthogonal to z_i; its norm is sin(phi) / rho.
2. The step z_i' = z_i + gamma * u_i / rho is orthogonal to z_i and lies in the plane of z_i and z_j,
   pointing towards z_j. The right triangle with legs rho and gamma * sin(phi) / rho shows that z_i
   turns towards z_j by the angle alpha with tan(alpha) = gamma * sin(phi) / rho^2, and that its norm
   grows to rho * sqrt(1 + tan^2(alpha)) (Corollary 3.3: the norm can only grow).
3. By symmetry z_j turns by the same alpha towards z_i, in the same plane, so the new angle is
   |phi - 2 alpha| and the change of cosine similarity is exactly

       Delta = cos(phi - 2 alpha) - cos(phi) = sin(phi) sin(2 alpha) - cos(phi) (1 - cos(2 alpha)).

4. With t = tan(alpha): sin(2 alpha) = 2t / (1 + t^2) <= 2t and 1 - cos(2 alpha) = 2t^2 / (1 + t^2) >= 0.
   When cos(phi) >= 0, i.e. phi <= pi/2, the second term can only lower Delta, hence

       Delta <= 2 t sin(phi) = 2 gamma sin^2(phi) / rho^2,

   for every step size: a large step overshoots (2 alpha > phi) but never beats the bound. When phi > pi/2
   the second term is positive, and Delta <= 2 t sin(phi) holds exactly when |cos(phi)| <= t sin(phi),
   i.e. tan(alpha) >= |cot(phi)|: at obtuse angles a *small* step breaks the bound. To first order the
   change is 2 gamma sin^2(phi) / rho^2 in both cases; the sign of the second-order term decides.

:func:`check_bound` takes one real autograd step for every (norm, angle, learning rate) on the grid and
compares the measured change with the exact change of step 3 and with the bound of step 4.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from normprobe.simulate.configs import BoundConfig
from normprobe.simulate.sphere import random_unit_vectors


def turning_angle(norm: np.ndarray, angle: np.ndarray, learning_rate: np.ndarray) -> np.ndarray:
    """alpha, the angle by which one step turns each embedding towards the other: tan(alpha) = gamma sin(phi) / rho^2."""
    return np.arctan(learning_rate * np.sin(angle) / norm**2)


def exact_change(norm: np.ndarray, angle: np.ndarray, learning_rate: np.ndarray) -> np.ndarray:
    """Step 3 of the derivation: cos(phi - 2 alpha) - cos(phi)."""
    return np.cos(angle - 2.0 * turning_angle(norm, angle, learning_rate)) - np.cos(angle)


def quadratic_bound(norm: np.ndarray, angle: np.ndarray, learning_rate: np.ndarray) -> np.ndarray:
    """Step 4 of the derivation, Theorem 3.4's bound: 2 gamma sin^2(phi) / rho^2."""
    return 2.0 * learning_rate * np.sin(angle) ** 2 / norm**2


def bound_should_hold(angle: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Where the derivation says the bound holds: phi <= pi/2, or tan(alpha) >= |cot(phi)|."""
    return (angle <= math.pi / 2) | (np.tan(alpha) * np.sin(angle) >= np.abs(np.cos(angle)))


def _pairs_at(
    norm: torch.Tensor, angle: torch.Tensor, dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of embeddings of the given norm at the given angle, each pair in a random plane of R^dim."""
    first = random_unit_vectors(len(norm), dim, generator)
    other = random_unit_vectors(len(norm), dim, generator)
    orthogonal = other - (other * first).sum(dim=-1, keepdim=True) * first
    orthogonal = orthogonal / orthogonal.norm(dim=-1, keepdim=True)
    second = torch.cos(angle)[:, None] * first + torch.sin(angle)[:, None] * orthogonal
    return norm[:, None] * first, norm[:, None] * second


def measured_change(first: torch.Tensor, second: torch.Tensor, learning_rate: torch.Tensor) -> torch.Tensor:
    """Change of each pair's cosine similarity after one autograd gradient-ascent step on both embeddings."""
    first = first.clone().requires_grad_(True)
    second = second.clone().requires_grad_(True)
    before = torch.nn.functional.cosine_similarity(first, second, dim=-1)
    first_gradient, second_gradient = torch.autograd.grad(before.sum(), (first, second))
    with torch.no_grad():
        step = learning_rate[:, None]
        after = torch.nn.functional.cosine_similarity(
            first + step * first_gradient, second + step * second_gradient, dim=-1
        )
        return after - before


def check_bound(config: BoundConfig, device: torch.device | str = "cpu") -> pd.DataFrame:
    """One row per (norm, angle, learning rate): measured, exact and bounded change, and the verdicts."""
    grid = pd.MultiIndex.from_product(
        [config.norms, config.angles(), config.learning_rates], names=["norm", "angle", "learning_rate"]
    ).to_frame(index=False)
    norm, angle, learning_rate = (
        grid[column].to_numpy(dtype=np.float64) for column in ("norm", "angle", "learning_rate")
    )
    first, second = _pairs_at(
        torch.tensor(norm), torch.tensor(angle), config.dim, torch.Generator().manual_seed(config.seed)
    )
    measured = (
        measured_change(first.to(device), second.to(device), torch.tensor(learning_rate, device=device))
        .cpu()
        .numpy()
    )
    alpha = turning_angle(norm, angle, learning_rate)
    bound = quadratic_bound(norm, angle, learning_rate)
    return grid.assign(
        turning_angle=alpha,
        measured_change=measured,
        exact_change=exact_change(norm, angle, learning_rate),
        bound=bound,
        bound_holds=measured <= bound + config.slack,
        should_hold=bound_should_hold(angle, alpha),
        angle_regime=np.where(angle <= math.pi / 2, "acute (phi <= pi/2)", "obtuse (phi > pi/2)"),
        step_regime=np.where(2.0 * alpha > angle, "overshoot (2 alpha > phi)", "no overshoot"),
    )


def summarise_bound(checks: pd.DataFrame) -> pd.DataFrame:
    """Share of cases where the bound holds, per angle and step regime and overall.

    ``derivation_agrees`` is the share of cases where the measured verdict matches the derivation's
    prediction; ``max_exact_error`` is the largest gap between the measured and the exact change;
    ``median_tightness`` is the median of measured change / bound (1 means the bound is attained).
    """

    def summary(group: pd.DataFrame) -> pd.Series:
        return pd.Series(
            {
                "cases": len(group),
                "bound_holds": group["bound_holds"].mean(),
                "derivation_agrees": (group["bound_holds"] == group["should_hold"]).mean(),
                "max_exact_error": (group["measured_change"] - group["exact_change"]).abs().max(),
                "median_tightness": (group["measured_change"] / group["bound"]).median(),
            }
        )

    regimes = (
        checks.groupby(["angle_regime", "step_regime"]).apply(summary, include_groups=False).reset_index()
    )
    overall = summary(checks).to_frame().T.assign(angle_regime="all", step_regime="all")
    table = pd.concat([regimes, overall], ignore_index=True)
    return table.astype({"cases": int})
