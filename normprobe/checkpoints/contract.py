"""The adapter contract: what every adapter is given and what it gives back.

Every adapter has ``detect(source) -> bool`` and ``build(source, arch) -> BuildResult``, where
``source`` is a :class:`CheckpointSource` and ``arch`` the parsed ``--arch``
(:class:`~normprobe.checkpoints.arch.Arch` or ``None``). Weights files (``torch.save``,
``.safetensors``) are read once, before any adapter sees them, and adapters look at
``source.state``; programs (TorchScript, ``torch.export``) are never unpickled by normprobe, so
their ``state`` is ``None`` and their adapters load ``source.path`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from torch import nn

from normprobe.checkpoints.sniff import ProgramKind
from normprobe.preprocess import Preprocess

FileKind = Literal["torch.save", "safetensors", ProgramKind]


@dataclass(frozen=True)
class CheckpointSource:
    """A checkpoint file as adapters see it: where it is, what kind of file it is, what it holds."""

    path: Path
    kind: FileKind
    state: Any = None
    """The object a weights file holds (a state_dict, a Lightning or normprobe dict); ``None`` for programs."""

    @property
    def is_program(self) -> bool:
        return self.kind in get_args(ProgramKind)

    @property
    def label(self) -> str:
        """How messages and provenance name the file."""
        return str(self.path)


@dataclass(frozen=True)
class Origin:
    """What a checkpoint says beyond its weights, and how normprobe read it. ``None`` where a format does not say."""

    notes: tuple[str, ...] = ()
    """How keys were remapped, what was ignored, what was assumed."""
    encoder_spec: dict[str, Any] | None = None
    """The :func:`~normprobe.models.build_encoder` spec the module was built from (programs have none)."""
    arch: str | None = None
    """The ``--arch`` text that was applied."""
    training: dict[str, Any] | None = None
    """A normprobe checkpoint's training record (config, epoch, step, history)."""
    run_config: dict[str, Any] | None = None
    """A solo-learn run's resolved config."""
    epoch: int | None = None
    global_step: int | None = None


@dataclass(frozen=True)
class BuildResult:
    """A rebuilt encoder: ``module(x)`` returns a dict of raw embeddings keyed by the names in ``heads``."""

    module: nn.Module
    preprocess: Preprocess
    method: str
    heads: tuple[str, ...]
    origin: Origin = field(default_factory=Origin)
