"""Embedding norm summaries per split / OOD set and head (paper Figure 3).

"we ... compared the embedding norms across different data splits, normalizing all embedding
norms by the Cifar-10 train set mean. The results reveal a clear pattern: embedding norms decrease
progressively with increasing distributional distance from the training data." (Section 5)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from normprobe.errors import NormprobeError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

SUMMARY_COLUMNS = (
    "dataset",
    "split",
    "role",
    "head",
    "n",
    "mean",
    "std",
    "min",
    "q05",
    "q25",
    "median",
    "q75",
    "q95",
    "max",
    "mean_scaled",
    "median_scaled",
)


def embedding_norms(embeddings: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Euclidean norm of each raw (un-normalised) embedding row, computed in ``dtype`` (float64).

    Row block by row block (about 16 MiB each), so a memory-mapped array is read once and never
    copied whole; each row's norm is the one a single call over the whole array gives.
    """
    embeddings = np.asarray(embeddings)
    out: np.ndarray = np.empty(len(embeddings), dtype=dtype)
    rows = max(1, (16 << 20) // (np.dtype(dtype).itemsize * max(1, int(np.prod(embeddings.shape[1:])))))
    for r0 in range(0, len(embeddings), rows):
        block: np.ndarray = np.asarray(embeddings[r0 : r0 + rows], dtype=dtype)
        out[r0 : r0 + rows] = np.linalg.norm(block.reshape(len(block), -1), axis=1)
    return out


def norm_summary(samples: pd.DataFrame, heads: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """One row per (dataset, split, role) group and head: count, mean, spread, quantiles.

    ``samples`` holds one row per sample with ``dataset``, ``split``, ``role`` and ``norm_<head>``
    columns. ``*_scaled`` columns divide by the mean norm of the ``id-train`` rows of the same head,
    so ID-train reads 1 and a smaller value means "further from what the encoder was trained on".
    """
    train = samples["role"] == "id-train"
    if not train.any():
        raise NormprobeError("the norm summary needs id-train rows to normalise by")
    rows = []
    order = samples[["dataset", "split", "role"]].drop_duplicates()
    for head in heads:
        column = f"norm_{head}"
        train_mean = float(samples.loc[train, column].mean())
        for dataset, split, role in order.itertuples(index=False):
            values = samples.loc[
                (samples["dataset"] == dataset) & (samples["split"] == split), column
            ].to_numpy(np.float64)
            q05, q25, median, q75, q95 = np.quantile(values, QUANTILES)
            rows.append(
                {
                    "dataset": dataset,
                    "split": split,
                    "role": role,
                    "head": head,
                    "n": len(values),
                    "mean": values.mean(),
                    "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                    "min": values.min(),
                    "q05": q05,
                    "q25": q25,
                    "median": median,
                    "q75": q75,
                    "q95": q95,
                    "max": values.max(),
                    "mean_scaled": values.mean() / train_mean,
                    "median_scaled": median / train_mean,
                }
            )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
