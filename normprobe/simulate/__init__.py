"""The paper's simulations (Draganov et al., ICML 2025, Section 4 and Appendix B) as a Python API.

Each simulation has a frozen config dataclass whose defaults follow the paper and functions that
return pandas DataFrames; ``normprobe simulate`` is a thin command line on top, and
:mod:`normprobe.simulate.figures` draws them with plotly.

The configs import eagerly (they are light); the simulations import torch and pandas, so they load
on first use: ``normprobe --help`` builds the simulate options without either.
"""

from __future__ import annotations

import importlib
from typing import Any

from normprobe.simulate.configs import AnglesConfig, BoundConfig, LatentClassesConfig, NormsConfig

_LAZY = {
    "steps_versus_angle": "angles",
    "check_bound": "bound",
    "summarise_bound": "bound",
    "LatentClassesResult": "latent_classes",
    "class_norm_summary": "latent_classes",
    "class_norm_trajectory": "latent_classes",
    "density_summary": "latent_classes",
    "simulate_latent_classes": "latent_classes",
    "steps_versus_norm": "norms",
    "steps_versus_weight_decay": "norms",
    "weight_decay_table": "norms",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "AnglesConfig",
    "BoundConfig",
    "LatentClassesConfig",
    "LatentClassesResult",
    "NormsConfig",
    "check_bound",
    "class_norm_summary",
    "class_norm_trajectory",
    "density_summary",
    "simulate_latent_classes",
    "steps_versus_angle",
    "steps_versus_norm",
    "steps_versus_weight_decay",
    "summarise_bound",
    "weight_decay_table",
]
