"""Pick the compute device once: an explicit request, else CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from normprobe.errors import NormprobeError


def pick_device(requested: str | None = None) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise NormprobeError(f"unknown device {requested!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NormprobeError(f"device {requested!r} requested but CUDA is not available")
    return device
