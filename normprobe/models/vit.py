"""Vision Transformers from timm, without classifier, returning the pooled token."""

from __future__ import annotations

from typing import Any

from torch import nn

from normprobe.errors import NormprobeError


def build_vit(name: str, **options: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=0, **options)``; options such as img_size, patch_size."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **options)
    except (RuntimeError, TypeError, ValueError) as err:
        raise NormprobeError(f"timm cannot build {name!r} with {options}: {err}") from err
    return model
