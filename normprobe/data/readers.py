"""Row readers behind an :class:`~normprobe.data.imageset.ImageSet`: they decode only the rows asked for."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from normprobe.data.convert import declared_size, decode_error, decode_image_bytes, gray_to_rgb
from normprobe.data.npz import LazyRows
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
def _libjpeg_turbo_decoder() -> Callable[[list[torch.Tensor]], list[torch.Tensor]] | None:
    """torchvision's public batched JPEG decoder (uint8 bytes -> 3×H×W RGB each), or None where
    torchvision has none (then Pillow decodes).

    Since torchvision 0.29 ``torchvision.io.decode_jpeg`` emits a DeprecationWarning on every call
    (its image I/O moves to TorchCodec); that one warning is silenced here, for the decoder's calls
    only, rather than calling the private op the function wraps.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # imported on first use: torchvision is slow
    except ImportError:
        return None

    def decode(blobs: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="The image decoding and encoding", category=DeprecationWarning
            )
            return list(decode_jpeg(blobs, mode=ImageReadMode.RGB))

    return decode


def _decode_threads() -> int:
    # Pillow releases the GIL while decoding, so threads scale with cores.
    return max(1, min(8, os.cpu_count() or 1))


MAX_ENCODED_PIXELS = 4096 * 4096
"""The largest image an .npz of encoded images may hold (its header is checked before decoding)."""


class ArrayReader:
    """Decoded images (``N×H×W``, ``N×H×W×1`` or ``N×H×W×3`` uint8), in memory or inflated on demand."""

    def __init__(self, images: np.ndarray | LazyRows) -> None:
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

    ``offsets`` must be checked already (integers, increasing, ending at ``len(data)``). Unless
    ``trusted`` (a mirror file whose sha256 matched its manifest), every image's header is checked
    against ``image_size`` before it is decoded, so no decoder allocates the pixels of a size the
    bytes merely claim. Without ``image_size``, image 0's header sets it.
    """

    def __init__(
        self,
        data: np.ndarray | LazyRows,
        offsets: np.ndarray,
        image_size: tuple[int, int] | None,
        *,
        trusted: bool,
        name: str = "encoded images",
    ) -> None:
        # torch.from_numpy needs writable memory; a read-only buffer is copied once here.
        self._data = data.copy() if isinstance(data, np.ndarray) and not data.flags.writeable else data
        self._offsets = offsets
        self._trusted = trusted
        self._name = name
        self.image_size = image_size or self._declared_size(0)
        if not trusted and self.image_size[0] * self.image_size[1] > MAX_ENCODED_PIXELS:
            h, w = self.image_size
            raise NormprobeError(
                f"{name}: images of {h}x{w} are larger than the {MAX_ENCODED_PIXELS:,} pixels normprobe decodes"
            )

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _bytes(self, row: int) -> np.ndarray:
        return self._data[self._offsets[row] : self._offsets[row + 1]]

    def _unreadable(self, row: int, err: Exception) -> NormprobeError:
        return NormprobeError(f"{self._name}: encoded image {row} cannot be decoded ({decode_error(err)})")

    def _declared_size(self, row: int) -> tuple[int, int]:
        try:
            return declared_size(self._bytes(row).tobytes())
        except Exception as err:  # Pillow raises many types for bad bytes; each one means "unreadable"
            raise self._unreadable(row, err) from err

    def _decode_one(self, row: int) -> np.ndarray:
        try:
            return decode_image_bytes(self._bytes(row).tobytes())
        except Exception as err:  # Pillow raises many types for bad bytes; each one means "unreadable"
            raise self._unreadable(row, err) from err

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
            return decode(
                [
                    torch.from_numpy(self._data[a:b])
                    for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
                ]
            )
        except RuntimeError:  # a JPEG libjpeg-turbo refuses: Pillow gets the batch
            return None

    def _check_size(self, row: int, shape: tuple[int, ...]) -> None:
        if tuple(shape) != self.image_size:
            raise NormprobeError(
                f"{self._name}: encoded image {row} is {shape[0]}x{shape[1]}, the others {self.image_size[0]}x{self.image_size[1]}: "
                "an .npz of encoded images must hold images of one size"
            )

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_size, 3), np.uint8)
        if len(rows) == 0:
            return out
        if not self._trusted:
            for row in rows.tolist():
                self._check_size(row, self._declared_size(row))
        decoded = self._decode_jpeg_batch(rows)
        if decoded is not None:
            import torch

            for row, tensor in zip(rows, decoded, strict=True):
                self._check_size(int(row), tuple(tensor.shape[1:]))
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
        try:
            return decode_image_bytes(self._paths[row].read_bytes(), self.image_size[0])
        except Exception as err:  # read once when the folder was listed: it changed since
            raise NormprobeError(f"{self._paths[row]}: can no longer be read ({decode_error(err)})") from err

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_size, 3), np.uint8)
        with ThreadPoolExecutor(_decode_threads()) as pool:
            for i, image in enumerate(pool.map(self._decode_one, (int(r) for r in rows))):
                out[i] = image
        return out
