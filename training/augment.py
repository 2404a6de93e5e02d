"""SimCLR-style augmentations applied to whole batches of tensors, on the model's device.

The pipeline of SimCLR (Chen et al., 2020, Appendix A) for CIFAR, also used by SimSiam, BYOL and
MoCo v2 on CIFAR: random resized crop (scale ``crop_scale``, aspect ratio 3/4..4/3) resized back to
the input size, horizontal flip (p=0.5), colour jitter (brightness, contrast, saturation, hue in a
random order, applied with p=0.8) and grayscale (p=0.2). No Gaussian blur at 32x32.

Every sample draws its own parameters, but no Python loop runs over images: the crop and flip are
one ``affine_grid``/``grid_sample`` over the batch, jitter and grayscale are batched arithmetic.
Parameters are drawn on the CPU from an explicit ``torch.Generator`` for the whole *global* batch,
so a run is reproducible on any device and every DDP rank sees the views it would have seen in a
single process (each rank applies the rows it owns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample random parameters of one batch (CPU tensors, first dimension = batch)."""

    theta: torch.Tensor  # n×2×3 affine crop+flip
    jitter: torch.Tensor  # n×4 factors: brightness, contrast, saturation, hue shift
    order: torch.Tensor  # n×4 permutation of the four jitter operations
    apply_jitter: torch.Tensor  # n bool
    gray: torch.Tensor  # n bool

    def rows(self, lo: int, hi: int) -> AugmentParams:
        return AugmentParams(
            self.theta[lo:hi],
            self.jitter[lo:hi],
            self.order[lo:hi],
            self.apply_jitter[lo:hi],
            self.gray[lo:hi],
        )


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Closed form: channel c = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B.
    n = torch.tensor((5.0, 3.0, 1.0), device=h.device).view(1, 3, 1, 1)
    k = (n + 6.0 * h.unsqueeze(1)) % 6.0
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def _jitter_op(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    if op == 0:  # brightness: blend with black
        return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
    if op == 1:  # contrast: blend with the image's mean gray level
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == 2:  # saturation: blend with the grayscale image
        return _blend(x, _gray(x), factor)
    h, s, v = _rgb_to_hsv(x)  # hue: rotate the hue channel
    return _hsv_to_rgb((h + factor.view(-1, 1, 1)) % 1.0, s, v)


class BatchAugment:
    """``augment(uint8 N×H×W×3 on device, params) -> float N×3×size×size in [0, 1]``."""

    def __init__(
        self,
        size: int = 32,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
    ) -> None:
        self.size = int(size)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.flip_p = float(flip_p)
        self.jitter = tuple(float(v) for v in jitter)
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)

    def sample(self, n: int, generator: torch.Generator, image_size: tuple[int, int]) -> AugmentParams:
        """Draw the parameters of ``n`` views (torchvision's RandomResizedCrop rule: up to 10 tries,
        else the whole image clipped to the ratio range)."""
        height, width = image_size
        tries = 10
        u = torch.rand(n, tries, 4, generator=generator, dtype=torch.float64)
        area = height * width * (self.crop_scale[0] + (self.crop_scale[1] - self.crop_scale[0]) * u[..., 0])
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
        w = torch.sqrt(area * ratio).round()
        h = torch.sqrt(area / ratio).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.to(torch.int8).argmax(dim=1)
        pick = lambda t: t.gather(1, first.unsqueeze(1)).squeeze(1)  # noqa: E731
        w, h, ux, uy, any_ok = pick(w), pick(h), pick(u[..., 2]), pick(u[..., 3]), ok.any(dim=1)
        # Fallback: the largest central crop with an aspect ratio in range.
        in_ratio = width / height
        fw = torch.full((n,), float(width), dtype=torch.float64)
        fh = torch.full((n,), float(height), dtype=torch.float64)
        if in_ratio < self.crop_ratio[0]:
            fh = (fw / self.crop_ratio[0]).round()
        elif in_ratio > self.crop_ratio[1]:
            fw = (fh * self.crop_ratio[1]).round()
        w, h = torch.where(any_ok, w, fw), torch.where(any_ok, h, fh)
        x0 = torch.where(any_ok, torch.floor(ux * (width - w + 1)), (width - w) / 2)
        y0 = torch.where(any_ok, torch.floor(uy * (height - h + 1)), (height - h) / 2)
        flip = torch.rand(n, generator=generator) < self.flip_p
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = (w / width) * torch.where(flip, -1.0, 1.0).double()
        theta[:, 0, 2] = (2 * x0 + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * y0 + h) / height - 1
        b, c, s, hue = self.jitter
        r = torch.rand(n, 4, generator=generator)
        factors = torch.stack(
            (
                1 - b + 2 * b * r[:, 0],
                1 - c + 2 * c * r[:, 1],
                1 - s + 2 * s * r[:, 2],
                -hue + 2 * hue * r[:, 3],
            ),
            1,
        )
        order = torch.rand(n, 4, generator=generator).argsort(dim=1)
        apply_jitter = torch.rand(n, generator=generator) < self.jitter_p
        gray = torch.rand(n, generator=generator) < self.gray_p
        return AugmentParams(theta.float(), factors, order, apply_jitter, gray)

    def __call__(
        self, images: torch.Tensor, params: AugmentParams, gather: bool | None = None
    ) -> torch.Tensor:
        """``gather``: apply each jitter operation to the rows that draw it, gathered (the least
        arithmetic; the default on the CPU), or to the whole batch, keeping its result only in
        those rows (no data-dependent shapes, so no device-to-host wait; the default on
        accelerators). Both give the same views."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        theta = params.theta.to(x.device)
        grid = F.affine_grid(theta, [x.shape[0], 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        factors = params.jitter.to(x.device)
        order = params.order.to(x.device)
        apply_jitter = params.apply_jitter.to(x.device)
        if gather is None:
            gather = x.device.type == "cpu"
        for slot in range(4):
            for op in range(4):
                chosen = apply_jitter & (order[:, slot] == op)
                if gather:
                    rows = torch.nonzero(chosen).squeeze(1)
                    if rows.numel():
                        x[rows] = _jitter_op(x[rows], op, factors[rows, op])
                else:
                    x = torch.where(chosen.view(-1, 1, 1, 1), _jitter_op(x, op, factors[:, op]), x)
        gray = params.gray.to(x.device)
        return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
