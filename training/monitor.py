"""Per-epoch monitor: weighted kNN accuracy (k=200, T=0.1, on L2-normalised embeddings, as in the
paper's Appendix C.1) of every head on the test split, and the mean embedding norm of every head on
train and test. Embeddings come from :func:`normprobe.extraction.extract_arrays`, the numbers from
:func:`normprobe.analyses.accuracy.knn_accuracy_and_norms` (as the zoo cards report them)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from normprobe.analyses.accuracy import knn_accuracy_and_norms
from normprobe.data import ImageSet
from normprobe.data.readers import ArrayReader
from normprobe.extraction import extract_arrays
from normprobe.models import Encoder
from normprobe.preprocess import Preprocess


def in_memory(imageset: ImageSet, images: torch.Tensor, tag: str) -> ImageSet:
    """The same set served from an already decoded uint8 tensor (no JPEG decoding per epoch)."""
    return replace(
        imageset,
        reader=ArrayReader(images.cpu().numpy()),
        rows=np.arange(len(images), dtype=np.int64),
        notes=(*imageset.notes, tag),
    )


def pick_subset(n: int, size: int | None, seed: int) -> np.ndarray:
    """``size`` fixed random positions out of ``n`` (sorted), or all of them."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def evaluate(
    encoder: Encoder,
    preprocess: Preprocess,
    bank: ImageSet,
    test: ImageSet,
    *,
    k: int,
    temperature: float,
    batch_size: int,
    device: torch.device,
    precision: str,
    prefix: str = "",
    progress: bool = False,
) -> dict[str, float]:
    """``{knn_<head>, norm_train_<head>, norm_test_<head>}`` for every head of ``encoder``."""
    train, queries = (
        extract_arrays(
            encoder,
            preprocess,
            imageset,
            encoder.heads,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=progress,
        )
        for imageset in (bank, test)
    )
    summary = knn_accuracy_and_norms(
        train, bank.labels, queries, test.labels, k=min(k, len(bank)), temperature=temperature
    )
    return {
        f"{prefix}{stat}_{head}": value for head, stats in summary.items() for stat, value in stats.items()
    }
