"""What every method shares: the online Encoder built from a Contract-1 spec, head-norm choice,
cut-initialisation before any target copy is made, EMA targets, parameter groups."""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from normprobe.training.interventions import cut_initialisation
from torch import nn

from normprobe.models import Encoder, build_backbone, build_encoder
from normprobe.models.heads import LayerSpec
from normprobe.models.resnet import ARCHITECTURES, feature_dim


def with_head_norm(layers: list[LayerSpec], norm: str) -> list[LayerSpec]:
    """The paper's heads use BatchNorm; ``ln`` swaps it for LayerNorm and ``none`` drops it
    (a model without cross-sample coupling, e.g. to check DDP against one process exactly)."""
    if norm == "bn":
        return layers
    out: list[LayerSpec] = []
    for layer in layers:
        if layer["type"] != "bn":
            out.append(layer)
        elif norm == "ln":
            out.append({"type": "ln", "dim": layer["dim"]})
        elif norm != "none":
            raise ValueError(f"head_norm must be bn, ln or none, got {norm!r}")
    return out


def backbone_dim(spec: dict[str, Any]) -> int:
    """The width of the backbone's output, which the heads are sized by, without building its
    weights: a ResNet's from its architecture, a timm model's from a copy on the meta device
    (no memory allocated, no initialisation run)."""
    if spec.get("name") in ARCHITECTURES:
        return feature_dim(spec["name"], int(spec.get("width", 64)))
    with torch.device("meta"):
        backbone = build_backbone(spec)
    return int(cast(int, backbone.num_features))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online for every target parameter (matched by name:
    the online encoder also has a predictor that the target lacks)."""
    online_params = dict(online.named_parameters())
    for name, t in target.named_parameters():
        t.mul_(tau).add_(online_params[name].detach(), alpha=1 - tau)


class Method(nn.Module):
    """``forward(x1, x2) -> (loss, {"z1", "z2", ...})``: the loss of one batch of two views.

    ``loss_head`` names the embedding the loss is computed on ("z" or "p"); GradScale and the
    training-time norm tracking apply to it. ``encoder`` is what the checkpoint stores.
    """

    name: str = ""
    loss_head: str = "z"

    def __init__(
        self, config: dict[str, Any], projector: list[LayerSpec], predictor: list[LayerSpec] | None
    ) -> None:
        super().__init__()
        opts = config["method_options"]
        norm = opts.get("head_norm", "bn")
        self.encoder_spec: dict[str, Any] = {
            "backbone": dict(config["backbone"]),
            "projector": with_head_norm(projector, norm),
            "predictor": with_head_norm(predictor, norm) if predictor else None,
        }
        self.encoder: Encoder = build_encoder(self.encoder_spec)
        cut_initialisation(self.encoder, float(config["cut"]))
        self.gradscale = float(config["gradscale"])

    def make_target(self) -> Encoder:
        """A frozen copy of backbone + projector (after cut-initialisation, as the online net)."""
        target = Encoder(copy.deepcopy(self.encoder.backbone), copy.deepcopy(self.encoder.projector))
        for parameter in target.parameters():
            parameter.requires_grad_(False)
        return target

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"name": "encoder", "params": [p for p in self.encoder.parameters() if p.requires_grad]}]

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (momentum targets update here)."""

    def target_state_dict(self) -> dict[str, torch.Tensor] | None:
        target = getattr(self, "target", None)
        return None if target is None else target.state_dict()
