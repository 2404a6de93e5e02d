"""The adapter registry: each known checkpoint format, how to recognise it and how to rebuild it.

Every adapter keeps the contract of :mod:`normprobe.checkpoints.contract`: ``detect(source)`` and
``build(source, arch) -> BuildResult`` on a :class:`~normprobe.checkpoints.contract.CheckpointSource`.
Order matters: the first adapter whose ``detect`` accepts the file wins, so the most specific
layouts come first. Weights adapters never accept a program and program adapters never accept
weights, so the two groups do not compete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from normprobe.checkpoints import backbone_only, foreign, lightly, native, paper, solo_learn
from normprobe.checkpoints.arch import Arch
from normprobe.checkpoints.contract import BuildResult, CheckpointSource
from normprobe.errors import NormprobeError


@dataclass(frozen=True)
class Adapter:
    name: str
    summary: str
    detect: Callable[[CheckpointSource], bool]
    build: Callable[[CheckpointSource, Arch | None], BuildResult]


ADAPTERS: list[Adapter] = [
    Adapter("normprobe", "normprobe's own checkpoint file (Contract 1)", native.detect, native.build),
    Adapter(
        "paper",
        "the paper's SimCLR/SimSiam/BYOL state_dict (SSLEmbeddingNorms: backbone + enc.0 + enc.1)",
        paper.detect,
        paper.build,
    ),
    Adapter(
        "solo-learn",
        "solo-learn Lightning .ckpt (backbone/projector/predictor, args.json beside it)",
        solo_learn.detect,
        solo_learn.build,
    ),
    Adapter(
        "lightly",
        "lightly Lightning .ckpt (backbone, projection_head, prediction_head)",
        lightly.detect,
        lightly.build,
    ),
    Adapter(
        "torchvision",
        "bare torchvision ResNet state_dict (conv1, layer1..4, fc dropped): feats only",
        backbone_only.detect_torchvision,
        backbone_only.build,
    ),
    Adapter(
        "timm",
        "bare timm ViT state_dict (patch_embed, blocks, head dropped): feats only",
        backbone_only.detect_timm,
        backbone_only.build,
    ),
    Adapter(
        "torchscript",
        "TorchScript archive (torch.jit.save) of any architecture",
        foreign.detect_torchscript,
        foreign.build_torchscript,
    ),
    Adapter(
        "torch.export",
        "torch.export archive (.pt2) of any architecture",
        foreign.detect_exported,
        foreign.build_exported,
    ),
]


def adapter_by_name(name: str) -> Adapter:
    for adapter in ADAPTERS:
        if adapter.name == name:
            return adapter
    raise NormprobeError(f"unknown adapter {name!r} (known: {', '.join(a.name for a in ADAPTERS)})")
