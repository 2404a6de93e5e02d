"""What :func:`~normprobe.checkpoints.load_encoder` returns: a ready Encoder plus where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normprobe.checkpoints.contract import Origin
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
    origin: Origin = field(default_factory=Origin)

    @property
    def meta(self) -> dict[str, Any]:
        """``origin`` as plain data (``notes`` a list, ``encoder`` the spec), for callers that store or print it."""
        return {
            "notes": list(self.origin.notes),
            "encoder": self.origin.encoder_spec,
            "arch": self.origin.arch,
            "training": self.origin.training,
            "run_config": self.origin.run_config,
            "epoch": self.origin.epoch,
            "global_step": self.origin.global_step,
        }

    def summary(self) -> str:
        """What was loaded and how, for the CLI to print: one line, then one line per remapping note."""
        head = (
            f"{self.path}: adapter {self.adapter}, method {self.method}, heads {', '.join(self.heads)}, "
            f"input {self.preprocess.describe()}"
        )
        return "\n".join([head, *(f"  - {note}" for note in self.origin.notes)])
