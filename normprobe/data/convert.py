"""The documented rules that turn any input image into uint8 RGB of one size.

* Greyscale (``H×W`` or ``H×W×1``) becomes RGB by repeating the channel; palette, RGBA, CMYK and
  16-bit images are converted with Pillow's ``convert("RGB")`` (alpha is dropped, not blended).
* Image folders hold images of any size: each is resized so its shorter side equals the target
  size (bicubic, antialiased) and centre-cropped to a square, the usual evaluation transform.
* Datasets keep their native size; :mod:`normprobe.preprocess` resizes whole batches to the
  encoder's input size (bilinear, antialiased) and every run records that it did.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image


def gray_to_rgb(images: np.ndarray) -> np.ndarray:
    """Repeat the single channel of ``N×H×W`` or ``N×H×W×1`` uint8 images to ``N×H×W×3``."""
    if images.ndim == 3:
        images = images[..., None]
    return np.repeat(images, 3, axis=-1)


def pil_to_rgb_array(image: Image.Image, size: int | None = None) -> np.ndarray:
    """One Pillow image as ``H×W×3`` uint8; with ``size``, shorter side resized then centre-cropped."""
    rgb = image.convert("RGB")
    if size is not None and rgb.size != (size, size):
        width, height = rgb.size
        scale = size / min(width, height)
        resized = rgb.resize(
            (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC
        )
        left = (resized.width - size) // 2
        top = (resized.height - size) // 2
        rgb = resized.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8)


def decode_image_bytes(data: bytes, size: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to ``H×W×3`` uint8 (raises on corrupt data)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return pil_to_rgb_array(image, size)


def declared_size(data: bytes) -> tuple[int, int]:
    """(height, width) that encoded image bytes declare, read from the header without decoding.

    A few bytes can declare a gigapixel image: callers compare this with what they expect before
    any decoder allocates the pixels.
    """
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return height, width


def decode_error(err: Exception) -> str:
    """Why Pillow could not read an image, as ``Type: message`` without the in-memory buffer's address
    (Pillow names it, "<_io.BytesIO object at 0x...>"), so the same file always gives the same reason."""
    reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))
    return f"{type(err).__name__}: {reason}"
