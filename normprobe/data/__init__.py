"""Datasets from declarative manifests (``data_manifests/*.yaml``).

    from normprobe import data
    test = data.load("cifar10", "test")           # ImageSet, images decoded on demand
    x = test.images(slice(0, 256))                 # uint8 256×32×32×3 tensor

Sources, in order: the local mirror files named by the manifest in the data root; torchvision's
on-disk format in the data root; a torchvision download when ``download=True``. The data root is
``data_root``, else ``$NORMPROBE_DATA``, else ``~/.cache/normprobe/data``.
"""

from __future__ import annotations

from pathlib import Path

from normprobe.data.imageset import ImageSet
from normprobe.data.integrity import verified_sha256
from normprobe.data.labels import load_labels
from normprobe.data.manifest import Manifest, load_manifest, manifest_names
from normprobe.data.root import resolve_data_root
from normprobe.data.sources import from_folder, from_mirror, from_npz_file, from_torchvision, open_npz
from normprobe.data.subsets import imbalanced_indices
from normprobe.errors import NormprobeError

__all__ = [
    "ImageSet",
    "Manifest",
    "load",
    "load_any",
    "load_labels",
    "load_manifest",
    "manifest_names",
    "resolve_data_root",
    "imbalanced_indices",
    "from_folder",
    "default_split",
]


def _classes(manifest: Manifest, root: Path) -> tuple[str, ...]:
    if "classes" in manifest.raw:
        return tuple(manifest.raw["classes"])
    spec = manifest.raw.get("classes_from")
    if spec and (root / spec["file"]).is_file():
        path = root / spec["file"]
        verified_sha256(path, manifest.mirror_files()[spec["file"]], manifest.name)
        return tuple(str(c) for c in open_npz(path)[spec["key"]])
    return ()


def default_split(name: str, role: str) -> str:
    """The split to use when none is given: train/test for the ID roles, else the first split."""
    splits = list(load_manifest(name).splits)
    if role in splits:
        return role
    return "test" if "test" in splits else splits[0]


def load(name: str, split: str, data_root: str | Path | None = None, download: bool = False) -> ImageSet:
    """One split of a manifest dataset as an :class:`ImageSet` (original order)."""
    manifest = load_manifest(name)
    if manifest.kind != "images":
        raise NormprobeError(f"{name!r} is a label set, not an image dataset")
    if split not in manifest.splits:
        raise NormprobeError(f"{name} has no split {split!r} (splits: {', '.join(manifest.splits)})")
    root = resolve_data_root(data_root)
    classes = _classes(manifest, root)
    imageset = from_mirror(manifest, split, root, classes) or from_torchvision(
        manifest, split, root, classes, download
    )
    if imageset is None:
        wanted = manifest.mirror.get(split, {}).get("file")
        hint = f"{wanted} or " if wanted else ""
        raise NormprobeError(
            f"{name} {split} not found in data root {root}: put {hint}torchvision's "
            f"{manifest.upstream.get('folder', name)}/ there, set --data-root / NORMPROBE_DATA, or allow a download"
        )
    if len(imageset) == 0:
        raise NormprobeError(f"{name} {split} is empty in {imageset.source}")
    return imageset


def load_any(
    spec: str, split: str | None, data_root: str | Path | None = None, image_size: int = 32
) -> ImageSet:
    """A manifest name (``cifar10`` or ``cifar10:test``), an image folder, or an .npz file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return from_folder(path, image_size)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise NormprobeError(f"{path}: no such file")
        return from_npz_file(path)
    name, _, named_split = spec.partition(":")
    if name not in manifest_names():
        raise NormprobeError(
            f"{spec!r} is neither a folder, an .npz file nor a known dataset ({', '.join(manifest_names('images'))})"
        )
    return load(name, named_split or split or default_split(name, "test"), data_root)


def verify(data_root: str | Path | None = None) -> list[tuple[str, str, str]]:
    """(file, status, detail) for every mirror file the manifests name: ok, missing or MISMATCH."""
    from normprobe.data.hashing import file_sha256
    from normprobe.data.integrity import expected_sha256

    root = resolve_data_root(data_root)
    seen: dict[str, str] = {}
    for name in manifest_names():
        seen.update(load_manifest(name).mirror_files())
    rows = []
    for file, expected in sorted(seen.items()):
        path = root / file
        if not path.is_file():
            rows.append((file, "missing", str(path)))
            continue
        actual = file_sha256(path)
        expected = expected_sha256(path, expected)
        rows.append(
            (
                file,
                "ok" if actual == expected else "MISMATCH",
                actual if actual != expected else expected[:16],
            )
        )
    return rows
