"""SimSiam (Chen & He, 2021): L = D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2 with D the negative
cosine; 3-layer projector, bottleneck predictor whose learning rate is not decayed. The paper's
norm analysis uses the predictor output p (Draganov et al., Appendix C.1), so GradScale acts on p."""

from __future__ import annotations

from typing import Any

import torch
from normprobe.training.losses import grad_scale, negative_cosine
from normprobe.training.methods.base import Method, backbone_dim

from normprobe.models.heads import bottleneck_predictor, simsiam_projector


class SimSiam(Method):
    name = "simsiam"
    loss_head = "p"

    def __init__(self, config: dict[str, Any]) -> None:
        opts = config["method_options"]
        d, dim = backbone_dim(config["backbone"]), int(opts["proj_dim"])
        super().__init__(
            config, simsiam_projector(d, dim), bottleneck_predictor(dim, int(opts["pred_hidden"]))
        )
        self.fix_predictor_lr = bool(opts.get("fix_predictor_lr", True))

    def param_groups(self) -> list[dict[str, Any]]:
        enc = self.encoder
        assert enc.projector is not None and enc.predictor is not None
        return [
            {
                "name": "backbone+projector",
                "params": [*enc.backbone.parameters(), *enc.projector.parameters()],
            },
            {
                "name": "predictor",
                "params": list(enc.predictor.parameters()),
                "fixed_lr": self.fix_predictor_lr,
            },
        ]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o1, o2 = self.encoder(x1), self.encoder(x2)
        p1, p2 = grad_scale(o1["p"], self.gradscale), grad_scale(o2["p"], self.gradscale)
        loss = 0.5 * (negative_cosine(p1, o2["z"]) + negative_cosine(p2, o1["z"]))
        return loss, {"z1": o1["z"], "z2": o2["z"], "p1": o1["p"], "p2": o2["p"]}
