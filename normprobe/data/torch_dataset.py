"""A map-style ``torch.utils.data.Dataset`` of images as an :class:`ImageSet` (the Python API's datasets).

Each item is ``(image, label, ...)`` or an image alone (label -1); an image is a PIL image, or a
tensor / array in ``C×H×W`` (channels first, torch's convention, when the first axis has 1 or 3
entries) or ``H×W×C`` layout, uint8 or float in [0, 1]; greyscale is repeated to RGB. Images of
one size keep it (the checkpoint's preprocessing resizes batches, as for every dataset); images of
several sizes are resized (shorter side) and centre-cropped to the encoder's input size, as image
folders are.

The fingerprint is computed from the content: one pass over every item hashes its pixels and label
when the set is made, so the embedding cache recognises the same images under any name and never
serves another dataset's embeddings. The dataset must return the same item each time it is asked
(no random augmentations); images are read again, on demand, when they are embedded or shown.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np

from normprobe.data.convert import gray_to_rgb, pil_to_rgb_array
from normprobe.data.hashing import fingerprint
from normprobe.data.imageset import ImageSet
from normprobe.errors import NormprobeError


def _label(value: Any, where: str) -> int:
    if hasattr(value, "ndim") and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or numpy scalar
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise NormprobeError(f"{where}: the label must be an integer, got {type(value).__name__}")
    if value < -1:
        raise NormprobeError(f"{where}: label {value} (labels are >= 0, or -1 for unknown)")
    return int(value)


def _pixels(image: Any, where: str) -> np.ndarray:
    """One image as uint8 ``H×W×3`` at its own size."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return pil_to_rgb_array(image)
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise NormprobeError(
            f"{where}: expected a PIL image, a tensor or an array, got {type(image).__name__}"
        )
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = np.moveaxis(image, 0, -1)  # C×H×W (an H×W×C image is not 1 or 3 pixels high)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3) or 0 in image.shape:
        raise NormprobeError(
            f"{where}: expected a C×H×W or H×W×C image with 1 or 3 channels, got shape {image.shape}"
        )
    if image.dtype.kind == "f":
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise NormprobeError(
                f"{where}: float images must hold values in [0, 1] (drop any normalising transform: "
                "normprobe applies the checkpoint's own preprocessing)"
            )
        image = np.round(image * 255.0)
    elif image.dtype.kind not in "iu" or (image.size and (image.min() < 0 or image.max() > 255)):
        raise NormprobeError(f"{where}: integer images must hold values 0..255, got {image.dtype}")
    image = image.astype(np.uint8)
    return np.ascontiguousarray(gray_to_rgb(image[None])[0] if image.ndim == 2 else image)


def _split_item(item: Any) -> tuple[Any, Any]:
    """``(image, label)`` of a dataset item; an item that is not a tuple or list is an image without a label."""
    if isinstance(item, tuple | list):
        if not item:
            return None, -1
        return item[0], item[1] if len(item) > 1 else -1
    return item, -1


class DatasetReader:
    """Reads items of a map-style dataset on demand, as uint8 images of one size."""

    def __init__(self, dataset: Any, name: str, image_size: tuple[int, int], crop: int | None) -> None:
        self._dataset = dataset
        self._name = name
        self._crop = crop
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self._dataset)

    def image(self, row: int) -> np.ndarray:
        where = f"{self._name} item {row}"
        pixels = _pixels(_split_item(self._dataset[row])[0], where)
        if self._crop is not None:
            from PIL import Image

            pixels = pil_to_rgb_array(Image.fromarray(pixels), self._crop)
        if pixels.shape[:2] != self.image_size:
            raise NormprobeError(
                f"{where} is {pixels.shape[0]}x{pixels.shape[1]}, it was {self.image_size[0]}x{self.image_size[1]} "
                "when normprobe first read it: the dataset must return the same items every time (no random transforms)"
            )
        return pixels

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_size, 3), np.uint8)
        for i, row in enumerate(rows.tolist()):
            out[i] = self.image(int(row))
        return out


def from_torch_dataset(dataset: Any, name: str, split: str, image_size: int) -> ImageSet:
    """``dataset`` (map-style: ``len`` and integer indexing) as an ImageSet named ``name/split``.

    ``image_size`` is the encoder's input size, used only when the images have several sizes.
    Reads every item once to hash it (see the module docstring).
    """
    kind = type(dataset).__name__
    try:
        n = len(dataset)
    except TypeError as err:
        raise NormprobeError(f"{name}: a {kind} has no length; give a map-style Dataset") from err
    if n == 0:
        raise NormprobeError(f"{name}: the dataset is empty")
    digest = hashlib.blake2b(digest_size=16)
    labels = np.empty(n, np.int64)
    sizes = set()
    for i in range(n):
        where = f"{name} ({kind}) item {i}"
        try:
            item = dataset[i]
        except (IndexError, KeyError, TypeError) as err:
            raise NormprobeError(f"{where} cannot be read ({type(err).__name__}: {err})") from err
        image, label = _split_item(item)
        pixels = _pixels(image, where)
        labels[i] = _label(label, where)
        sizes.add(pixels.shape[:2])
        digest.update(np.array(pixels.shape, np.int64).tobytes())
        digest.update(pixels.tobytes())
    crop = image_size if len(sizes) > 1 else None
    size = (image_size, image_size) if crop else next(iter(sizes))
    notes = [f"a Python dataset ({kind}), {n} items"]
    if crop:
        notes.append(f"images of several sizes resized (shorter side) and centre-cropped to {crop}x{crop}")
    classes = getattr(dataset, "classes", None)
    index = np.arange(n, dtype=np.int64)
    return ImageSet(
        name=name,
        split=split,
        labels=labels,
        index=index,
        ids=np.array([f"{name}/{split}/{i}" for i in range(n)], dtype=object),
        classes=tuple(map(str, classes)) if isinstance(classes, list | tuple) else (),
        fingerprint=fingerprint("torch-dataset/1", digest.hexdigest(), labels, str(crop)),
        source=f"python:{kind}",
        reader=DatasetReader(dataset, f"{name} ({kind})", (int(size[0]), int(size[1])), crop),
        rows=index.copy(),
        notes=tuple(notes),
    )


def is_map_dataset(value: Any) -> bool:
    """A map-style dataset (``len`` and indexing) that is not a name, an array or a container of sets."""
    return (
        hasattr(value, "__getitem__")
        and hasattr(value, "__len__")
        and not isinstance(value, str | bytes | np.ndarray | list | tuple | dict)
    )


def python_imageset(value: Any, split: str, image_size: int, name: str | None = None) -> ImageSet:
    """An image set given in Python: an ImageSet as it is, a map-style Dataset wrapped (named after
    its class unless ``name`` is given)."""
    if isinstance(value, ImageSet):
        return value if name is None else replace(value, name=name)
    if not is_map_dataset(value):
        raise NormprobeError(
            f"expected a dataset name, folder, file, ImageSet or map-style Dataset of images, not {type(value).__name__}"
        )
    return from_torch_dataset(value, name or type(value).__name__.lower(), split, image_size)
