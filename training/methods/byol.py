"""BYOL (Grill et al., 2020): the online network's prediction q regresses the target network's
projection of the other view, L = 2 - 2 cos(q, z'), symmetrised; the target is an exponential
moving average of the online backbone+projector with momentum tau = 1 - (1 - tau_base)(cos(pi k/K)+1)/2.
Projector and predictor: Linear(4096)-BN-ReLU-Linear(256). GradScale acts on q (the loss head p)."""

from __future__ import annotations

from typing import Any

import torch
from normprobe.training.losses import grad_scale, negative_cosine
from normprobe.training.methods.base import Method, backbone_dim, ema_update
from normprobe.training.schedule import cosine_increase

from normprobe.models.heads import byol_projector


class BYOL(Method):
    name = "byol"
    loss_head = "p"

    def __init__(self, config: dict[str, Any]) -> None:
        opts = config["method_options"]
        d, hidden, out = backbone_dim(config["backbone"]), int(opts["proj_hidden"]), int(opts["out_dim"])
        super().__init__(config, byol_projector(d, hidden, out), byol_projector(out, hidden, out))
        self.tau_base = float(opts["tau_base"])
        self.target = self.make_target()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o1, o2 = self.encoder(x1), self.encoder(x2)
        with torch.no_grad():
            t1, t2 = self.target(x1)["z"], self.target(x2)["z"]
        q1, q2 = grad_scale(o1["p"], self.gradscale), grad_scale(o2["p"], self.gradscale)
        loss = (2 + 2 * negative_cosine(q1, t2)) + (2 + 2 * negative_cosine(q2, t1))
        return loss, {"z1": o1["z"], "z2": o2["z"], "p1": o1["p"], "p2": o2["p"]}

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.target, self.encoder, cosine_increase(step, total_steps, self.tau_base))
