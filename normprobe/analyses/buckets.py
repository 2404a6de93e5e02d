"""Norm buckets: the mean of any per-sample signal within ranges of the (scaled) embedding norm.

The paper (Section 5, Figure 4 left): "We then normalize the embedding magnitudes by the maximum
across the dataset and bucket the embeddings into ranges of [0.05 i, 0.05 (i+1)], giving us 20
embedding buckets over the dataset", then plots the kNN accuracy per bucket. The same function
serves the human-label curves (consensus-label accuracy, label entropy): any signal works.

Scalings (``scaling=``):

* ``max`` (the paper's): ``s = v / max(v)``; buckets of width ``1 / n_buckets`` over [0, 1].
* ``minmax``: ``s = (v - min) / (max - min)``: the same, but the buckets span the observed range.
* ``quantile``: ``s`` = the empirical CDF of ``v``: equal-count buckets.

The scale is fitted on ``reference`` (default: the values themselves), so curves of several sets
can share one scale. Buckets with fewer than ``min_count`` samples are kept in the table but marked
``shown = False``; plots hide them, because a mean over a handful of samples is noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from normprobe.errors import NormprobeError

SCALINGS = ("max", "minmax", "quantile")

SELF_VOTE_NOTE = (
    "ID-train points are classified by leave-one-out: each point's neighbours are the other training points. "
    "The paper's notebook fitted the kNN classifier on the same points it scored, so each training point voted "
    "for itself with similarity 1 (weight exp(1/T)), inflating train accuracy most where neighbours disagree; "
    "normprobe does not repeat that bias."
)

CURVE_COLUMNS = (
    "bucket",
    "lower",
    "upper",
    "center",
    "norm_lower",
    "norm_upper",
    "count",
    "mean",
    "sem",
    "shown",
)
"""Columns of every bucket curve: bucket number, edges on the scaled axis, edges in the values'
own units, the sample count, the signal's mean and standard error, and whether it is plotted."""


def scale_values(values: np.ndarray, scaling: str = "max", reference: np.ndarray | None = None) -> np.ndarray:
    """``values`` mapped onto [0, 1] (up to values outside ``reference``'s range) by ``scaling``."""
    values = np.asarray(values, dtype=np.float64)
    ref = values if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.size == 0:
        raise NormprobeError("cannot scale norms: the reference set is empty")
    if not np.isfinite(ref).all() or not np.isfinite(values).all():
        raise NormprobeError("cannot bucket NaN or infinite values")
    if scaling == "max":
        top = ref.max()
        if top <= 0:
            raise NormprobeError("max scaling needs a positive maximum (norms are all zero)")
        return values / top
    if scaling == "minmax":
        low, high = ref.min(), ref.max()
        if high == low:
            return np.zeros_like(values)
        return (values - low) / (high - low)
    if scaling == "quantile":
        ordered = np.sort(ref)
        # mid-rank empirical CDF: ties share one value, and the result is a proper fraction
        below = np.searchsorted(ordered, values, side="left")
        at_or_below = np.searchsorted(ordered, values, side="right")
        return (below + at_or_below) / (2.0 * len(ordered))
    raise NormprobeError(f"unknown bucket scaling {scaling!r} (choose from {', '.join(SCALINGS)})")


def bucket_index(scaled: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ``i`` holds ``scaled`` in ``[i / n, (i + 1) / n)``; the top edge 1.0 joins the last bucket.

    Values below 0 or above 1 (possible when the scale came from another set) go to the end buckets.
    """
    if n_buckets < 1:
        raise NormprobeError(f"the number of buckets must be >= 1, got {n_buckets}")
    return np.clip(np.floor(np.asarray(scaled) * n_buckets), 0, n_buckets - 1).astype(np.int64)


def _edges_in_units(n_buckets: int, scaling: str, ref: np.ndarray) -> np.ndarray:
    """The bucket edges 0, 1/n, ..., 1 expressed in the values' own units."""
    fractions = np.linspace(0.0, 1.0, n_buckets + 1)
    if scaling == "max":
        return fractions * ref.max()
    if scaling == "minmax":
        return ref.min() + fractions * (ref.max() - ref.min())
    return np.quantile(ref, fractions)


def bucket_curve(
    values: np.ndarray,
    signal: np.ndarray,
    *,
    n_buckets: int = 20,
    scaling: str = "max",
    min_count: int = 10,
    reference: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-bucket count and mean (with standard error) of ``signal`` over buckets of ``values``.

    ``signal`` may be boolean (then ``mean`` is an accuracy) or real; NaN entries of ``signal``
    (unknown) are left out of both the count and the mean. Returns one row per bucket, all
    ``n_buckets`` of them (empty ones with ``count = 0``), columns :data:`CURVE_COLUMNS`.
    """
    values = np.asarray(values, dtype=np.float64)
    signal = np.asarray(signal, dtype=np.float64)
    if values.shape != signal.shape or values.ndim != 1:
        raise NormprobeError(
            f"values and signal must be 1-D and equally long, got {values.shape} and {signal.shape}"
        )
    if min_count < 0:
        raise NormprobeError(f"the minimum bucket count must be >= 0, got {min_count}")
    ref = values if reference is None else np.asarray(reference, dtype=np.float64)
    buckets = bucket_index(scale_values(values, scaling, ref), n_buckets)
    known = np.isfinite(signal)
    buckets, signal = buckets[known], signal[known]
    count = np.bincount(buckets, minlength=n_buckets)
    total = np.bincount(buckets, weights=signal, minlength=n_buckets)
    total_sq = np.bincount(buckets, weights=signal**2, minlength=n_buckets)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        variance = np.maximum(total_sq / count - mean**2, 0.0)
        # sample standard deviation / sqrt(n); undefined for a single sample
        sem = np.sqrt(variance * count / np.maximum(count - 1, 1) / count)
    sem[count < 2] = np.nan
    edges = np.linspace(0.0, 1.0, n_buckets + 1)
    unit_edges = _edges_in_units(n_buckets, scaling, ref)
    return pd.DataFrame(
        {
            "bucket": np.arange(n_buckets),
            "lower": edges[:-1],
            "upper": edges[1:],
            "center": (edges[:-1] + edges[1:]) / 2,
            "norm_lower": unit_edges[:-1],
            "norm_upper": unit_edges[1:],
            "count": count.astype(np.int64),
            "mean": mean,
            "sem": sem,
            "shown": count >= max(min_count, 1),
        },
        columns=list(CURVE_COLUMNS),
    )
