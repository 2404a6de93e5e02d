"""MoCo v2 (Chen, Fan, Girshick & He, 2020) and MoCo v3 (Chen, Xie & He, 2021).

v2: query encoder with a 2-layer MLP head, key encoder = momentum copy (fixed momentum m), a queue of
K past keys as negatives, InfoNCE with tau = 0.2. Shuffling BN is not done: in one process it would
have to be simulated by splitting the batch; the CIFAR recipes train well without it.

v3: ViT backbone (timm), 3-layer projector and 2-layer predictor, momentum encoder with m increased
from m_base to 1 by a half-cosine, symmetrised loss ctr(q1, k2) + ctr(q2, k1) with the other keys of
the (global) batch as negatives and no queue, AdamW. The loss head of v3 is the predictor output q.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from normprobe.training import distributed
from normprobe.training.losses import grad_scale, moco_infonce
from normprobe.training.methods.base import Method, backbone_dim, ema_update
from normprobe.training.schedule import cosine_increase

from normprobe.models.heads import mocov2_projector, mocov3_predictor, mocov3_projector


class MoCoV2(Method):
    name = "mocov2"
    loss_head = "z"
    queue: torch.Tensor  # K x out_dim, L2-normalised keys (a buffer)
    queue_ptr: torch.Tensor  # where the next keys go (a 0-d buffer)

    def __init__(self, config: dict[str, Any]) -> None:
        opts = config["method_options"]
        d, out = backbone_dim(config["backbone"]), int(opts["out_dim"])
        super().__init__(config, mocov2_projector(d, int(opts["proj_hidden"]), out), None)
        self.temperature = float(opts["temperature"])
        self.momentum = float(opts["momentum"])
        self.symmetric = bool(opts.get("symmetric", False))
        self.target = self.make_target()
        generator = torch.Generator().manual_seed(int(config["seed"]))
        self.register_buffer(
            "queue", F.normalize(torch.randn(int(opts["queue_size"]), out, generator=generator), dim=1)
        )
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        if distributed.world_size() > 1:
            parts = [torch.empty_like(keys) for _ in range(distributed.world_size())]
            dist.all_gather(parts, keys.contiguous())
            keys = torch.cat(parts)
        size, ptr = self.queue.shape[0], int(self.queue_ptr)
        rows = (torch.arange(keys.shape[0], device=keys.device) + ptr) % size
        self.queue[rows] = F.normalize(keys.float(), dim=1)
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q1 = self.encoder(x1)["z"]
        with torch.no_grad():
            k2 = self.target(x2)["z"]
        queue = self.queue.clone().detach()
        loss = moco_infonce(grad_scale(q1, self.gradscale), k2, self.temperature, queue)
        out = {"z1": q1}
        keys = [k2]
        if self.symmetric:
            q2 = self.encoder(x2)["z"]
            with torch.no_grad():
                k1 = self.target(x1)["z"]
            loss = loss + moco_infonce(grad_scale(q2, self.gradscale), k1, self.temperature, queue)
            out["z2"] = q2
            keys.append(k1)
        for k in keys:
            self._enqueue(k)
        return loss, out

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.target, self.encoder, self.momentum)


class MoCoV3(Method):
    name = "mocov3"
    loss_head = "p"

    def __init__(self, config: dict[str, Any]) -> None:
        opts = config["method_options"]
        d, out, hidden = backbone_dim(config["backbone"]), int(opts["out_dim"]), int(opts["mlp_hidden"])
        super().__init__(config, mocov3_projector(d, hidden, out), mocov3_predictor(out, hidden))
        self.temperature = float(opts["temperature"])
        self.momentum_base = float(opts["momentum"])
        self.target = self.make_target()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o1, o2 = self.encoder(x1), self.encoder(x2)
        with torch.no_grad():
            k1, k2 = self.target(x1)["z"], self.target(x2)["z"]
        q1, q2 = grad_scale(o1["p"], self.gradscale), grad_scale(o2["p"], self.gradscale)
        loss = moco_infonce(q1, k2, self.temperature) + moco_infonce(q2, k1, self.temperature)
        return loss, {"z1": o1["z"], "z2": o2["z"], "p1": o1["p"], "p2": o2["p"]}

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.target, self.encoder, cosine_increase(step, total_steps, self.momentum_base))
