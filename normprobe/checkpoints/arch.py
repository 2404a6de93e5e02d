"""``--arch``: say what a checkpoint does not (or overrule what normprobe inferred from it).

Grammar: colon-separated tokens.

    resnet18 | resnet34 | resnet50      a torchvision-named ResNet; then optionally
        cifar | imagenet                the stem (3x3/stride 1/no max-pool, or 7x7/stride 2/max-pool)
        width=N                         channels of the first stage (64 in the papers)
        stem_padding=N                  padding of the CIFAR stem conv (1; solo-learn uses 2)
    timm:<model>[:key=value ...]        a timm model, keys passed to ``timm.create_model``
                                        (e.g. ``timm:vit_small_patch16_224:img_size=32:patch_size=4``)
    input_size=N                        the square input the encoder expects (any form, or alone)
    norm=none|imagenet|cifar10|cifar100|stl10  the mean/std normalisation it was trained with

Examples: ``resnet18:cifar:width=32``, ``resnet50:imagenet``, ``input_size=224:norm=imagenet``
(for TorchScript / ``torch.export`` files, whose architecture is in the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from normprobe.errors import NormprobeError
from normprobe.models.resnet import ARCHITECTURES
from normprobe.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess

# solo-learn's CIFAR-100 and STL-10 statistics (solo/data/pretrain_dataloader.py, MEANS_N_STD).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
STL10_MEAN = (0.4914, 0.4823, 0.4466)
STL10_STD = (0.247, 0.243, 0.261)

NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]] | None] = {
    "none": None,
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "stl10": (STL10_MEAN, STL10_STD),
}

GRAMMAR = (
    "resnet18|resnet34|resnet50[:cifar|:imagenet][:width=N][:stem_padding=N], "
    "timm:<model>[:key=value...], and/or input_size=N:norm=none|imagenet|cifar10|cifar100|stl10"
)
_PREPROCESS_KEYS = ("input_size", "norm")
_RESNET_KEYS = ("width", "stem_padding", "stem")


def make_preprocess(input_size: int | tuple[int, int], norm: str) -> Preprocess:
    """A :class:`Preprocess` from an input size and a named normalisation (see ``NORMALISATIONS``)."""
    size = (input_size, input_size) if isinstance(input_size, int) else (input_size[0], input_size[1])
    stats = NORMALISATIONS[norm]
    return Preprocess(size, *stats) if stats is not None else Preprocess(size)


@dataclass(frozen=True)
class Arch:
    """A parsed ``--arch``: an optional backbone spec and optional preprocessing overrides."""

    text: str
    backbone: dict[str, Any] | None = None
    input_size: int | None = None
    norm: str | None = None

    def backbone_spec(self, inferred: dict[str, Any] | None) -> dict[str, Any] | None:
        """The backbone to build: ours overrides what was inferred; options of the same family carry over."""
        if self.backbone is None:
            return inferred
        if inferred is None:
            return dict(self.backbone)
        same_family = str(inferred["name"]).startswith("timm:") == str(self.backbone["name"]).startswith(
            "timm:"
        )
        return {**inferred, **self.backbone} if same_family else dict(self.backbone)

    def preprocess(self, default: Preprocess) -> Preprocess:
        size = (self.input_size, self.input_size) if self.input_size else default.input_size
        if self.norm is None:
            return Preprocess(size, default.mean, default.std)
        stats = NORMALISATIONS[self.norm]
        return Preprocess(size, *stats) if stats is not None else Preprocess(size)


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _fail(text: str, why: str) -> NormprobeError:
    return NormprobeError(f"--arch {text!r}: {why} (expected {GRAMMAR})")


def parse_arch(text: str | None) -> Arch | None:
    """Parse an ``--arch`` string; ``None`` or empty gives ``None``. Unknown forms raise NormprobeError."""
    if text is None or not text.strip():
        return None
    tokens = [t.strip() for t in text.strip().split(":")]
    if any(not t for t in tokens):
        raise _fail(text, "empty field")
    backbone: dict[str, Any] | None = None
    rest = tokens
    if "=" not in tokens[0]:
        head = tokens[0].lower()
        if head == "timm":
            if len(tokens) < 2 or "=" in tokens[1]:
                raise _fail(text, "timm needs a model name, e.g. timm:vit_small_patch16_224")
            import timm

            if not timm.is_model(tokens[1]):
                raise _fail(text, f"timm has no model {tokens[1]!r}")
            backbone, rest = {"name": f"timm:{tokens[1]}"}, tokens[2:]
        elif head in ARCHITECTURES:
            backbone, rest = {"name": head}, tokens[1:]
        else:
            raise _fail(text, f"unknown architecture {tokens[0]!r}")
    input_size: int | None = None
    norm: str | None = None
    for token in rest:
        key, eq, raw = token.partition("=")
        key = key.strip().lower()
        if not eq:
            if (
                backbone is not None
                and not backbone["name"].startswith("timm:")
                and key in ("cifar", "imagenet")
            ):
                backbone["stem"] = key
                continue
            raise _fail(text, f"cannot read {token!r}")
        raw = raw.strip()
        if key == "input_size":
            if not raw.isdigit() or int(raw) < 1:
                raise _fail(text, f"input_size must be a positive integer, got {raw!r}")
            input_size = int(raw)
        elif key == "norm":
            if raw.lower() not in NORMALISATIONS:
                raise _fail(text, f"norm must be one of {', '.join(NORMALISATIONS)}, got {raw!r}")
            norm = raw.lower()
        elif backbone is None:
            raise _fail(text, f"{key!r} needs an architecture name first")
        elif backbone["name"].startswith("timm:"):
            backbone[key] = _value(raw)
        elif key in _RESNET_KEYS:
            if key == "stem":
                if raw not in ("cifar", "imagenet"):
                    raise _fail(text, f"stem must be cifar or imagenet, got {raw!r}")
                backbone[key] = raw
            elif not raw.isdigit() or (key == "width" and int(raw) < 1):
                raise _fail(text, f"{key} must be a non-negative integer, got {raw!r}")
            else:
                backbone[key] = int(raw)
        else:
            raise _fail(
                text, f"unknown ResNet option {key!r} (known: {', '.join(_RESNET_KEYS + _PREPROCESS_KEYS)})"
            )
    if backbone is not None and backbone["name"].startswith("timm:") and input_size is None:
        img_size = backbone.get("img_size")
        input_size = img_size if isinstance(img_size, int) else None
    return Arch(text, backbone, input_size, norm)
