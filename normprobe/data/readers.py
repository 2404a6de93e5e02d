"""Row readers behind an :class:`~normprobe.data.imageset.ImageSet`: they decode only the rows asked for."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from normprobe.data.convert import decode_image_bytes, gray_to_rgb
from normprobe.errors import NormprobeError

if TYPE_CHECKING:  # torch is imported on first decode, so `import normprobe.data` stays light
    import torch


class ImageReader(Protocol):
    """Random access to uint8 RGB images of one size."""

    image_size: tuple[int, int]

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 ``len(rows)×H×W×3`` for the given row positions."""
        ...


@functools.lru_cache(maxsize=1)
def _libjpeg_turbo_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's JPEG decoder op (uint8 bytes -> 3×H×W RGB), or None where torchvision lacks it.

    The op is called directly: the Python wrapper ``torchvision.io.decode_jpeg`` warns on every call
    since torchvision 0.29 (its image I/O moves to TorchCodec); when the op goes away, Pillow decodes.
    """
    try:
        import torch
        from torchvision.io import ImageReadMode  # imported on first use: torchvision is slow to import

        op = torch.ops.image.decode_jpeg
    except (ImportError, AttributeError, RuntimeError):
        return None
    rgb = ImageReadMode.RGB.value
    return lambda blob: op(blob, rgb, False)


def _decode_threads() -> int:
    # Pillow releases the GIL while decoding, so threads scale with cores.
    return max(1, min(8, os.cpu_count() or 1))


class ArrayReader:
    """Images already decoded in memory (``N×H×W``, ``N×H×W×1`` or ``N×H×W×3`` uint8)."""

    def __init__(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 N×H×W[×C] images, got {images.dtype} {images.shape}")
        self._images = images
        self.image_size = (int(images.shape[1]), int(images.shape[2]))

    def __len__(self) -> int:
        return len(self._images)

    def read(self, rows: np.ndarray) -> np.ndarray:
        picked = self._images[rows]
        if picked.ndim == 3 or picked.shape[-1] == 1:
            return gray_to_rgb(picked)
        return np.ascontiguousarray(picked)


class EncodedReader:
    """Concatenated encoded files (e.g. JPEG) with ``offsets``: image i is ``data[offsets[i]:offsets[i+1]]``.

    JPEG batches are decoded by ``torchvision.io.decode_jpeg`` (libjpeg-turbo, whole batch in one
    call, ~5x faster than one Pillow call per image and bit-identical to Pillow's decode of the
    mirrors, whose README pixel hashes are Pillow's; a test checks the equality). Anything else
    (PNG bytes in a user's .npz, a JPEG libjpeg-turbo refuses) goes through Pillow.
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray, image_size: tuple[int, int]) -> None:
        # torch.from_numpy needs writable memory; a read-only buffer is copied once here.
        self._data = data if data.flags.writeable else data.copy()
        self._offsets = offsets
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _bytes(self, row: int) -> np.ndarray:
        return self._data[self._offsets[row] : self._offsets[row + 1]]

    def _decode_one(self, row: int) -> np.ndarray:
        try:
            return decode_image_bytes(self._bytes(row).tobytes())
        except Exception as err:  # Pillow raises many types for bad bytes; each one means "unreadable"
            raise NormprobeError(
                f"encoded image {row} cannot be decoded ({type(err).__name__}: {err})"
            ) from err

    def _decode_jpeg_batch(self, rows: np.ndarray) -> list[torch.Tensor] | None:
        starts, ends = self._offsets[rows], self._offsets[rows + 1]
        if (
            (ends - starts < 4).any()
            or (self._data[starts] != 0xFF).any()
            or (self._data[starts + 1] != 0xD8).any()
        ):
            return None  # not all JPEG (SOI marker FF D8)
        decode = _libjpeg_turbo_decoder()
        if decode is None:
            return None
        import torch

        try:
            return [
                decode(torch.from_numpy(self._data[a:b]))
                for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
            ]
        except RuntimeError:  # a JPEG libjpeg-turbo refuses: Pillow gets the batch
            return None

    def _check_size(self, row: int, shape: tuple[int, ...]) -> None:
        if tuple(shape) != self.image_size:
            raise NormprobeError(
                f"encoded image {row} is {shape[0]}x{shape[1]}, the others {self.image_size[0]}x{self.image_size[1]}: "
                "an .npz of encoded images must hold images of one size"
            )

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_size, 3), np.uint8)
        if len(rows) == 0:
            return out
        decoded = self._decode_jpeg_batch(rows)
        if decoded is not None:
            import torch

            for row, image in zip(rows, decoded, strict=True):
                self._check_size(int(row), tuple(image.shape[1:]))
            torch.from_numpy(out).copy_(torch.stack(decoded).permute(0, 2, 3, 1))
            return out
        if len(rows) < 64:
            images = [self._decode_one(int(row)) for row in rows]
        else:
            with ThreadPoolExecutor(_decode_threads()) as pool:
                images = list(pool.map(self._decode_one, (int(r) for r in rows), chunksize=256))
        for i, (row, image) in enumerate(zip(rows, images, strict=True)):
            self._check_size(int(row), image.shape[:2])
            out[i] = image
        return out


class FileReader:
    """Image files on disk, each resized and centre-cropped to ``size`` (see :mod:`normprobe.data.convert`)."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self._paths = list(paths)
        self.image_size = (size, size)

    def __len__(self) -> int:
        return len(self._paths)

    def _decode_one(self, row: int) -> np.ndarray:
        return decode_image_bytes(self._paths[row].read_bytes(), self.image_size[0])

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_size, 3), np.uint8)
        with ThreadPoolExecutor(_decode_threads()) as pool:
            for i, image in enumerate(pool.map(self._decode_one, (int(r) for r in rows))):
                out[i] = image
        return out
