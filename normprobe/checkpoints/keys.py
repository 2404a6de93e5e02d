"""State_dict key helpers that every adapter shares: selecting, renaming and accounting for keys.

They look only at names (and that the values are tensors), never at shapes; reading an
architecture off shapes is :mod:`normprobe.checkpoints.layouts`. An adapter that needs another
format's container (lightly reads Lightning files as solo-learn does) finds it here, so no adapter
imports another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from normprobe.errors import NormprobeError

StateDict = dict[str, torch.Tensor]


def tensors_only(obj: Any) -> bool:
    """A flat ``{str: Tensor}`` mapping (a state_dict), non-empty."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def under(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries of ``sd`` whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def prefixed(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {prefix + k: v for k, v in sd.items()}


def top_prefixes(keys: Iterable[str]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in keys})


def sample(keys: Iterable[str], limit: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_consumed(sd: Mapping[str, torch.Tensor], used: set[str], source: str, layout: str) -> None:
    """Fail on keys that no part of the remapping accounted for (nothing is silently dropped)."""
    left = [k for k in sd if k not in used]
    if left:
        raise NormprobeError(
            f"{source}: {len(left)} key(s) that a {layout} checkpoint should not have: {sample(left)}"
        )


def strip_module_prefix(sd: StateDict, notes: list[str]) -> StateDict:
    """DistributedDataParallel saves every key under ``module.``; drop it."""
    if sd and all(k.startswith("module.") for k in sd):
        notes.append("stripped the DistributedDataParallel prefix 'module.' from every key")
        return under(sd, "module.")
    return sd


def lightning_progress(obj: Any) -> dict[str, Any]:
    """``epoch`` and ``global_step`` of a Lightning checkpoint (None where it does not record them)."""
    return {"epoch": obj.get("epoch"), "global_step": obj.get("global_step")}


def lightning_state_dict(obj: Any) -> StateDict | None:
    """The ``state_dict`` of a Lightning checkpoint, of a ``{"state_dict": ...}`` export of one, or that
    state_dict alone (as a ``.safetensors`` conversion holds it)."""
    if isinstance(obj, dict) and tensors_only(obj.get("state_dict")):
        return obj["state_dict"]
    return obj if tensors_only(obj) else None
