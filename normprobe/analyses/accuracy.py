"""Per-sample kNN correctness on the in-distribution splits: the signal of the norm-bucket curves.

The paper (Section 5): "Figure 4 (left) then shows the per-bucket accuracy of a NN classifier which
was fit on all the embeddings with respect to the cosine similarity metric." normprobe uses the
weighted cosine kNN classifier of :mod:`normprobe.knn` fitted on ID-train; ID-test points are
classified against ID-train, and ID-train points by leave-one-out, so that no point votes for
itself (see :data:`normprobe.analyses.buckets.SELF_VOTE_NOTE`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from normprobe.errors import NormprobeError
from normprobe.knn import CosineIndex, KNNClassifier


def knn_predictions(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.1,
    device: torch.device | None = None,
    index: CosineIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train predictions by leave-one-out, test predictions)`` of the weighted cosine kNN fitted on ``train``.

    The search runs on ``device`` (default: the CPU), where the training bank is placed, or through
    ``index``, an index of ``train`` shared with other searches (see ``CosineIndex(memoize=True)``).
    """
    n_train = len(train)
    if k > n_train - 1:
        raise NormprobeError(f"--k {k} needs more than {k} ID-train samples, there are {n_train}; lower --k")
    bank = torch.as_tensor(train, device=device)
    classifier = KNNClassifier(k=k, temperature=temperature).fit(bank, train_labels, index=index)
    return classifier.predict(None), classifier.predict(test)


def knn_accuracy_and_norms(
    train: Mapping[str, np.ndarray],
    train_labels: np.ndarray,
    test: Mapping[str, np.ndarray],
    test_labels: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.1,
) -> dict[str, dict[str, float]]:
    """Per head: ``{"knn": test accuracy against the train bank, "norm_train": mean norm, "norm_test": mean norm}``.

    The numbers the training monitor logs each epoch and a zoo card reports.
    """
    summary: dict[str, dict[str, float]] = {}
    for head, bank in train.items():
        classifier = KNNClassifier(k=k, temperature=temperature).fit(np.asarray(bank), train_labels)
        summary[head] = {
            "knn": float((classifier.predict(np.asarray(test[head])) == test_labels).mean()),
            "norm_train": float(np.linalg.norm(bank, axis=1).mean()),
            "norm_test": float(np.linalg.norm(test[head], axis=1).mean()),
        }
    return summary
