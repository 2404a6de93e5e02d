"""Row readers behind an :class:`~normprobe.data.imageset.ImageSet`: they decode only the rows asked for."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from normprobe.data.convert import decode_image_bytes, gray_to_rgb


class ImageReader(Protocol):
    """Random access to uint8 RGB images of one size."""

    image_size: tuple[int, int]

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 ``len(rows)×H×W×3`` for the given row positions."""
        ...


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
    """Concatenated encoded files (e.g. JPEG) with ``offsets``: image i is ``data[offsets[i]:offsets[i+1]]``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, image_size: tuple[int, int]) -> None:
        self._data = data
        self._offsets = offsets
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _decode_one(self, row: int) -> np.ndarray:
        return decode_image_bytes(self._data[self._offsets[row] : self._offsets[row + 1]].tobytes())

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_size, 3), np.uint8)
        if len(rows) < 64:
            for i, row in enumerate(rows):
                out[i] = self._decode_one(int(row))
            return out
        with ThreadPoolExecutor(_decode_threads()) as pool:
            for i, image in enumerate(pool.map(self._decode_one, (int(r) for r in rows), chunksize=256)):
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
