"""The run layer: how `normprobe analyze` puts the leaf modules together.

``context`` builds the :class:`~normprobe.pipeline.context.Run` once (settings, encoder, device,
cache, sets by role; ``sets`` loads and checks them), ``steps`` are the functions of it (kNN,
scores, each analysis with its tables, summary and report section), and ``analyze`` is the short
list of steps that writes the results folder through :mod:`normprobe.record` and
:mod:`normprobe.results`.
"""

from normprobe.analyses.settings import AnalysisSettings
from normprobe.pipeline.analyze import run_analysis

__all__ = ["AnalysisSettings", "run_analysis"]
