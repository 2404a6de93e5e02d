"""Human label sets (CIFAR-10N, CIFAR-100N, CIFAR-10H) aligned with the images they describe."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from normprobe.data.integrity import verified_sha256
from normprobe.data.manifest import load_manifest
from normprobe.data.root import resolve_data_root
from normprobe.data.sources import open_npz
from normprobe.errors import NormprobeError


def load_labels(name: str, data_root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Every field of a label set, each indexed by the original position in its image split."""
    manifest = load_manifest(name)
    if manifest.kind != "labels":
        raise NormprobeError(f"{name!r} is an image dataset, not a label set")
    path = resolve_data_root(data_root) / manifest.mirror["file"]
    if not path.is_file():
        raise NormprobeError(
            f"label file for {name} not found: {path} (download {manifest.upstream.get('url', 'it')} "
            f"or point --data-root / NORMPROBE_DATA at a folder holding {manifest.mirror['file']})"
        )
    verified_sha256(path, manifest.mirror["sha256"], name)
    npz = open_npz(path)
    fields = {key: npz[key] for key in npz.files}
    size = int(manifest.raw["size"])
    for key, value in fields.items():
        if len(value) != size:
            raise NormprobeError(f"{path}: field {key!r} has {len(value)} rows, expected {size}")
    return fields
