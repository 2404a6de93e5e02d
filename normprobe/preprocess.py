"""Turn whole uint8 ``N×H×W×3`` batches into the float input an encoder was trained on.

The rule, recorded in every run: scale to [0, 1]; if the image size differs from the encoder's
input size, resize the batch (bilinear, antialiased); subtract ``mean`` and divide by ``std`` when
the checkpoint gives them (the paper's models take [0, 1] inputs without normalisation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from normprobe.errors import NormprobeError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_INPUT_SIZE = 4096
"""The largest input side a checkpoint may ask for: one 4096x4096 batch of 256 already takes 48 GiB."""


@dataclass(frozen=True)
class Preprocess:
    input_size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Preprocess:
        try:
            size = spec["input_size"]
            size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
            mean = tuple(float(v) for v in spec["mean"]) if spec.get("mean") is not None else None
            std = tuple(float(v) for v in spec["std"]) if spec.get("std") is not None else None
        except (KeyError, TypeError, ValueError) as err:
            raise NormprobeError(f"checkpoint preprocess entry is malformed: {spec!r}") from err
        if (mean is None) != (std is None) or (
            mean is not None and std is not None and (len(mean) != 3 or len(std) != 3)
        ):
            raise NormprobeError(
                f"checkpoint preprocess needs both mean and std with 3 values each: {spec!r}"
            )
        if not all(1 <= side <= MAX_INPUT_SIZE for side in size):
            raise NormprobeError(
                f"checkpoint preprocess input_size {size} is outside 1..{MAX_INPUT_SIZE} pixels: {spec!r}"
            )
        if (
            mean is not None
            and std is not None
            and (not all(map(math.isfinite, (*mean, *std))) or min(std) <= 0)
        ):
            raise NormprobeError(f"checkpoint preprocess needs finite mean and positive std: {spec!r}")
        # Both are None or hold exactly 3 values (checked above).
        return cls(
            size,
            cast("tuple[float, float, float] | None", mean),
            cast("tuple[float, float, float] | None", std),
        )

    def describe(self) -> str:
        norm = (
            f"mean={list(self.mean)} std={list(self.std)}"
            if self.mean is not None and self.std is not None
            else "no mean/std normalisation"
        )
        return f"{self.input_size[0]}x{self.input_size[1]}, [0,1] scaling, {norm}"

    def __call__(
        self, images: torch.Tensor, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """uint8 ``N×H×W×3`` -> float ``N×3×h×w`` on ``device`` in channels_last memory format."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise NormprobeError(f"expected uint8 N×H×W×3 images, got {images.dtype} {tuple(images.shape)}")
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last).to(dtype)
