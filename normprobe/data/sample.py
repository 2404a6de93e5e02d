"""The real image sample shipped inside the package, so `normprobe demo` runs offline on a fresh install.

The sample is a small *partial data root*: the same file names and array layouts as the full
mirror (``cifar10_train_jpeg.npz``, ``cifar10_test_jpeg.npz``, ``cifar100_exact_subset.npz``,
``tinyimagenet_val_jpeg.npz``, ``mnist_test.npz`` and the human label files), holding only the
first images of each split plus an ``index`` array with their original positions. The JPEG bytes
are the mirror's original files, not re-encoded. ``SHA256SUMS`` holds the files' own checksums
(partial copies cannot match the manifests'). Rebuild it from a full data root with
``python -m normprobe.data.sample --from DATA_ROOT``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from normprobe.data.hashing import file_sha256
from normprobe.data.npz import NpzArchive
from normprobe.data.root import SAMPLE_ROOT, SAMPLE_SUMS
from normprobe.data.sources import open_npz

# (file, images kept): ID train/test for the kNN bank and the test queries; three OOD sets.
SAMPLE_SIZES: dict[str, int] = {
    "cifar10_train_jpeg.npz": 2500,
    "cifar10_test_jpeg.npz": 1000,
    "cifar100_exact_subset.npz": 500,
    "tinyimagenet_val_jpeg.npz": 500,
    "mnist_test.npz": 500,
}
COPIED_WHOLE = ("cifar10n_labels.npz", "cifar10h.npz", "cifar100_labels.npz")
LICENSES = ("CIFAR-N_LICENSE.md", "CIFAR-10H_LICENSE.txt")


def _take_encoded(npz: NpzArchive, n: int) -> dict[str, np.ndarray]:
    offsets = npz["offsets"]
    out = {"jpeg": npz["jpeg"][: offsets[n]], "offsets": offsets[: n + 1], "index": np.arange(n)}
    for key in npz.files:
        if key not in ("jpeg", "offsets") and len(npz[key]) == len(offsets) - 1:
            out[key] = npz[key][:n]
        elif key not in ("jpeg", "offsets"):
            out[key] = npz[key]
    return out


def _take_arrays(npz: NpzArchive, n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in npz.files:
        value = npz[key]
        # cifar100_exact_subset: keep the test split only (test_*), names as they are.
        if key.startswith("train_"):
            continue
        out[key] = value[:n] if key.startswith("test_") or key in ("images", "labels") else value
    if "images" in out:
        out["index"] = np.arange(len(out["images"]))
    return out


def build_sample(source_root: Path, dest: Path = SAMPLE_ROOT) -> list[Path]:
    """Write the sample files from a full data root into ``dest``; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, n in SAMPLE_SIZES.items():
        npz = open_npz(source_root / name)
        arrays = _take_encoded(npz, n) if "jpeg" in npz.files else _take_arrays(npz, n)
        # numpy's stubs let **arrays fill the allow_pickle flag; the names here are array keys.
        np.savez_compressed(dest / name, **arrays)  # type: ignore[arg-type]
        written.append(dest / name)
    for name in COPIED_WHOLE:
        shutil.copyfile(source_root / name, dest / name)
        written.append(dest / name)
    mirrors = [*SAMPLE_SIZES, *COPIED_WHOLE]
    sums = "".join(f"{file_sha256(dest / name)}  {name}\n" for name in mirrors)
    (dest / SAMPLE_SUMS).write_text(sums)
    written.append(dest / SAMPLE_SUMS)
    for name in LICENSES:
        shutil.copyfile(source_root / "licenses" / name, dest / name)
        written.append(dest / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, help="a full data root (e.g. ../shared/data)"
    )
    parser.add_argument("--to", dest="dest", type=Path, default=SAMPLE_ROOT)
    args = parser.parse_args()
    for path in build_sample(args.source, args.dest):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
