"""The config dataclasses of the paper's simulations, light to import (no torch, no pandas).

``normprobe simulate`` builds its options from their fields, so they live apart from the
simulations themselves (:mod:`normprobe.simulate.norms`, ``angles``, ``bound``, ``latent_classes``),
which re-export them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from normprobe.simulate.validation import require


def _paper_norm_grid() -> tuple[float, ...]:
    # Figure 2(a): quarter steps below 1, unit steps from 1 to 10.
    return (0.25, 0.5, 0.75) + tuple(float(norm) for norm in range(1, 11))


@dataclass(frozen=True)
class NormsConfig:
    """Parameters of ``normprobe simulate norms``; the defaults follow the paper's Section 4.1 / B.1.

    ``learning_rate`` is per pair: 0.02 equals the authors' gradient descent on the mean over 500 pairs
    with learning rate 10 (see :mod:`normprobe.simulate.descent`).
    """

    seed: int = 0
    pairs: int = 500
    dim: int = 20
    learning_rate: float = 0.02
    tolerance: float = 1e-3
    max_steps: int = 20_000
    patience: int = 500
    norms: tuple[float, ...] = field(default_factory=_paper_norm_grid)
    initial_norms: tuple[float, ...] = (1.0, 4.0, 7.0)
    weight_decays: tuple[float, ...] = (0.0, 0.01, 0.1, 10.0)

    def __post_init__(self) -> None:
        require(
            self.pairs >= 1 and self.dim >= 2,
            f"need at least 1 pair in at least 2 dimensions, got {self.pairs} pairs in {self.dim}",
        )
        require(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        require(0 < self.tolerance < 2, f"tolerance must lie in (0, 2), got {self.tolerance}")
        require(self.max_steps >= 1 and self.patience >= 1, "max_steps and patience must be at least 1")
        require(len(self.norms) > 0 and min(self.norms) > 0, f"norms must be positive, got {self.norms}")
        require(
            len(self.initial_norms) > 0 and min(self.initial_norms) > 0,
            f"initial_norms must be positive, got {self.initial_norms}",
        )
        require(
            len(self.weight_decays) > 0 and min(self.weight_decays) >= 0,
            f"weight_decays must be >= 0, got {self.weight_decays}",
        )


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


@dataclass(frozen=True)
class BoundConfig:
    """Parameters of ``normprobe simulate bound``: the grid of norms, angles and learning rates.

    Angles run evenly over the open interval (0, pi) (``angle_count`` values); ``slack`` absorbs
    float64 rounding when deciding whether a measured change exceeds the bound.
    """

    seed: int = 0
    dim: int = 20
    norms: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    angle_count: int = 36
    learning_rates: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    slack: float = 1e-12

    def __post_init__(self) -> None:
        require(self.dim >= 2, f"dim must be at least 2, got {self.dim}")
        require(len(self.norms) > 0 and min(self.norms) > 0, f"norms must be positive, got {self.norms}")
        require(
            len(self.learning_rates) > 0 and min(self.learning_rates) > 0,
            f"learning_rates must be positive, got {self.learning_rates}",
        )
        require(self.angle_count >= 1, f"angle_count must be at least 1, got {self.angle_count}")
        require(self.slack >= 0, f"slack must be >= 0, got {self.slack}")

    def angles(self) -> list[float]:
        return [float(value) for value in np.linspace(0.0, math.pi, self.angle_count + 2)[1:-1]]


@dataclass(frozen=True)
class LatentClassesConfig:
    """Parameters of ``normprobe simulate latent-classes``.

    Class count, samples per class, batch size and the 2-layer ReLU network follow Appendix B.2; the
    paper's text does not give the dimensions, spread, temperature, learning rate or epochs, so
    those are chosen to train in seconds on a CPU. Optimisation is plain SGD, the setting of the
    paper's theory. One run's per-class norms wander with its geometry and SGD noise by tens of
    percent, as much as the frequency effect itself, hence 16 repeats (trained together, see
    :mod:`normprobe.simulate.stacked_mlp`) by default.
    """

    seed: int = 0
    repeats: int = 16
    classes: int = 4
    samples_per_class: int = 1000
    latent_dim: int = 16
    input_dim: int = 64
    spread: float = 0.3
    hidden_dim: int = 64
    temperature: float = 0.5
    learning_rate: float = 2.0
    batch_size: int = 128
    epochs: int = 10
    imbalance_ratio: float = 2.0

    def __post_init__(self) -> None:
        require(self.repeats >= 1 and self.epochs >= 1, "repeats and epochs must be at least 1")
        require(
            self.classes >= 2 and self.samples_per_class >= 2, "need at least 2 classes of at least 2 samples"
        )
        require(
            min(self.latent_dim, self.input_dim, self.hidden_dim, self.batch_size) >= 1,
            "dimensions and batch_size must be at least 1",
        )
        require(self.spread >= 0, f"spread must be >= 0, got {self.spread}")
        require(
            self.temperature > 0 and self.learning_rate > 0, "temperature and learning_rate must be positive"
        )
        require(self.imbalance_ratio > 0, f"imbalance_ratio must be positive, got {self.imbalance_ratio}")
