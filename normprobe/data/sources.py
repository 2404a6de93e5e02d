"""Where an ImageSet's bytes come from: local mirror files, torchvision's on-disk formats, folders."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from normprobe.data.convert import decode_image_bytes
from normprobe.data.hashing import file_sha256, fingerprint
from normprobe.data.imageset import ImageSet
from normprobe.data.manifest import Manifest
from normprobe.data.readers import ArrayReader, EncodedReader, FileReader
from normprobe.errors import NormprobeError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """Open an .npz without pickle support (a data file is untrusted input)."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile, ValueError, OSError: all mean "not a readable npz"
        raise NormprobeError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every array in an .npz, read from the array headers only (nothing is decompressed beyond them)."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shapes[member[: -len(".npy")]] = tuple(header(fh)[0])
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise NormprobeError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err
    return shapes


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
    npz: np.lib.npyio.NpzFile,
    path: Path,
    images_key: str,
    labels_key: str | None,
    image_size: tuple[int, int] | None,
) -> tuple[ArrayReader | EncodedReader, np.ndarray]:
    """A reader and labels from an .npz of decoded arrays or of encoded bytes (``jpeg`` + ``offsets``)."""
    if "jpeg" in npz.files and "offsets" in npz.files:
        data, offsets = npz["jpeg"], npz["offsets"]
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[-1] != len(data):
            raise NormprobeError(f"{path}: 'offsets' does not describe the 'jpeg' byte array")
        size = image_size or decode_image_bytes(data[offsets[0] : offsets[1]].tobytes()).shape[:2]
        reader: ArrayReader | EncodedReader = EncodedReader(data, offsets, (int(size[0]), int(size[1])))
    elif images_key in npz.files:
        images = npz[images_key]
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[-1] not in (1, 3))
        ):
            raise NormprobeError(
                f"{path}: '{images_key}' must be uint8 N×H×W, N×H×W×1 or N×H×W×3, got {images.dtype} {images.shape}"
            )
        reader = ArrayReader(images)
    else:
        raise NormprobeError(
            f"{path}: no '{images_key}' array and no 'jpeg' + 'offsets' arrays (has: {', '.join(npz.files)})"
        )
    n = len(reader)
    labels = npz[labels_key] if labels_key and labels_key in npz.files else np.full(n, -1, np.int64)
    if len(labels) != n:
        raise NormprobeError(f"{path}: {n} images but {len(labels)} labels")
    return reader, labels


def from_mirror(manifest: Manifest, split: str, root: Path, classes: tuple[str, ...]) -> ImageSet | None:
    """The split from its local mirror file in ``root``, or None when the file is not there."""
    spec = manifest.mirror.get(split)
    if spec is None:
        return None
    path = root / spec["file"]
    if not path.is_file():
        return None
    npz = open_npz(path)
    reader, labels = read_npz_images(
        npz,
        path,
        spec.get("images_key", "images"),
        spec.get("labels_key", "labels"),
        tuple(manifest.raw["image_size"]),
    )
    # A partial copy of a mirror file (e.g. the bundled sample) records original positions in `index`.
    index_key = spec.get("index_key", "index")
    index = npz[index_key] if index_key in npz.files else np.arange(len(reader))
    expected = manifest.splits[split]["size"]
    notes: tuple[str, ...] = ()
    if len(reader) < expected:
        notes = (
            f"partial mirror: {len(reader)} of {expected} {manifest.name} {split} images exist locally "
            f"(original indices {int(index.min())}..{int(index.max())}); only those are used",
        )
    if manifest.raw.get("channels") == 1:
        notes = (*notes, "greyscale images converted to RGB by repeating the channel")
    return _make_set(
        manifest.name, split, reader, labels, index, classes, f"mirror:{path.name}", file_sha256(path), notes
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
            # Pillow names the in-memory buffer ("<_io.BytesIO object at 0x...>"); drop it so reasons are stable.
            reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))
            skipped.append((str(file.relative_to(path)), f"{type(err).__name__}: {reason}"))
        else:
            good.append(file)
    if not good:
        raise NormprobeError(f"{path}: none of the {len(files)} image files could be read")
    labelled = bool(class_dirs) and all(p.parent != path for p in good)
    classes = tuple(class_dirs) if labelled else ()
    labels = np.array(
        [class_dirs.index(p.relative_to(path).parts[0]) for p in good] if labelled else [-1] * len(good)
    )
    rel = np.array([str(p.relative_to(path)) for p in good], dtype=object)
    content = fingerprint(*(p.read_bytes() for p in good), str(image_size))
    notes = (f"images resized (shorter side) and centre-cropped to {image_size}x{image_size}",)
    if skipped:
        notes = (*notes, f"{len(skipped)} unreadable file(s) skipped")
    return _make_set(
        name or path.name,
        "folder",
        FileReader(good, image_size),
        labels,
        np.arange(len(good)),
        classes,
        f"folder:{path}",
        content,
        notes,
        ids=rel,
        skipped=tuple(skipped),
    )


def from_npz_file(path: Path, name: str | None = None) -> ImageSet:
    """A user's .npz: ``images`` (N×H×W[×C] uint8) or ``jpeg`` + ``offsets``, optional ``labels``."""
    npz = open_npz(path)
    reader, labels = read_npz_images(npz, path, "images", "labels", None)
    classes = tuple(str(c) for c in npz["classes"]) if "classes" in npz.files else ()
    return _make_set(
        name or path.stem,
        "all",
        reader,
        labels,
        np.arange(len(reader)),
        classes,
        f"npz:{path}",
        file_sha256(path),
    )
