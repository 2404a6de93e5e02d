"""lightly checkpoints: the Lightning ``.ckpt`` files that lightly's examples train.

Layout (github.com/lightly-ai/lightly, ``examples/pytorch_lightning/{simclr,byol,moco,simsiam}.py``
and ``lightly/models/modules/heads.py``): ``{"state_dict": {...}, ...}`` with

- ``backbone.*``: ``nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])``, so keys are
  indices -- 0 = conv1, 1 = bn1, (2 relu, 3 maxpool,) 4-7 = layer1-4 -- or, in lightly's
  benchmarks, a torchvision ResNet with ``fc = Identity`` (``backbone.conv1.weight`` ...);
- ``projection_head.layers.N.*`` / ``prediction_head.layers.N.*``: ``ProjectionHead`` blocks of
  Linear (bias only when no BatchNorm follows) [+ BatchNorm1d] [+ ReLU];
- ignored: ``backbone_momentum.*`` / ``projection_head_momentum.*`` (EMA copies) and ``criterion.*``
  (a loss's memory bank).

The ``state_dict`` alone (e.g. converted to ``.safetensors``) is read the same way.

lightly's transforms normalise with ImageNet mean/std (``IMAGENET_NORMALIZE``) by default. The
input size is not in the file: 32 for a CIFAR stem, else 224 -- lightly's CIFAR examples train the
ImageNet-stem resnet18 on 32x32 crops, for which pass ``--arch input_size=32``.
"""

from __future__ import annotations

from normprobe.checkpoints.arch import Arch, make_preprocess
from normprobe.checkpoints.assemble import Remapped, assemble
from normprobe.checkpoints.contract import BuildResult, CheckpointSource
from normprobe.checkpoints.keys import (
    StateDict,
    check_consumed,
    lightning_progress,
    lightning_state_dict,
    sample,
    top_prefixes,
    under,
)
from normprobe.checkpoints.layouts import infer_backbone, is_resnet, is_vit, mlp_head, native_input_size
from normprobe.errors import NormprobeError

# Positions of torchvision ResNet's children in nn.Sequential(*resnet.children()[:-1]).
_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
IGNORED = ("backbone_momentum.", "projection_head_momentum.", "criterion.")


def detect(source: CheckpointSource) -> bool:
    sd = lightning_state_dict(source.state)
    return sd is not None and {"backbone", "projection_head"} <= set(top_prefixes(sd))


def _torchvision_names(backbone: StateDict, source: str, notes: list[str]) -> StateDict:
    if is_resnet(backbone) or is_vit(backbone):
        return backbone
    if "0.weight" in backbone and "4.0.conv1.weight" in backbone:
        stray = [k for k in backbone if k.partition(".")[0] not in _CHILDREN]
        if stray:
            raise NormprobeError(
                f"{source}: backbone.{stray[0]} is not part of a torchvision ResNet's children"
            )
        notes.append(
            "backbone is nn.Sequential(*resnet.children()[:-1]) (lightly's examples): children 0, 1, 4-7 renamed conv1, bn1, layer1-4"
        )
        return {f"{_CHILDREN[k.partition('.')[0]]}.{k.partition('.')[2]}": v for k, v in backbone.items()}
    if any(".shortcut." in k for k in backbone):
        raise NormprobeError(
            f"{source}: backbone is lightly's ResNetGenerator, whose nn.Sequential of children skips the stem ReLU; normprobe does not rebuild it"
        )
    raise NormprobeError(
        f"{source}: lightly backbone is neither a torchvision ResNet nor a timm ViT (keys: {sample(backbone)})"
    )


def build(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    obj, label = source.state, source.label
    sd = lightning_state_dict(obj)
    assert sd is not None
    notes: list[str] = []
    used = {
        k for k in sd if k.startswith(("backbone.", "projection_head.layers.", "prediction_head.layers."))
    }
    ignored = [k for k in sd if k.startswith(IGNORED)]
    check_consumed(sd, used | set(ignored), label, "lightly")
    if ignored:
        notes.append(
            f"ignored {', '.join(top_prefixes(ignored))}: momentum copies and loss state are not the encoder"
        )

    spec, backbone = infer_backbone(
        _torchvision_names(under(sd, "backbone."), label, notes), label, notes, arch=arch
    )
    # never None here: detect() saw projection_head keys, and check_consumed let only projection_head.layers.* pass
    projector, projector_sd = mlp_head(sd, "projection_head.layers.", label, "projection_head")
    predictor, predictor_sd = mlp_head(sd, "prediction_head.layers.", label, "prediction_head")
    momentum = any(k.startswith("backbone_momentum.") for k in sd)
    method = ("byol" if momentum else "simsiam") if predictor else ("moco" if momentum else "unknown")
    notes.append(f"method {method!r} guessed from the heads (lightly checkpoints do not record it)")

    size = native_input_size(spec)
    notes.append(
        f"assumed {size}x{size} input with ImageNet mean/std (lightly's default); override with --arch input_size=N:norm=..."
    )
    remapped = Remapped(
        spec,
        backbone,
        make_preprocess(size, "imagenet"),
        method,
        projector,
        projector_sd,
        predictor,
        predictor_sd,
        notes,
        **lightning_progress(obj),
    )
    return assemble(remapped, label, arch)
