"""SimCLR (Chen et al., 2020): NT-Xent between two views of every image, all other views of the
batch as negatives; 2-layer projector; CIFAR temperature 0.5; embedding dimension 256 as in the
paper (Draganov et al., Appendix C.1)."""

from __future__ import annotations

from typing import Any

import torch
from normprobe.training.losses import grad_scale, info_nce
from normprobe.training.methods.base import Method, backbone_dim

from normprobe.models.heads import simclr_projector


class SimCLR(Method):
    name = "simclr"
    loss_head = "z"

    def __init__(self, config: dict[str, Any]) -> None:
        opts = config["method_options"]
        d = backbone_dim(config["backbone"])
        super().__init__(config, simclr_projector(d, int(opts["proj_hidden"]), int(opts["out_dim"])), None)
        self.temperature = float(opts["temperature"])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = self.encoder(x1)["z"], self.encoder(x2)["z"]
        loss = info_nce(grad_scale(z1, self.gradscale), grad_scale(z2, self.gradscale), self.temperature)
        return loss, {"z1": z1, "z2": z2}
