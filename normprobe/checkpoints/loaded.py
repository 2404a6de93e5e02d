"""What every adapter returns: a ready Encoder plus where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normprobe.preprocess import Preprocess


@dataclass
class LoadedEncoder:
    """An encoder in eval mode, its preprocessing, and provenance for ``run.json``.

    ``encoder(x)`` returns a dict of raw embeddings keyed by head (``feats``, ``z``, ``p``).
    """

    encoder: nn.Module
    preprocess: Preprocess
    heads: tuple[str, ...]
    adapter: str
    method: str
    sha256: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)
