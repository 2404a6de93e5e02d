"""Many independent 2-layer ReLU networks evaluated at once with batched matrix products.

The latent-class simulation trains one network per repeat and class balance; they share no
parameters, but training them one after the other spends most of the time in per-step overhead on
tiny matrices. Stacking them along a leading "model" axis runs a step of every network in a few
batched operations. The losses are summed over models, so each network still receives exactly the
gradient it would receive alone.
"""

from __future__ import annotations

import torch
from torch import nn


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound, generator=generator))


class StackedMLP(nn.Module):
    """``models`` networks input -> hidden (ReLU) -> output, mapping (models, batch, input) to (models, batch, output).

    Initialised like :class:`torch.nn.Linear` (uniform in +-1/sqrt(fan_in)), drawn from ``generator``.
    """

    def __init__(
        self, models: int, input_dim: int, hidden_dim: int, output_dim: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.first_weight = _uniform((models, input_dim, hidden_dim), input_dim**-0.5, generator)
        self.first_bias = _uniform((models, 1, hidden_dim), input_dim**-0.5, generator)
        self.second_weight = _uniform((models, hidden_dim, output_dim), hidden_dim**-0.5, generator)
        self.second_bias = _uniform((models, 1, output_dim), hidden_dim**-0.5, generator)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(torch.baddbmm(self.first_bias, inputs, self.first_weight))
        return torch.baddbmm(self.second_bias, hidden, self.second_weight)

    def share_initialisation(self, groups: int) -> None:
        """Copy the first ``models / groups`` networks' weights onto each following group, so that
        network i and network i + models / groups start identical."""
        with torch.no_grad():
            for parameter in self.parameters():
                size = parameter.shape[0] // groups
                parameter.copy_(parameter[:size].repeat(groups, *([1] * (parameter.dim() - 1))))
