"""Cut-initialisation (Draganov et al., 2025, Sec. 6): "dividing all network weights by a constant c
at initialization ... uniformly across all layers for simplicity" (Listing 1 of the paper divides
every parameter of every layer). Small initial weights give small initial embedding norms, which
weight decay then keeps small.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def cut_initialisation(module: nn.Module, cut: float) -> nn.Module:
    """Divide every parameter of ``module`` by ``cut`` in place (``cut=1``: unchanged). Buffers
    (BatchNorm running statistics) are not weights and are left alone."""
    if cut != 1:
        for parameter in module.parameters():
            parameter.div_(cut)
    return module
