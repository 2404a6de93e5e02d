"""Load remapped weights into a module, asserting nothing is missing or left over (as MoCo v3 / DINO do)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normprobe.errors import NormprobeError


def _sample(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN/Inf; the sum is a fast screen (NaN and Inf propagate), the exact test runs only if it fails."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_state_dict(state_dict: Any, source: str) -> None:
    """A mapping of names to dense, real-valued CPU tensors, or one line saying what it holds instead."""
    if not isinstance(state_dict, Mapping):
        raise NormprobeError(
            f"{source}: the state_dict is a {type(state_dict).__name__}, not a mapping of names to tensors"
        )
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise NormprobeError(f"{source}: state_dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise NormprobeError(
                f"{source}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        if (
            value.layout != torch.strided
            or value.is_quantized
            or value.is_complex()
            or value.device.type != "cpu"
        ):
            raise NormprobeError(
                f"{source}: state_dict entry {key!r} is a {value.layout} {value.dtype} tensor on {value.device}; "
                "normprobe loads dense real-valued tensors"
            )


def load_weights(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    ignore_missing: tuple[str, ...] = (),
) -> None:
    """``module.load_state_dict`` with one clear error listing missing, unexpected and mis-shaped keys.

    ``ignore_missing`` names keys that may legitimately be absent (e.g. BatchNorm's
    ``num_batches_tracked``, which older checkpoints do not store).
    """
    check_state_dict(state_dict, source)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not any(k.endswith(s) for s in ignore_missing)]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_sample(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_sample(unexpected)}")
    if mismatched:
        problems.append(f"wrong shape for {_sample(mismatched, 3)}")
    if problems:
        raise NormprobeError(
            f"{source}: weights do not fit the architecture ({'; '.join(problems)}); try --arch"
        )
    bad = [k for k, v in state_dict.items() if torch.is_floating_point(v) and not _finite(v)]
    if bad:
        raise NormprobeError(f"{source}: NaN or Inf in weights ({_sample(bad)})")
    module.load_state_dict(dict(state_dict), strict=not ignore_missing)
