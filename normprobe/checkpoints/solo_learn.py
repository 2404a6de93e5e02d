"""solo-learn checkpoints: PyTorch Lightning ``.ckpt`` files plus the ``args.json`` saved beside them.

Layout (github.com/vturrisi/solo-learn, ``solo/methods/base.py`` and ``solo/methods/<method>.py``):
``{"state_dict": {...}, "epoch", "global_step", "pytorch-lightning_version", ...}`` with

- ``backbone.*`` (``encoder.*`` in versions before 1.0): torchvision resnet18/50 with ``fc = Identity``;
  for ``data.dataset`` in (cifar10, cifar100) the stem is ``Conv2d(3, 64, 3, stride 1, padding 2)``
  without max-pool -- padding 2, unlike the paper's 1 -- or a timm ViT (``vit_tiny`` ... ``vit_large``);
- ``projector.N.*`` (absent from linear-evaluation checkpoints): an ``nn.Sequential`` MLP (simclr: Linear-ReLU-Linear; byol: Linear-BN-ReLU-Linear;
  simsiam: 3 Linear with BN, last BN without affine; mocov3: bias-free Linears, BN, last BN without
  affine; mocov2plus: Linear-ReLU-Linear); ``predictor.N.*`` for byol, simsiam, mocov3, nnbyol ...;
- ignored: ``classifier.*`` (the online linear probe), ``momentum_backbone.*`` / ``momentum_projector.*``
  / ``momentum_classifier.*`` (EMA copies), ``queue`` / ``queue_ptr`` (MoCo v2+), ``prototypes.*`` (SwAV).

The ``state_dict`` alone (e.g. converted to ``.safetensors``) is read the same way.

``args.json`` (``Checkpointer.save_args``) is the resolved config: ``method``, ``backbone.name``,
``data.dataset`` (older versions: flat ``method``, ``backbone``/``encoder``, ``dataset``). Without it the
architecture is read off the weights. Preprocessing follows solo-learn's ``MEANS_N_STD``: CIFAR-10/100
and STL-10 statistics for those datasets, ImageNet's otherwise. solo-learn's MoCo v2+ forward
L2-normalises the projector output; normprobe calls the projector directly, so ``z`` is raw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from normprobe.checkpoints.arch import Arch, make_preprocess
from normprobe.checkpoints.assemble import Remapped, assemble
from normprobe.checkpoints.contract import BuildResult, CheckpointSource
from normprobe.checkpoints.keys import (
    StateDict,
    check_consumed,
    lightning_progress,
    lightning_state_dict,
    top_prefixes,
    under,
)
from normprobe.checkpoints.layouts import infer_backbone, mlp_head, native_input_size
from normprobe.errors import NormprobeError

# dataset -> (input size, normalisation name), as in solo-learn's data pipelines.
DATASETS = {
    "cifar10": (32, "cifar10"),
    "cifar100": (32, "cifar100"),
    "stl10": (96, "stl10"),
    "imagenet100": (224, "imagenet"),
    "imagenet": (224, "imagenet"),
}
IGNORED = ("classifier.", "momentum_", "queue", "prototypes.")


def detect(source: CheckpointSource) -> bool:
    sd = lightning_state_dict(source.state)
    if sd is None:
        return False
    prefixes = set(top_prefixes(sd))
    return (
        bool(prefixes & {"backbone", "encoder"})
        and bool(prefixes & {"projector", "classifier"})
        and "projection_head" not in prefixes
    )


def _read_args(checkpoint: Path, obj: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    path = checkpoint.parent / "args.json"
    if path.is_file():
        try:
            args = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise NormprobeError(f"{path}: unreadable solo-learn args.json ({err})") from err
        if not isinstance(args, dict):
            raise NormprobeError(
                f"{path}: solo-learn args.json should hold an object, not {type(args).__name__}"
            )
        notes.append(f"read the run config {path}")
        return args
    hyper = obj.get("hyper_parameters")
    if isinstance(hyper, dict) and hyper:
        notes.append("no args.json beside the checkpoint: used its hyper_parameters")
        cfg = hyper.get("cfg")
        return cfg if isinstance(cfg, dict) else hyper
    notes.append(
        "no args.json beside the checkpoint: architecture, method and preprocessing read off the weights"
    )
    return {}


def _arg(args: dict[str, Any], *paths: str) -> Any:
    """The first of the dotted ``paths`` that holds a plain value (new nested and old flat configs)."""
    for path in paths:
        node: Any = args
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            return node
    return None


def _guess_method(sd: StateDict, projector: list[dict[str, Any]] | None, has_predictor: bool) -> str:
    momentum = any(k.startswith("momentum_") for k in sd)
    if projector is None:
        return "linear"
    if "queue" in sd:
        return "mocov2plus"
    if has_predictor and momentum:
        return "byol" if projector[0].get("bias") else "mocov3"
    if has_predictor:
        return "simsiam"
    return "unknown"


def build(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    obj, label = source.state, source.label
    sd = lightning_state_dict(obj)
    assert sd is not None
    notes: list[str] = []
    args = _read_args(source.path, obj, notes)
    dataset = str(_arg(args, "data.dataset", "dataset") or "").lower()
    prefix = "backbone." if any(k.startswith("backbone.") for k in sd) else "encoder."
    used = {k for k in sd if k.startswith((prefix, "projector.", "predictor."))}
    ignored = [k for k in sd if k.startswith(IGNORED) and k not in used]
    check_consumed(sd, used | set(ignored), label, "solo-learn")
    if ignored:
        notes.append(
            f"ignored {', '.join(p for p in top_prefixes(ignored))}: momentum copies, the online linear probe and training state are not the encoder"
        )

    spec, backbone = infer_backbone(under(sd, prefix), label, notes, cifar_stem_padding=2, arch=arch)
    named = _arg(args, "backbone.name", "backbone", "encoder")
    if named and not str(spec["name"]).removeprefix("timm:").startswith(str(named)):
        notes.append(
            f"args.json names backbone {named!r} but the weights are a {spec['name']}: built what the weights say"
        )
    # no projector in solo-learn's linear-evaluation checkpoints
    projector, projector_sd = mlp_head(sd, "projector.", label, "projector")
    predictor, predictor_sd = mlp_head(sd, "predictor.", label, "predictor")
    method = str(_arg(args, "method") or _guess_method(sd, projector, predictor is not None))

    size = native_input_size(spec)  # a ViT's own image size wins over the dataset's
    if dataset in DATASETS:
        size, norm = (
            (size if spec["name"].startswith("timm:") else DATASETS[dataset][0]),
            DATASETS[dataset][1],
        )
    else:
        norm = "cifar10" if size == 32 else "imagenet"
        notes.append(
            f"dataset {dataset or 'unknown'}: assumed {size}x{size} input with {norm} mean/std (override with --arch input_size=N:norm=...)"
        )
    if method == "mocov2plus":
        notes.append(
            "solo-learn's MoCo v2+ forward L2-normalises the projector output; z here is the raw projector output"
        )
    remapped = Remapped(
        spec,
        backbone,
        make_preprocess(size, norm),
        method,
        projector,
        projector_sd,
        predictor,
        predictor_sd,
        notes,
        run_config=args,
        **lightning_progress(obj),
    )
    return assemble(remapped, label, arch)
