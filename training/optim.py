"""Optimisers: SGD with momentum, LARS (You et al., 2017, as used by SimCLR and BYOL) and AdamW.

Weight decay is the paper's first intervention on the embedding norm: it is applied to every
parameter unless ``exclude_bias_norm`` is set (SimCLR's LARS recipe excludes biases and norm
layers from both weight decay and the trust ratio).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch
from torch import nn

from normprobe.errors import NormprobeError


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-parameter step is scaled by the trust ratio
    ``eta * ||w|| / ||g + wd * w||``; groups with ``lars_exclude=True`` get plain SGD (no decay, no ratio)."""

    def __init__(
        self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001
    ) -> None:
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars_exclude": False},
        )

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LARS step; ``closure``, as for torch's optimisers, recomputes and returns the loss first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def _split_bias_norm(groups: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """Each group split in two: weights of linear/conv layers, and biases + norm-layer parameters."""
    no_decay_ids = {
        id(p)
        for m in model.modules()
        for p in m.parameters(recurse=False)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.SyncBatchNorm))
    }
    no_decay_ids |= {id(p) for name, p in model.named_parameters() if name.endswith(".bias") or p.ndim == 1}
    out = []
    for group in groups:
        decay = [p for p in group["params"] if id(p) not in no_decay_ids]
        rest = [p for p in group["params"] if id(p) in no_decay_ids]
        out.append({**group, "params": decay})
        if rest:
            out.append(
                {
                    **group,
                    "name": f"{group['name']} (bias/norm)",
                    "params": rest,
                    "weight_decay": 0.0,
                    "lars_exclude": True,
                }
            )
    return out


def build_optimizer(
    options: dict[str, Any], groups: list[dict[str, Any]], model: nn.Module, lr: float
) -> torch.optim.Optimizer:
    name = options["name"]
    wd = float(options.get("weight_decay", 0.0))
    groups = [{**g, "weight_decay": wd} for g in groups]
    if options.get("exclude_bias_norm", False):
        groups = _split_bias_norm(groups, model)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(options.get("momentum", 0.9)), weight_decay=wd)
    if name == "lars":
        return LARS(
            groups,
            lr=lr,
            momentum=float(options.get("momentum", 0.9)),
            weight_decay=wd,
            eta=float(options.get("eta", 0.001)),
        )
    if name == "adamw":
        betas = tuple(options.get("betas", (0.9, 0.999)))
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=wd)
    raise NormprobeError(f"unknown optimizer {name!r} (sgd, lars, adamw)")
