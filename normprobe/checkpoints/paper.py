"""The paper's checkpoints: plain ``model.state_dict()`` files of its SimCLR / SimSiam / BYOL modules.

Layout (Draganov et al., github.com/Andrew-Draganov/SSLEmbeddingNorms, ``CLA/training/models.py``;
saved by ``torch.save(model.state_dict(), 'simclr_epoch{N}.pt')`` in ``training_loop.py``):

- the backbone is torchvision's resnet18/50 with ``fc = Identity``; for CIFAR the stem is
  ``Conv2d(3, 64, 3, 1, 1)`` without max-pool. It is registered twice, as ``backbone`` and as
  ``enc.0`` (``enc = nn.Sequential(backbone, projector)``), so every tensor appears under both.
- the ``Projector`` keeps named layers ``layer1``, ``layer1_bn``, ``layer2`` ... *and* the same
  modules again in ``layers`` (``nn.Sequential(layer1, layer1_bn, relu, layer2, ...)``); SimCLR
  also registers it as ``projector`` (2 layers), SimSiam / BYOL only inside ``enc.1`` (3 layers).
  Linear layers have biases; with ``bn: False`` the ``_bn`` entries are parameter-free Identities.
- SimSiam and BYOL have a ``Predictor`` (``layer1``, ``layer1_bn``, ReLU, ``layer2``, also as
  ``layers``); BYOL also a ``target_encoder`` (EMA copy of ``enc``), which is not used here.
- inputs are ``ToTensor()`` only: [0, 1], no mean/std; 32x32 for CIFAR, 128x128 otherwise
  (``DATASET_SIZES_DICT`` in ``CLA/utils/data_utils.py``).

Each alias is checked to hold the same tensor as the entry normprobe loads, so a file whose
copies disagree is refused instead of loaded half-right.
"""

from __future__ import annotations

import re

import torch

from normprobe.checkpoints.arch import Arch, make_preprocess
from normprobe.checkpoints.assemble import Remapped, assemble
from normprobe.checkpoints.contract import BuildResult, CheckpointSource
from normprobe.checkpoints.keys import StateDict, check_consumed, tensors_only, under
from normprobe.checkpoints.layouts import RELU, infer_backbone, is_resnet
from normprobe.errors import NormprobeError
from normprobe.models.heads import LayerSpec

_NAMED = re.compile(r"^layer(\d+)(_bn)?\.(.+)$")


def detect(source: CheckpointSource) -> bool:
    obj = source.state
    return (
        tensors_only(obj)
        and "enc.0.conv1.weight" in obj
        and ("enc.1.layer1.weight" in obj or "projector.layer1.weight" in obj)
    )


def _named_head(
    sd: StateDict, prefix: str, source: str, used: set[str], aliases: dict[str, str]
) -> tuple[list[LayerSpec], StateDict]:
    """Layers and remapped weights of a paper ``Projector``/``Predictor`` stored under ``prefix``.

    Block k is ``layer{k}`` (Linear) [+ ``layer{k}_bn`` (BatchNorm1d)], with a ReLU between blocks;
    in ``layers`` block k starts at index 3(k-1) (Linear, BN-or-Identity, ReLU).
    """
    head = under(sd, prefix)
    layers: list[LayerSpec] = []
    weights: StateDict = {}
    block = 1
    while f"layer{block}.weight" in head:
        if block > 1:
            layers.append(RELU)
        weight = head[f"layer{block}.weight"]
        parts = [(f"layer{block}", 3 * (block - 1))]
        layers.append(
            {
                "type": "linear",
                "in": int(weight.shape[1]),
                "out": int(weight.shape[0]),
                "bias": f"layer{block}.bias" in head,
            }
        )
        linear_index = len(layers) - 1
        bn_index = None
        if f"layer{block}_bn.running_mean" in head:
            layers.append(
                {
                    "type": "bn",
                    "dim": int(head[f"layer{block}_bn.running_mean"].shape[0]),
                    "affine": f"layer{block}_bn.weight" in head,
                }
            )
            bn_index = len(layers) - 1
            parts.append((f"layer{block}_bn", 3 * (block - 1) + 1))
        for name, paper_index in parts:
            ours = linear_index if not name.endswith("_bn") else bn_index
            for key in [k for k in head if k.startswith(name + ".")]:
                leaf = key[len(name) + 1 :]
                weights[f"{ours}.{leaf}"] = head[key]
                used.add(prefix + key)
                aliases[f"{prefix}layers.{paper_index}.{leaf}"] = prefix + key
        block += 1
    if not layers:
        raise NormprobeError(f"{source}: no layer1 under {prefix!r}")
    stray = [k for k in head if _NAMED.match(k) and prefix + k not in used]
    if stray:
        raise NormprobeError(f"{source}: {prefix} has layers after a gap: {', '.join(stray[:3])}")
    return layers, weights


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.save keeps shared storage shared, so aliases usually are one tensor; otherwise compare values."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    one = (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.stride() == b.stride()
    )
    return one or torch.equal(a, b)


def _check_aliases(sd: StateDict, aliases: dict[str, str], used: set[str], source: str) -> None:
    for alias, primary in aliases.items():
        if alias not in sd:
            continue
        if not _same(sd[alias], sd[primary]):
            raise NormprobeError(
                f"{source}: {alias} and {primary} should be the same tensor (the paper registers each module twice) but differ"
            )
        used.add(alias)


def build(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    obj: StateDict = source.state
    label = source.label
    notes: list[str] = []
    used: set[str] = set()
    aliases: dict[str, str] = {}
    backbone_sd = under(obj, "enc.0.")
    if not is_resnet(backbone_sd):
        raise NormprobeError(f"{label}: enc.0 is not a torchvision ResNet")
    used.update("enc.0." + k for k in backbone_sd)
    aliases.update({"backbone." + k: "enc.0." + k for k in backbone_sd})
    spec, backbone_sd = infer_backbone(backbone_sd, label, notes, arch=arch)

    projector, projector_weights = _named_head(obj, "enc.1.", label, used, aliases)
    for key in [k for k in obj if k.startswith("enc.1.")]:  # SimCLR registers enc.1 again as `projector`
        aliases["projector." + key[len("enc.1.") :]] = aliases.get(key, key)
    predictor = predictor_weights = None
    if "predictor.layer1.weight" in obj:
        predictor, predictor_weights = _named_head(obj, "predictor.", label, used, aliases)
    _check_aliases(obj, aliases, used, label)
    target = [k for k in obj if k.startswith("target_encoder.")]
    used.update(target)
    check_consumed(obj, used, label, "paper (SSLEmbeddingNorms)")

    method = "byol" if target else "simsiam" if predictor else "simclr"
    notes.append(
        "the paper registers backbone and heads twice (backbone/enc.0, projector/enc.1, layerN/layers.M): the copies were checked identical and loaded once"
    )
    if target:
        notes.append("ignored the BYOL target_encoder (EMA copy): embeddings come from the online encoder")
    if predictor is None and method != "simclr":
        raise NormprobeError(f"{label}: {method} checkpoint without a predictor")
    stem_size = 32 if spec.get("stem") == "cifar" else 128
    preprocess = make_preprocess(stem_size, "none")
    notes.append(
        f"preprocessing as the paper's code: [0,1] without mean/std, {stem_size}x{stem_size} ({spec.get('stem')} stem)"
    )
    remapped = Remapped(
        spec,
        backbone_sd,
        preprocess,
        method,
        projector,
        projector_weights,
        predictor,
        predictor_weights or {},
        notes,
    )
    return assemble(remapped, label, arch)
