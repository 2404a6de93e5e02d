"""The paper's simulations (Draganov et al., ICML 2025, Section 4 and Appendix B) as a Python API.

Each simulation has a frozen config dataclass whose defaults follow the paper and functions that
return pandas DataFrames; ``normprobe simulate`` is a thin command line on top, and
:mod:`normprobe.simulate.figures` draws them with plotly.
"""

from normprobe.simulate.angles import AnglesConfig, steps_versus_angle
from normprobe.simulate.bound import BoundConfig, check_bound, summarise_bound
from normprobe.simulate.latent_classes import (
    LatentClassesConfig,
    LatentClassesResult,
    class_norm_summary,
    class_norm_trajectory,
    density_summary,
    simulate_latent_classes,
)
from normprobe.simulate.norms import (
    NormsConfig,
    steps_versus_norm,
    steps_versus_weight_decay,
    weight_decay_table,
)

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
