"""The adapter registry: each known checkpoint format, how to recognise it and how to rebuild it.

An adapter's ``build(obj, source, arch)`` returns ``(module, preprocess, method, meta)``, where
``module(x)`` returns a dict of raw embeddings by head and ``arch`` is the parsed ``--arch``
(:class:`~normprobe.checkpoints.arch.Arch` or ``None``). ``meta`` may carry ``"heads"`` and carries
``"notes"``: how keys were remapped, what was ignored, what was assumed. ``file_level`` adapters
(TorchScript, ``torch.export``) recognise and read the file themselves, because those archives are
not loaded with ``torch.load``; all others receive the object ``torch.load(weights_only=True)``
returned. Order matters: the first adapter whose ``detect`` accepts the input wins, so the most
specific layouts come first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from normprobe.checkpoints import backbone_only, foreign, lightly, paper, solo_learn
from normprobe.checkpoints.arch import Arch
from normprobe.checkpoints.native import is_native, load_native
from normprobe.errors import NormprobeError
from normprobe.preprocess import Preprocess

BuildResult = tuple[nn.Module, Preprocess, str, dict[str, Any]]


@dataclass(frozen=True)
class Adapter:
    name: str
    summary: str
    detect: Callable[[Any], bool]
    build: Callable[[Any, str, Arch | None], BuildResult]
    file_level: bool = False


def _build_native(obj: Any, source: str, arch: Arch | None) -> BuildResult:
    if arch is not None and arch.backbone is not None:
        raise NormprobeError(
            f"{source}: a normprobe checkpoint describes its own architecture; --arch {arch.text} can only set input_size/norm"
        )
    module, preprocess, method, meta = load_native(obj, source)
    if arch is not None:
        preprocess = arch.preprocess(preprocess)
        meta["notes"] = [f"--arch {arch.text} applied: preprocessing {preprocess.describe()}"]
    return module, preprocess, method, meta


ADAPTERS: list[Adapter] = [
    Adapter("normprobe", "normprobe's own checkpoint file (Contract 1)", is_native, _build_native),
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
        file_level=True,
    ),
    Adapter(
        "torch.export",
        "torch.export archive (.pt2) of any architecture",
        foreign.detect_exported,
        foreign.build_exported,
        file_level=True,
    ),
]


def adapter_by_name(name: str) -> Adapter:
    for adapter in ADAPTERS:
        if adapter.name == name:
            return adapter
    raise NormprobeError(f"unknown adapter {name!r} (known: {', '.join(a.name for a in ADAPTERS)})")
