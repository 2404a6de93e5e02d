"""Bare backbone ``state_dict`` files: torchvision ResNets and timm ViTs. Only the ``feats`` head.

- torchvision: ``torchvision.models.resnet18/34/50().state_dict()`` keys (``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight`` ... ``fc.weight``). The stem is read from conv1's kernel: 3x3 = CIFAR stem
  (padding 1 assumed; solo-learn-style padding 2 needs ``--arch resnet18:cifar:stem_padding=2``),
  7x7 = ImageNet stem. ``fc`` is the classifier and is dropped.
- timm: ``VisionTransformer`` keys (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``,
  ``blocks.N.*``, ``norm.*``, ``head.*``); size, depth, patch and image size are read from shapes,
  the head count from timm's naming (tiny 3, small 6, base 12, large 16), ``head`` dropped.
  ``--arch timm:<model>[:key=value]`` names it outright.

A ``module.`` prefix (DistributedDataParallel) is stripped. Preprocessing: ImageNet mean/std, 32x32
for a CIFAR stem, 224x224 for an ImageNet stem, the ViT's image size otherwise; ``--arch
input_size=N:norm=...`` overrides.
"""

from __future__ import annotations

from typing import Any

from normprobe.checkpoints.arch import Arch, make_preprocess
from normprobe.checkpoints.assemble import Remapped, assemble
from normprobe.checkpoints.contract import BuildResult, CheckpointSource
from normprobe.checkpoints.keys import strip_module_prefix, tensors_only, under
from normprobe.checkpoints.layouts import infer_backbone, is_resnet, is_vit, native_input_size


def _bare(obj: Any) -> dict[str, Any] | None:
    if not tensors_only(obj):
        return None
    return under(obj, "module.") if all(k.startswith("module.") for k in obj) else obj


def detect_torchvision(source: CheckpointSource) -> bool:
    sd = _bare(source.state)
    return sd is not None and is_resnet(sd)


def detect_timm(source: CheckpointSource) -> bool:
    sd = _bare(source.state)
    return sd is not None and is_vit(sd)


def build(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    label = source.label
    notes: list[str] = []
    sd = strip_module_prefix(dict(source.state), notes)
    spec, backbone = infer_backbone(sd, label, notes, arch=arch)
    size = native_input_size(spec)
    notes.append(
        f"a bare backbone: only the 'feats' head; assumed {size}x{size} input with ImageNet mean/std (override with --arch input_size=N:norm=...)"
    )
    return assemble(
        Remapped(spec, backbone, make_preprocess(size, "imagenet"), "unknown", notes=notes), label, arch
    )
