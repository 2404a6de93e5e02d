"""Encoder = backbone + projector (+ predictor), returning raw, un-normalised embeddings.

``forward(x)`` returns ``{"feats": backbone output, "z": projector output, "p": predictor output}``
(heads that a model does not have are absent). Nothing is normalised: the norm is the signal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normprobe.errors import NormprobeError
from normprobe.memory import format_bytes, memory_budget
from normprobe.models.heads import build_head, check_head, head_width
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


_RESNET_SIZES = {"width": 1, "stem_padding": 0}  # option -> smallest value


def _check_resnet_options(name: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - {"stem", *_RESNET_SIZES})
    if unknown:
        raise NormprobeError(f"bad options for backbone {name}: unexpected {', '.join(map(str, unknown))}")
    if options.get("stem", "cifar") not in ("cifar", "imagenet"):
        raise NormprobeError(
            f"bad options for backbone {name}: stem must be cifar or imagenet, not {options['stem']!r}"
        )
    for key, least in _RESNET_SIZES.items():
        value = options.get(key, least)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise NormprobeError(
                f"bad options for backbone {name}: {key} must be an integer >= {least}, not {value!r}"
            )


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """``{"name": "resnet18", "stem": "cifar", "width": 64, "stem_padding": 1}`` or ``{"name": "timm:vit_small_patch16_224", ...options}``."""
    if not isinstance(spec, dict):
        raise NormprobeError(f"the backbone description is a {type(spec).__name__}, not a mapping")
    name = str(spec.get("name", ""))
    options = {k: v for k, v in spec.items() if k != "name"}
    if name in ARCHITECTURES:
        _check_resnet_options(name, options)
        return ResNet(name, **options)
    if name.startswith("timm:"):
        return build_vit(name[len("timm:") :], **{str(k): v for k, v in options.items()})
    raise NormprobeError(f"unknown backbone {name!r} (known: {', '.join(ARCHITECTURES)}, timm:<model>)")


def _size(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (exact for a module on the meta device, which holds none)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _build(spec: dict[str, Any]) -> Encoder:
    projector = build_head(spec["projector"]) if spec.get("projector") else None
    predictor = build_head(spec["predictor"]) if spec.get("predictor") else None
    return Encoder(build_backbone(spec["backbone"]), projector, predictor)


def build_encoder(spec: dict[str, Any]) -> Encoder:
    """Rebuild an Encoder from the ``encoder`` entry of a checkpoint (Contract 1).

    The description comes from a file, so it is checked before anything is allocated: it is built
    once on the meta device (no memory), its size held against the memory budget (a layer declared
    2^34 wide fails here, in one line) and its heads' widths against each other and the backbone's.
    """
    if not isinstance(spec, dict):
        raise NormprobeError(f"the encoder description is a {type(spec).__name__}, not a mapping")
    if "backbone" not in spec:
        raise NormprobeError("encoder description has no 'backbone'")
    projector = check_head(spec["projector"], "projector") if spec.get("projector") else None
    predictor = check_head(spec["predictor"], "predictor") if spec.get("predictor") else None
    if predictor is not None and projector is None:
        raise NormprobeError("encoder description has a predictor but no projector")
    with torch.device("meta"):
        probe = _build(spec)
    size, budget = _size(probe), memory_budget()
    if size > budget:
        raise NormprobeError(
            f"the encoder described would take {format_bytes(size)}, more than this machine's budget of "
            f"{format_bytes(budget)} for one checkpoint"
        )
    features = getattr(probe.backbone, "head_hidden_size", None) or getattr(
        probe.backbone, "num_features", None
    )
    if projector is not None:
        width = head_width(projector, features if isinstance(features, int) else None, "projector")
        if predictor is not None:
            head_width(predictor, width, "predictor")
    return _build(spec)
