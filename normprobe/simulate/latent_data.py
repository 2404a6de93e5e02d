"""Observations generated from latent classes on the sphere, the data of the paper's Section 4.2.

Appendix B.2: "We choose centers for 4 latent classes uniformly at random [on the sphere] by randomly
sampling vectors from a standard multivariate normal distribution and normalizing them to the
hypersphere. We then obtain the latent samples around [each] center [by adding Gaussian noise] and
re-normalizing to the hypersphere. For each center, we produce 1000 latent samples [...] We finally
obtain the dataset by generating a random matrix [...] and applying it to the latent samples."
For Figure 2(c), "class [1] now has sample probability ~1/16, class [2] has sample probability ~1/8,
and so on".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentGeometry:
    """The class centers on the latent sphere and the random linear generating map g(z) = z @ mixing."""

    centers: torch.Tensor
    mixing: torch.Tensor

    @staticmethod
    def draw(classes: int, latent_dim: int, input_dim: int, generator: torch.Generator) -> LatentGeometry:
        centers = torch.randn(classes, latent_dim, generator=generator)
        # Scaling the map by 1/sqrt(latent_dim) keeps the observations' coordinates of order one.
        mixing = torch.randn(latent_dim, input_dim, generator=generator) / latent_dim**0.5
        return LatentGeometry(centers / centers.norm(dim=-1, keepdim=True), mixing)


@dataclass(frozen=True)
class LatentDataset:
    inputs: torch.Tensor
    labels: torch.Tensor


def class_probabilities(classes: int, imbalance_ratio: float) -> torch.Tensor:
    """Class c drawn with probability proportional to ratio^c: ratio 2 over 4 classes gives ~1/16, 1/8, 1/4, 1/2."""
    weights = torch.tensor([imbalance_ratio**index for index in range(classes)], dtype=torch.float64)
    return weights / weights.sum()


def sample_dataset(
    geometry: LatentGeometry,
    probabilities: torch.Tensor,
    size: int,
    spread: float,
    generator: torch.Generator,
) -> LatentDataset:
    """``size`` observations: a class drawn by ``probabilities``, a latent point scattered around its center."""
    labels = torch.multinomial(probabilities, size, replacement=True, generator=generator)
    latents = geometry.centers[labels] + spread * torch.randn(
        size, geometry.centers.shape[1], generator=generator
    )
    latents = latents / latents.norm(dim=-1, keepdim=True)
    return LatentDataset(inputs=latents @ geometry.mixing, labels=labels)
