"""Vision Transformers from timm, without classifier, returning the pooled token."""

from __future__ import annotations

from typing import Any

from torch import nn

from normprobe.errors import NormprobeError

# create_model options that read or fetch weights or configs from elsewhere (a path, a cache, the
# Hugging Face Hub): a backbone that a checkpoint describes gets the checkpoint's own weights only.
_LOADING_OPTIONS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
)


def build_vit(name: str, **options: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=0, **options)``; options such as img_size, patch_size.

    ``name`` must be a model in timm's registry (not ``hf-hub:`` or ``local-dir:``, which read configs
    from elsewhere), and options that load weights are refused.
    """
    import timm

    if not timm.is_model(name):
        raise NormprobeError(f"timm has no model {name!r}")
    loading = sorted(_LOADING_OPTIONS & set(options))
    if loading:
        raise NormprobeError(
            f"timm option(s) {', '.join(loading)} would load weights from elsewhere; normprobe uses the checkpoint's own"
        )
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **options)
    except Exception as err:  # noqa: BLE001 -- options come from files; timm raises any type for ones it rejects
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise NormprobeError(f"timm cannot build {name!r} with {options}: {reason}") from err
    return model
