"""Our checkpoint file (Contract 1 in ARCHITECTURE.md): everything needed to rebuild the encoder.

Keys: ``format`` ("normprobe.checkpoint/1"), ``method``, ``encoder`` (backbone spec and head layer
lists, see :mod:`normprobe.models`), ``preprocess`` (input size, mean/std or None), ``state_dict``
(encoder weights; momentum/target copies under ``target_state_dict``), ``training`` (resolved config,
epoch, step, metrics history) and optionally ``resume`` (optimiser, scheduler, scaler, RNG states).
Only tensors, numbers, strings, lists and dicts: the file loads with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from normprobe.checkpoints.arch import Arch
from normprobe.checkpoints.contract import BuildResult, CheckpointSource, Origin
from normprobe.checkpoints.fileio import atomic_torch_save
from normprobe.checkpoints.weights import check_state_dict, load_weights
from normprobe.errors import NormprobeError
from normprobe.models import build_encoder
from normprobe.preprocess import Preprocess

FORMAT = "normprobe.checkpoint/1"
REQUIRED_KEYS = ("format", "method", "encoder", "preprocess", "state_dict")


def save_checkpoint(
    path: str | Path,
    *,
    method: str,
    encoder_spec: dict[str, Any],
    preprocess: Preprocess,
    state_dict: dict[str, torch.Tensor],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a Contract-1 checkpoint atomically. ``extra`` adds keys such as ``target_state_dict`` or ``resume``."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "method": method,
        "encoder": encoder_spec,
        "preprocess": preprocess.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "training": training or {},
    }
    payload.update(extra or {})
    atomic_torch_save(payload, Path(path))


def detect(source: CheckpointSource) -> bool:
    obj = source.state
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("normprobe.checkpoint/")


def build(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    obj, label = source.state, source.label
    if arch is not None and arch.backbone is not None:
        raise NormprobeError(
            f"{label}: a normprobe checkpoint describes its own architecture; --arch {arch.text} can only set input_size/norm"
        )
    if obj["format"] != FORMAT:
        raise NormprobeError(
            f"{label}: checkpoint format {obj['format']!r} is newer than this normprobe reads ({FORMAT})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise NormprobeError(f"{label}: normprobe checkpoint lacks {', '.join(missing)}")
    for key in ("encoder", "preprocess"):
        if not isinstance(obj[key], dict):
            raise NormprobeError(
                f"{label}: the checkpoint's {key!r} entry is a {type(obj[key]).__name__}, not a mapping"
            )
    check_state_dict(obj["state_dict"], label)
    try:
        preprocess = Preprocess.from_dict(obj["preprocess"])
        encoder = build_encoder(obj["encoder"])
    except NormprobeError as err:  # the spec's own checks do not know the file's name
        raise NormprobeError(f"{label}: {err}") from err
    load_weights(encoder, obj["state_dict"], label)
    notes: tuple[str, ...] = ()
    if arch is not None:
        preprocess = arch.preprocess(preprocess)
        notes = (f"--arch {arch.text} applied: preprocessing {preprocess.describe()}",)
    origin = Origin(
        notes=notes,
        encoder_spec=obj["encoder"],
        arch=arch.text if arch else None,
        training=obj.get("training", {}),
    )
    return BuildResult(encoder, preprocess, str(obj["method"]), encoder.heads, origin)
