"""Learning-rate and momentum schedules, counted in optimiser steps.

SimCLR (Chen et al., 2020): "linear warmup for the first 10 epochs, and decay the learning rate
with the cosine decay schedule without restarts"; learning rate = base_lr x BatchSize / 256 where
BatchSize is the *effective* batch of one optimiser step (per-step batch x accumulation x ranks).
With gradient accumulation an epoch has ``len(data) // effective_batch`` optimiser steps: the
schedule advances once per optimiser step, not once per forward batch (counting forward batches
would stretch the schedule by the accumulation factor).

GradScale (Draganov et al., 2025, Sec. 6): "base learning rate eta/6 with 100 linear warmup
epochs followed by cosine annealing, where eta is the default learning rate" (``preset: gradscale``).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base: float, final: float = 0.0) -> float:
    """Value at optimiser step ``step`` (0-based): linear from base/warmup to base, then cosine to ``final``."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def cosine_increase(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """BYOL's target momentum: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    return end - (end - start) * (math.cos(math.pi * min(step, total_steps) / max(1, total_steps)) + 1) / 2


class WarmupCosine:
    """Sets every param group's ``lr`` before each optimiser step.

    Groups with ``fixed_lr=True`` keep the peak learning rate (SimSiam: "the predictor's
    learning rate is not decayed"). ``state_dict`` holds only the step: the rest comes from the config.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        total_steps: int,
        warmup_steps: int,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.base_lr, self.min_lr)

    def _apply(self) -> None:
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr if group.get("fixed_lr") else lr

    def step(self) -> None:
        """Call after ``optimizer.step()``: moves to the next optimiser step's learning rate."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self._apply()
