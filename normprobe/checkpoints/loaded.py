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

    def summary(self) -> str:
        """What was loaded and how, for the CLI to print: one line, then one line per remapping note."""
        head = (
            f"{self.path}: adapter {self.adapter}, method {self.method}, heads {', '.join(self.heads)}, "
            f"input {self.preprocess.describe()}"
        )
        return "\n".join([head, *(f"  - {note}" for note in self.meta.get("notes", []))])
