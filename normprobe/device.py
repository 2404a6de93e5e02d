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


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX).

    Without it, bf16 autocast emulates the format and runs slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return True
