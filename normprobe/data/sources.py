"""Where an ImageSet's bytes come from: local mirror files, torchvision's on-disk formats, folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from normprobe.data.convert import decode_error, decode_image_bytes
from normprobe.data.hashing import file_sha256, fingerprint
from normprobe.data.imageset import ImageSet
from normprobe.data.integrity import verified_sha256
from normprobe.data.manifest import Manifest
from normprobe.data.npz import NpzArchive
from normprobe.data.readers import ArrayReader, EncodedReader, FileReader
from normprobe.errors import NormprobeError
from normprobe.terminal import printable

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def open_npz(path: Path) -> NpzArchive:
    """Open an .npz as untrusted input: members and array headers checked, nothing unpickled (see :mod:`normprobe.data.npz`)."""
    return NpzArchive(path)


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every array in an .npz, read from the array headers only (nothing is decompressed beyond them)."""
    npz = open_npz(path)
    return {key: npz.shape(key) for key in npz.files}


def as_text(name: str) -> str:
    """A file name or path as valid Unicode: bytes that are not UTF-8 (which Python keeps as lone
    surrogates, and Parquet, CSV, HTML and ``print`` refuse) become ``\\xNN`` escapes.

    Sample ids keep every other character, so a user can find the file; dataset and class names,
    which progress bars and log lines show, go through :func:`normprobe.terminal.printable` instead.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _ids(name: str, split: str, index: np.ndarray) -> np.ndarray:
    return np.array([f"{name}/{split}/{i}" for i in index.tolist()], dtype=object)


def _make_set(
    name: str,
    split: str,
    reader: ArrayReader | EncodedReader | FileReader,
    labels: np.ndarray,
    index: np.ndarray,
    classes: tuple[str, ...],
    source: str,
    content_hash: str,
    notes: tuple[str, ...] = (),
    ids: np.ndarray | None = None,
    skipped: tuple[tuple[str, str], ...] = (),
) -> ImageSet:
    return ImageSet(
        name=name,
        split=split,
        labels=labels.astype(np.int64),
        index=index.astype(np.int64),
        ids=_ids(name, split, index) if ids is None else ids,
        classes=classes,
        fingerprint=fingerprint(name, split, content_hash, index),
        source=source,
        reader=reader,
        rows=np.arange(len(reader), dtype=np.int64),
        notes=notes,
        skipped=skipped,
    )


def read_npz_images(
    npz: NpzArchive,
    path: Path,
    images_key: str,
    labels_key: str | None,
    image_size: tuple[int, int] | None,
    *,
    trusted: bool = False,
) -> tuple[ArrayReader | EncodedReader, np.ndarray]:
    """A reader and labels from an .npz of decoded arrays or of encoded bytes (``jpeg`` + ``offsets``).

    Only headers, offsets and labels are read here; images are inflated when rows are read.
    ``trusted``: a mirror file whose sha256 matched its manifest (see :class:`EncodedReader`).
    """
    if "jpeg" in npz and "offsets" in npz:
        data = npz.rows("jpeg")
        if data.ndim != 1 or data.dtype != np.uint8:
            raise NormprobeError(
                f"{path}: 'jpeg' must be a 1-D uint8 byte array, got {data.dtype} {data.shape}"
            )
        offsets = _offsets(npz, path, len(data))
        reader: ArrayReader | EncodedReader = EncodedReader(
            data, offsets, image_size, trusted=trusted, name=str(path)
        )
    elif images_key in npz:
        shape, dtype = npz.shape(images_key), npz.dtype(images_key)
        if (
            dtype != np.uint8
            or len(shape) not in (3, 4)
            or (len(shape) == 4 and shape[-1] not in (1, 3))
            or 0 in shape[1:]
        ):
            raise NormprobeError(
                f"{path}: '{images_key}' must be uint8 N×H×W, N×H×W×1 or N×H×W×3, got {dtype} {shape}"
            )
        reader = ArrayReader(npz.rows(images_key))
    else:
        raise NormprobeError(
            f"{path}: no '{images_key}' array and no 'jpeg' + 'offsets' arrays (has: {', '.join(npz.files)})"
        )
    return reader, _labels(npz, path, labels_key, len(reader))


def _offsets(npz: NpzArchive, path: Path, data_bytes: int) -> np.ndarray:
    """``offsets`` as int64 after checking they cut the ``jpeg`` bytes into non-empty, consecutive images."""
    shape, dtype = npz.shape("offsets"), npz.dtype("offsets")
    if len(shape) != 1 or shape[0] < 2 or dtype.kind not in "iu":
        raise NormprobeError(
            f"{path}: 'offsets' must be a 1-D integer array of N+1 byte positions, got {dtype} {shape}"
        )
    offsets = npz["offsets"]
    if offsets[0] < 0 or offsets[-1] != data_bytes or (np.diff(offsets.astype(np.int64)) <= 0).any():
        raise NormprobeError(
            f"{path}: 'offsets' does not describe the 'jpeg' byte array: they must start at 0 or more, "
            f"increase strictly and end at its length ({data_bytes})"
        )
    return offsets.astype(np.int64)


def _labels(npz: NpzArchive, path: Path, key: str | None, n: int) -> np.ndarray:
    """One int64 class index per image (-1 = unknown), after refusing anything else."""
    if key is None or key not in npz:
        return np.full(n, -1, np.int64)
    shape, dtype = npz.shape(key), npz.dtype(key)
    if len(shape) != 1 or dtype.kind not in "iuf":
        raise NormprobeError(
            f"{path}: '{key}' must be a 1-D array of integer class indices (class names go in 'classes'), "
            f"got {dtype} {shape}"
        )
    if shape[0] != n:
        raise NormprobeError(f"{path}: {n} images but {shape[0]} labels")
    labels = npz[key]
    if dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise NormprobeError(
            f"{path}: '{key}' holds NaN, infinite or fractional values; labels are class indices"
        )
    if n and (labels.min() < -1 or labels.max() >= 2**31):
        raise NormprobeError(f"{path}: '{key}' must hold class indices >= 0, or -1 for unknown")
    return labels.astype(np.int64)


def _class_names(npz: NpzArchive, path: Path, key: str) -> tuple[str, ...]:
    """Class names from a 1-D string (or numeric) array."""
    shape, dtype = npz.shape(key), npz.dtype(key)
    if len(shape) != 1 or dtype.kind not in "USiu":
        raise NormprobeError(f"{path}: '{key}' must be a 1-D array of class names, got {dtype} {shape}")
    return tuple(str(c) for c in npz[key])


def from_mirror(manifest: Manifest, split: str, root: Path, classes: tuple[str, ...]) -> ImageSet | None:
    """The split from its local mirror file in ``root``, or None when the file is not there."""
    spec = manifest.mirror.get(split)
    if spec is None:
        return None
    path = root / spec["file"]
    if not path.is_file():
        return None
    content = verified_sha256(path, spec["sha256"], manifest.name)
    npz = open_npz(path)
    reader, labels = read_npz_images(
        npz,
        path,
        spec.get("images_key", "images"),
        spec.get("labels_key", "labels"),
        tuple(manifest.raw["image_size"]),
        trusted=True,
    )
    # A partial copy of a mirror file (e.g. the bundled sample) records original positions in `index`.
    index_key = spec.get("index_key", "index")
    index = npz[index_key] if index_key in npz else np.arange(len(reader))
    if index.shape != (len(reader),) or index.dtype.kind not in "iu":
        raise NormprobeError(f"{path}: '{index_key}' must hold one integer position per image")
    expected = manifest.splits[split]["size"]
    notes: tuple[str, ...] = ()
    if 0 < len(reader) < expected:
        notes = (
            f"partial mirror: {len(reader)} of {expected} {manifest.name} {split} images exist locally "
            f"(original indices {int(index.min())}..{int(index.max())}); only those are used",
        )
    if manifest.raw.get("channels") == 1:
        notes = (*notes, "greyscale images converted to RGB by repeating the channel")
    return _make_set(
        manifest.name, split, reader, labels, index, classes, f"mirror:{path.name}", content, notes
    )


def from_torchvision(
    manifest: Manifest, split: str, root: Path, classes: tuple[str, ...], download: bool
) -> ImageSet | None:
    """The split through torchvision's dataset class, from its on-disk format (downloading only if allowed)."""
    upstream = manifest.upstream
    class_name = upstream.get("torchvision")
    if class_name is None or (not download and not (root / upstream["folder"]).exists()):
        return None
    import torchvision.datasets as tvd

    kwargs = {"train": split == "train"}
    try:
        dataset = getattr(tvd, class_name)(str(root), download=download, **kwargs)
    except (RuntimeError, OSError) as err:
        raise NormprobeError(
            f"{manifest.name} {split}: torchvision could not read {root / upstream['folder']}: {err}"
        ) from err
    images = np.asarray(dataset.data)
    labels = np.asarray(dataset.targets)
    content = fingerprint(images, labels)
    notes = ("greyscale images converted to RGB by repeating the channel",) if images.ndim == 3 else ()
    return _make_set(
        manifest.name,
        split,
        ArrayReader(images),
        labels,
        np.arange(len(images)),
        classes,
        f"torchvision:{class_name}",
        content,
        notes,
    )


def from_folder(path: Path, image_size: int, name: str | None = None) -> ImageSet:
    """Every image under ``path``: class sub-folders give labels, a flat folder gives label -1.

    Files Pillow cannot read are listed in ``skipped`` with the reason, not loaded.
    """
    if not path.is_dir():
        raise NormprobeError(f"{path}: not a folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise NormprobeError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    class_dirs = sorted({p.parent.relative_to(path).parts[0] for p in files if p.parent != path})
    good: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for file in files:
        try:
            decode_image_bytes(file.read_bytes(), image_size)
        except Exception as err:  # Pillow raises many types for bad files; each one means "unreadable"
            skipped.append((as_text(str(file.relative_to(path))), decode_error(err)))
        else:
            good.append(file)
    if not good:
        raise NormprobeError(f"{path}: none of the {len(files)} image files could be read")
    labelled = bool(class_dirs) and all(p.parent != path for p in good)
    classes = tuple(printable(c) for c in class_dirs) if labelled else ()
    labels = np.array(
        [class_dirs.index(p.relative_to(path).parts[0]) for p in good] if labelled else [-1] * len(good)
    )
    rel = np.array([as_text(str(p.relative_to(path))) for p in good], dtype=object)
    content = fingerprint(*(p.read_bytes() for p in good), str(image_size))
    notes: tuple[str, ...] = (
        f"images resized (shorter side) and centre-cropped to {image_size}x{image_size}",
    )
    if skipped:
        notes = (*notes, f"{len(skipped)} unreadable file(s) skipped")
    return _make_set(
        name or printable(path.name),
        "folder",
        FileReader(good, image_size),
        labels,
        np.arange(len(good)),
        classes,
        f"folder:{as_text(str(path))}",
        content,
        notes,
        ids=rel,
        skipped=tuple(skipped),
    )


def from_npz_file(path: Path, name: str | None = None) -> ImageSet:
    """A user's .npz: ``images`` (N×H×W[×C] uint8) or ``jpeg`` + ``offsets``, optional ``labels``."""
    npz = open_npz(path)
    reader, labels = read_npz_images(npz, path, "images", "labels", None)
    classes = _class_names(npz, path, "classes") if "classes" in npz else ()
    return _make_set(
        name or printable(path.stem),
        "all",
        reader,
        labels,
        np.arange(len(reader)),
        classes,
        f"npz:{as_text(str(path))}",
        file_sha256(path),
    )
