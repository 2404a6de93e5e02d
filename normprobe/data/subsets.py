"""The paper's deterministic class-imbalanced subsets (Van Assel & Balestriero, 2024).

"For Cifar-10, we use the exponential split ... where class i has n_i = 5000 / 1.5^i samples.
Similarly for Cifar-100, the i-th class receives n_i = 500 / 1.034^i samples."
"""

from __future__ import annotations

import numpy as np

from normprobe.errors import NormprobeError

IMBALANCE_RULES: dict[str, tuple[float, float]] = {"cifar10": (5000.0, 1.5), "cifar100": (500.0, 1.034)}


def imbalanced_class_sizes(dataset: str, num_classes: int) -> np.ndarray:
    """n_i = floor(n_0 / base**i) for class i."""
    if dataset not in IMBALANCE_RULES:
        raise NormprobeError(
            f"no imbalanced split is defined for {dataset!r} (only {', '.join(IMBALANCE_RULES)})"
        )
    n0, base = IMBALANCE_RULES[dataset]
    return np.floor(n0 / base ** np.arange(num_classes)).astype(np.int64)


def imbalanced_indices(dataset: str, labels: np.ndarray) -> np.ndarray:
    """Positions of the first n_i samples of each class i, in dataset order (deterministic, no RNG)."""
    sizes = imbalanced_class_sizes(dataset, int(labels.max()) + 1)
    rank_in_class = np.empty(len(labels), np.int64)
    for cls in range(len(sizes)):
        members = np.flatnonzero(labels == cls)
        rank_in_class[members] = np.arange(len(members))
    return np.flatnonzero(rank_in_class < sizes[labels])
