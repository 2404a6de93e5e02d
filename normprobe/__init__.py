"""normprobe: how confident is a self-supervised encoder about each sample?

Cosine-similarity SSL losses grow the embedding norm of every sample they see, so the norm of the
raw (un-normalised) embedding encodes the encoder's confidence (Draganov et al., ICML 2025).
"""

from normprobe.errors import NormprobeError
from normprobe.rank import rank  # light: normprobe.rank imports torch and pandas only when called

__version__ = "0.1.0"

__all__ = ["NormprobeError", "__version__", "rank"]
