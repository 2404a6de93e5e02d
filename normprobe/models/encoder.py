"""Encoder = backbone + projector (+ predictor), returning raw, un-normalised embeddings.

``forward(x)`` returns ``{"feats": backbone output, "z": projector output, "p": predictor output}``
(heads that a model does not have are absent). Nothing is normalised: the norm is the signal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normprobe.errors import NormprobeError
from normprobe.models.heads import build_head
from normprobe.models.resnet import ARCHITECTURES, ResNet
from normprobe.models.vit import build_vit

HEADS = ("feats", "z", "p")


class Encoder(nn.Module):
    def __init__(
        self, backbone: nn.Module, projector: nn.Module | None = None, predictor: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    @property
    def heads(self) -> tuple[str, ...]:
        return (
            ("feats",)
            + (("z",) if self.projector is not None else ())
            + (("p",) if self.predictor is not None else ())
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"feats": self.backbone(x)}
        if self.projector is not None:
            out["z"] = self.projector(out["feats"])
            if self.predictor is not None:
                out["p"] = self.predictor(out["z"])
        return out


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """``{"name": "resnet18", "stem": "cifar", "width": 64, "stem_padding": 1}`` or ``{"name": "timm:vit_small_patch16_224", ...options}``."""
    name = spec.get("name", "")
    options = {k: v for k, v in spec.items() if k != "name"}
    if name in ARCHITECTURES:
        try:
            return ResNet(name, **options)
        except TypeError as err:
            raise NormprobeError(f"bad options for backbone {name}: {err}") from err
    if name.startswith("timm:"):
        return build_vit(name[len("timm:") :], **options)
    raise NormprobeError(f"unknown backbone {name!r} (known: {', '.join(ARCHITECTURES)}, timm:<model>)")


def build_encoder(spec: dict[str, Any]) -> Encoder:
    """Rebuild an Encoder from the ``encoder`` entry of a checkpoint (Contract 1)."""
    if "backbone" not in spec:
        raise NormprobeError("encoder description has no 'backbone'")
    projector = build_head(spec["projector"]) if spec.get("projector") else None
    predictor = build_head(spec["predictor"]) if spec.get("predictor") else None
    if predictor is not None and projector is None:
        raise NormprobeError("encoder description has a predictor but no projector")
    return Encoder(build_backbone(spec["backbone"]), projector, predictor)
