"""normprobe: how confident is a self-supervised encoder about each sample?

Cosine-similarity SSL losses grow the embedding norm of every sample they see, so the norm of the
raw (un-normalised) embedding encodes the encoder's confidence (Draganov et al., ICML 2025).

The Python API mirrors the CLI (see :mod:`normprobe.api`)::

    import normprobe
    results = normprobe.analyze("simclr.pt", ood=["cifar100"], out="results/")
    test = normprobe.embed("simclr.pt", "cifar10:test")
    table = normprobe.rank("simclr.pt", "photos/", reference="cifar10")

Importing normprobe stays light (no torch, pandas or scipy): they load when a function runs.
"""

from normprobe.api import analyze, embed
from normprobe.errors import NormprobeError
from normprobe.rank import rank  # light: normprobe.rank imports torch and pandas only when called

__version__ = "0.1.0"

__all__ = ["NormprobeError", "__version__", "analyze", "embed", "rank"]
