"""Per-epoch monitor: weighted kNN accuracy (k=200, T=0.1, on L2-normalised embeddings, as in the
paper's Appendix C.1) of every head on the test split, and the mean embedding norm of every head on
train and test. Embeddings come from :func:`normprobe.embed.extract_arrays`, the kNN from
:class:`normprobe.knn.KNNClassifier`, so training reports what ``normprobe analyze`` would."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from normprobe.data import ImageSet
from normprobe.data.readers import ArrayReader
from normprobe.embed import extract_arrays
from normprobe.knn import KNNClassifier
from normprobe.models import Encoder
from normprobe.preprocess import Preprocess


def in_memory(imageset: ImageSet, images: torch.Tensor, tag: str) -> ImageSet:
    """The same set served from an already decoded uint8 tensor (no JPEG decoding per epoch)."""
    return replace(imageset, reader=ArrayReader(images.cpu().numpy()), rows=np.arange(len(images), dtype=np.int64),
                   notes=(*imageset.notes, tag))


def pick_subset(n: int, size: int | None, seed: int) -> np.ndarray:
    """``size`` fixed random positions out of ``n`` (sorted), or all of them."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def evaluate(
    encoder: Encoder, preprocess: Preprocess, bank: ImageSet, test: ImageSet, *, k: int, temperature: float,
    batch_size: int, device: torch.device, precision: str, prefix: str = "", progress: bool = False,
) -> dict[str, float]:
    """``{knn_<head>, norm_train_<head>, norm_test_<head>}`` for every head of ``encoder``."""
    heads = encoder.heads
    kw = {"batch_size": batch_size, "device": device, "precision": precision, "progress": progress}
    train = extract_arrays(encoder, preprocess, bank, heads, **kw)
    queries = extract_arrays(encoder, preprocess, test, heads, **kw)
    metrics: dict[str, float] = {}
    for head in heads:
        clf = KNNClassifier(k=min(k, len(bank)), temperature=temperature).fit(train[head], bank.labels)
        metrics[f"{prefix}knn_{head}"] = float((clf.predict(queries[head]) == test.labels).mean())
        metrics[f"{prefix}norm_train_{head}"] = float(np.linalg.norm(train[head], axis=1).mean())
        metrics[f"{prefix}norm_test_{head}"] = float(np.linalg.norm(queries[head], axis=1).mean())
    return metrics
