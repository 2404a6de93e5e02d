"""Shared by the `normprobe analyze` tests: a tiny checkpoint and one small real-data analysis.

The analysis runs once per test session (memoised on disk under pytest's base temp folder), on
small first-N subsets of the real mirrors: ID = CIFAR-10, OOD = the CIFAR-100 images that exist
and MNIST.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
SMALL = [
    "--max-train",
    "160",
    "--max-per-split",
    "60",
    "--k",
    "10",
    "--ood-k",
    "5",
    "--min-bucket-count",
    "3",
]


def tiny_checkpoint(path: Path, *, nan: bool = False, hidden: int = 128) -> Path:
    """A randomly initialised ResNet-18 of width 8 with a SimCLR projector (heads feats, z; a
    hidden layer of ``hidden`` units)."""
    from normprobe.checkpoints import save_checkpoint
    from normprobe.models import build_encoder
    from normprobe.models.heads import simclr_projector
    from normprobe.preprocess import Preprocess

    torch.manual_seed(0)
    spec = {
        "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
        "projector": simclr_projector(64, hidden, 32),
    }
    state = build_encoder(spec).state_dict()
    if nan:
        state["backbone.conv1.weight"] = torch.full_like(state["backbone.conv1.weight"], float("nan"))
    save_checkpoint(path, method="simclr", encoder_spec=spec, preprocess=Preprocess(), state_dict=state)
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``normprobe`` in-process; returns (exit status, stdout, stderr)."""
    from normprobe.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def cli_fails(*argv: str) -> str:
    """Run ``normprobe`` in-process, expecting exit status 2 and one error line; returns that line."""
    status, stdout, stderr = cli(*argv)
    assert status == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normprobe: error: "), stderr
    return lines[0]


def analyze_args(
    checkpoint: Path, out: Path, cache: Path, *extra: str, sizes: Sequence[str] = SMALL
) -> list[str]:
    """`normprobe analyze` of ``checkpoint`` with OOD CIFAR-100 and MNIST; ``sizes``: the subset sizes
    and analysis settings (:data:`SMALL`, or :data:`SUBSET_SIZES` for the sets of :func:`image_subsets`)."""
    return [
        "analyze",
        str(checkpoint),
        "--ood",
        "cifar100",
        "--ood",
        "mnist",
        "--data-root",
        str(DATA_ROOT),
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        *sizes,
        *extra,
    ]


def shared_analysis(base: Path) -> tuple[Path, Path, Path, str]:
    """(checkpoint, results folder, cache folder, stdout) of the session's one small analysis."""
    folder = base / "normprobe-analyze-shared"
    checkpoint, out, cache = folder / "tiny.pt", folder / "results", folder / "cache"
    stdout_file = folder / "stdout.txt"
    if not stdout_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tiny_checkpoint(checkpoint)
        status, stdout, stderr = cli(*analyze_args(checkpoint, out, cache, "--quiet"))
        assert status == 0, stderr
        stdout_file.write_text(stdout)
    return checkpoint, out, cache, stdout_file.read_text()


IMAGE_SUBSETS = {
    "c10train": ("cifar10", "train", 600),
    "c10test": ("cifar10", "test", 200),
    "c100": ("cifar100", "test", 200),
    "mnist": ("mnist", "test", 200),
}
"""Image .npz files of the first N images of real splits: the sets of an analysis with
``--max-train 600 --max-per-split 200``, as files `normprobe embed` reads."""
SUBSET_SIZES = [
    "--max-train",
    str(IMAGE_SUBSETS["c10train"][2]),
    "--max-per-split",
    str(IMAGE_SUBSETS["c10test"][2]),
]
"""The options that analyse the first N images of each split, as :data:`IMAGE_SUBSETS` holds them."""


def image_subsets(folder: Path) -> dict[str, Path]:
    """Write :data:`IMAGE_SUBSETS` as ``<name>_images.npz`` (decoded images and labels) into ``folder``."""
    import numpy as np

    from normprobe import data

    paths = {}
    for name, (dataset, split, n) in IMAGE_SUBSETS.items():
        images = data.load(dataset, split, DATA_ROOT)
        paths[name] = folder / f"{name}_images.npz"
        np.savez(paths[name], images=images.images(np.arange(n)).numpy(), labels=images.labels[:n])
    return paths
