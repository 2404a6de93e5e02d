"""Reading architectures off state_dict keys and shapes, shared by the foreign-format adapters.

Everything here is inferred from what the tensors say (names, shapes), never from code in the
file: a ResNet's depth from its block indices, its width from ``conv1``, its stem from the conv1
kernel (3x3 = CIFAR stem, 7x7 = ImageNet stem); a ViT's size from ``patch_embed`` and
``pos_embed``; an MLP head's layers from its ``nn.Sequential`` indices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from normprobe.checkpoints.arch import Arch
from normprobe.checkpoints.keys import StateDict, sample, under
from normprobe.errors import NormprobeError
from normprobe.models.heads import LayerSpec
from normprobe.models.resnet import ARCHITECTURES, Bottleneck

RELU: LayerSpec = {"type": "relu"}

# timm's ViT sizes: the number of attention heads is not visible in any tensor shape.
VIT_BY_DIM = {
    192: ("vit_tiny_patch16_224", 3),
    384: ("vit_small_patch16_224", 6),
    768: ("vit_base_patch16_224", 12),
    1024: ("vit_large_patch16_224", 16),
}


def is_resnet(sd: Mapping[str, torch.Tensor]) -> bool:
    """torchvision ResNet key names (``conv1.weight``, ``layer1.0.conv1.weight`` ...)."""
    conv1 = sd.get("conv1.weight")
    return (
        isinstance(conv1, torch.Tensor)
        and conv1.ndim == 4
        and "layer1.0.conv1.weight" in sd
        and "bn1.weight" in sd
    )


def is_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    """timm VisionTransformer key names (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight`` ...)."""
    return "patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd


def infer_resnet(sd: Mapping[str, torch.Tensor], source: str, cifar_stem_padding: int = 1) -> dict[str, Any]:
    """A ``build_backbone`` spec for torchvision-named ResNet weights (the ``fc`` classifier is not part of it)."""
    conv1 = sd["conv1.weight"]
    stem = {3: "cifar", 7: "imagenet"}.get(int(conv1.shape[-1]))
    if stem is None or conv1.shape[1] != 3:
        raise NormprobeError(
            f"{source}: ResNet stem conv1 has shape {tuple(conv1.shape)}; normprobe knows the 3x3 CIFAR stem and the 7x7 ImageNet stem of RGB input"
        )
    bottleneck = "layer1.0.conv3.weight" in sd
    depths = tuple(
        len({k.split(".")[1] for k in sd if k.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4)
    )
    name = next(
        (n for n, (block, d) in ARCHITECTURES.items() if d == depths and (block is Bottleneck) == bottleneck),
        None,
    )
    if name is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise NormprobeError(
            f"{source}: a ResNet with {kind} blocks {depths} per stage is not one normprobe builds ({', '.join(ARCHITECTURES)})"
        )
    spec: dict[str, Any] = {"name": name, "stem": stem, "width": int(conv1.shape[0])}
    if stem == "cifar":
        spec["stem_padding"] = cifar_stem_padding
    return spec


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def infer_vit(sd: Mapping[str, torch.Tensor], source: str, notes: list[str]) -> dict[str, Any]:
    """A ``build_backbone`` spec (``timm:<name>`` plus options) for timm-named ViT weights."""
    proj = sd["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    if dim not in VIT_BY_DIM:
        raise NormprobeError(
            f"{source}: a ViT with embedding dim {dim} is not a timm size normprobe can name (the head count is not in the weights); give --arch timm:<model>"
        )
    name, num_heads = VIT_BY_DIM[dim]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    prefix_tokens = (1 if "cls_token" in sd else 0) + (
        int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    )
    positions = int(sd["pos_embed"].shape[1]) if "pos_embed" in sd else 0
    options: dict[str, Any] = {"embed_dim": dim, "depth": depth, "num_heads": num_heads, "patch_size": patch}
    grid = positions - prefix_tokens
    if not _square(grid) and _square(positions):  # timm's no_embed_class: positions for patches only
        options["no_embed_class"] = True
        grid = positions
    if not _square(grid):
        raise NormprobeError(
            f"{source}: cannot read a square ViT image size from pos_embed ({positions} positions); give --arch timm:<model>:img_size=N"
        )
    options["img_size"] = math.isqrt(grid) * patch
    hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in sd else 4 * dim
    if hidden != 4 * dim:
        options["mlp_ratio"] = hidden / dim
    if "blocks.0.attn.qkv.bias" not in sd:
        options["qkv_bias"] = False
    if "cls_token" not in sd:
        options["class_token"] = False
        options["global_pool"] = "avg"
    if "fc_norm.weight" in sd:
        options["global_pool"] = "avg"
    if "reg_token" in sd:
        options["reg_tokens"] = int(sd["reg_token"].shape[1])
    if "blocks.0.ls1.gamma" in sd:
        options["init_values"] = 1e-5  # only switches LayerScale on; the loaded gammas replace it
    if "norm_pre.weight" in sd:
        options["pre_norm"] = True
    notes.append(
        f"ViT read off the weights: dim {dim}, depth {depth}, patch {patch}, image {options['img_size']}; "
        f"{num_heads} attention heads assumed from timm's {name} (use --arch timm:<model> if it differs)"
    )
    return {"name": f"timm:{name}", **options}


def infer_backbone(
    sd: StateDict, source: str, notes: list[str], cifar_stem_padding: int = 1, arch: Arch | None = None
) -> tuple[dict[str, Any], StateDict]:
    """Backbone spec and its weights for ResNet or ViT keys; classifier weights (``fc``/``head``) are dropped with a note.

    When the weights do not say enough (e.g. a ViT with a distillation token) an ``--arch`` that
    names the backbone is used as given.
    """
    if is_resnet(sd):
        dropped = [k for k in sd if k.startswith("fc.")]
        infer = lambda: infer_resnet(sd, source, cifar_stem_padding)  # noqa: E731
    elif is_vit(sd):
        dropped = [k for k in sd if k.startswith(("head.", "head_dist."))]
        infer = lambda: infer_vit(sd, source, notes)  # noqa: E731
    else:
        raise NormprobeError(
            f"{source}: backbone keys are neither a torchvision ResNet nor a timm ViT (first keys: {sample(sd)})"
        )
    try:
        spec = infer()
    except NormprobeError:
        if arch is None or arch.backbone is None:
            raise
        spec = dict(arch.backbone)
        notes.append(f"the weights do not say the whole architecture: built --arch {arch.text} as given")
    if dropped:
        notes.append(f"dropped the classifier ({sample(dropped, 2)}): embeddings are taken before it")
    return spec, {k: v for k, v in sd.items() if k not in dropped}


def native_input_size(spec: dict[str, Any]) -> int:
    """The input a backbone was built for: a ViT's image size, 32 for a CIFAR stem, 224 for ImageNet's."""
    if str(spec["name"]).startswith("timm:"):
        return int(spec.get("img_size", 224))
    return 32 if spec.get("stem", "cifar") == "cifar" else 224


def infer_mlp(sd: Mapping[str, torch.Tensor], source: str, what: str) -> list[LayerSpec]:
    """Layer specs of an ``nn.Sequential`` MLP head from its indexed keys (``0.weight``, ``1.running_mean`` ...).

    Linear layers have a 2-D ``weight``; BatchNorm1d layers have ``running_mean`` (affine when they
    also have ``weight``). Parameter-free layers leave a gap of one index: every such gap in the
    heads of solo-learn and lightly is a ReLU, so a one-index gap is read as ReLU and a wider gap
    is refused rather than guessed.
    """
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        position, _, leaf = key.partition(".")
        if not position.isdigit() or not leaf or "." in leaf:
            raise NormprobeError(
                f"{source}: cannot read {what} key {key!r} as a layer of an nn.Sequential MLP"
            )
        by_index.setdefault(int(position), {})[leaf] = value
    layers: list[LayerSpec] = []
    expected = 0
    for index in sorted(by_index):
        params = by_index[index]
        gap = index - expected
        if gap == 1 and layers:
            layers.append(RELU)
        elif gap != 0:
            raise NormprobeError(
                f"{source}: {what} has {gap} parameter-free layer(s) before layer {index}; normprobe cannot tell what they are"
            )
        weight = params.get("weight")
        if "running_mean" in params:
            layers.append(
                {"type": "bn", "dim": int(params["running_mean"].shape[0]), "affine": weight is not None}
            )
        elif weight is not None and weight.ndim == 2:
            layers.append(
                {
                    "type": "linear",
                    "in": int(weight.shape[1]),
                    "out": int(weight.shape[0]),
                    "bias": "bias" in params,
                }
            )
        else:
            raise NormprobeError(
                f"{source}: {what} layer {index} ({', '.join(sorted(params))}) is neither Linear nor BatchNorm1d"
            )
        expected = index + 1
    return layers


def mlp_head(
    sd: Mapping[str, torch.Tensor], prefix: str, source: str, what: str
) -> tuple[list[LayerSpec] | None, StateDict]:
    """``(layer specs, weights)`` of the MLP head whose keys start with ``prefix`` (see
    :func:`infer_mlp`), or ``(None, {})`` where the checkpoint has no such keys."""
    weights = under(sd, prefix)
    return (infer_mlp(weights, source, what) if weights else None), weights
