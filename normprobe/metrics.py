"""OOD-detection and ranking metrics, in numpy.

Convention (the one used everywhere in normprobe)
------------------------------------------------
Scores are **larger = more in-distribution (familiar)**: an embedding norm, a negative kNN
distance, a negative Mahalanobis distance. The metrics take the scores of the in-distribution
(ID) samples and of the out-of-distribution (OOD) samples as two arrays, and

* ``auroc``: the ID set is the positive class; AUROC = P(s_id > s_ood) + P(s_id = s_ood) / 2,
  so 1.0 is perfect separation, 0.5 chance (or all scores tied), 0.0 perfectly reversed;
* ``aupr_in``: average precision with ID positive (ranking by decreasing score);
* ``aupr_out``: average precision with OOD positive (ranking by decreasing *negated* score);
* ``fpr_at_tpr``: the fraction of OOD samples accepted at the threshold that accepts 95 % of
  the ID samples (accept = score >= threshold; the strictest threshold reaching that TPR);
* ``roc_curve``: the (FPR, TPR) points behind ``auroc``.

``spearman`` (rank correlation, e.g. norm vs kNN correctness), ``bootstrap_spearman`` (its seeded,
vectorised, tie-exact bootstrap: the one used for every Spearman interval in normprobe) and
``bootstrap_ci`` (seeded percentile intervals for the other metrics) complete the module.

Average precision is scikit-learn's ``average_precision_score``: sum over distinct thresholds of
(R_n - R_{n-1}) * P_n, tied scores forming one threshold. All functions are tie-correct and
vectorised (sorting, no Python loops over samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import sparse, special

from normprobe.errors import NormprobeError


def _scores(x: object, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise NormprobeError(f"{name}: expected a 1-D array of scores, got shape {a.shape}")
    if a.size == 0:
        raise NormprobeError(f"{name}: no scores")
    if not np.isfinite(a).all():
        raise NormprobeError(f"{name}: scores contain NaN or Inf")
    return a


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the mean of their ranks (scipy's 'average')."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # start index of each run of equal values, and the run each sorted element belongs to
    new_run = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [x.size]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(scores_id: object, scores_ood: object) -> float:
    """Area under the ROC curve, ID positive, via the Mann-Whitney U statistic on average ranks."""
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    ranks = average_ranks(np.concatenate([s_id, s_ood]))
    n_id, n_ood = s_id.size, s_ood.size
    u = ranks[:n_id].sum() - n_id * (n_id + 1) / 2.0
    return float(u / (n_id * n_ood))


def _threshold_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tp, fp)``: positives and negatives accepted (score >= t) at each distinct threshold t, highest first."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    # a threshold ends at the last element of each run of tied scores
    last = np.flatnonzero(np.concatenate([scores[1:] != scores[:-1], [True]]))
    tp = np.cumsum(is_pos)[last]
    return tp, last + 1 - tp


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """AP of ``pos`` (positives) against ``neg``, larger score = more positive."""
    tp, fp = _threshold_counts(pos, neg)
    precision = tp / (tp + fp)
    recall_step = np.diff(np.concatenate([[0.0], tp])) / pos.size
    return float(np.sum(recall_step * precision))


def aupr_in(scores_id: object, scores_ood: object) -> float:
    """Average precision with the ID samples as positives."""
    return _average_precision(_scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood"))


def aupr_out(scores_id: object, scores_ood: object) -> float:
    """Average precision with the OOD samples as positives (scores negated)."""
    return _average_precision(-_scores(scores_ood, "scores_ood"), -_scores(scores_id, "scores_id"))


def fpr_at_tpr(scores_id: object, scores_ood: object, tpr: float = 0.95) -> float:
    """FPR of OOD samples at the threshold where a fraction ``tpr`` of ID samples is accepted.

    The threshold is the ``ceil(tpr * n_id)``-th largest ID score: the largest threshold whose
    TPR (``mean(s_id >= t)``) reaches ``tpr``; the result is ``mean(s_ood >= t)``.
    """
    if not 0.0 < tpr <= 1.0:
        raise NormprobeError(f"tpr must be in (0, 1], got {tpr}")
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    # the small slack keeps e.g. 0.95 * 20 = 19.000000000000004 from rounding up to 20
    m = max(1, math.ceil(tpr * s_id.size - 1e-9))
    threshold = np.partition(s_id, s_id.size - m)[s_id.size - m]
    return float(np.mean(s_ood >= threshold))


class SpearmanResult(NamedTuple):
    rho: float
    """Spearman's rank correlation (NaN if either input is constant)."""
    p_value: float
    """Two-sided p-value of rho = 0 from the t approximation with n - 2 degrees of freedom
    (as ``scipy.stats.spearmanr``)."""
    ci_low: float
    """Percentile bootstrap interval (paired resamples; NaN when ``n_boot=0``)."""
    ci_high: float


def _spearman_rho(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else math.nan


def spearman(
    x: object, y: object, *, n_boot: int = 0, confidence: float = 0.95, seed: int = 0
) -> SpearmanResult:
    """Spearman rank correlation: the Pearson correlation of the average ranks (ties handled).

    With ``n_boot > 0`` also a seeded percentile interval over ``n_boot`` paired resamples of the
    rows, from :func:`bootstrap_spearman` (resamples on which rho is undefined are dropped).
    """
    a, b = _scores(x, "x"), _scores(y, "y")
    if a.size != b.size:
        raise NormprobeError(f"spearman: x and y differ in length ({a.size} vs {b.size})")
    rho = _spearman_rho(a, b)
    dof = a.size - 2
    if math.isnan(rho) or dof < 1:
        p_value = math.nan
    elif abs(rho) >= 1.0:
        p_value = 0.0
    else:
        t = rho * math.sqrt(dof / ((1.0 - rho) * (1.0 + rho)))
        p_value = float(2.0 * special.stdtr(dof, -abs(t)))
    if not 0.0 < confidence < 1.0:
        raise NormprobeError(f"confidence must be in (0, 1), got {confidence}")
    low = high = math.nan
    if n_boot > 0 and not math.isnan(rho):
        boots = bootstrap_spearman(a, [b], n_boot=n_boot, seed=seed)[0]
        if np.isfinite(boots).any():  # resamples where x or y is constant give NaN and are dropped
            alpha = (1.0 - confidence) / 2.0
            low, high = (float(v) for v in np.nanquantile(boots, [alpha, 1.0 - alpha]))
    return SpearmanResult(rho, p_value, low, high)


class _TieGroups:
    """Groups of equal values of one variable, for ranking weighted resamples without materialising them.

    An item in a group of tied values with total weight ``W``, preceded by ``B`` weighted items, has
    average rank ``B + (W + 1) / 2``: what ranking the materialised resample would give.
    """

    def __init__(self, values: np.ndarray) -> None:
        unique, codes = np.unique(values, return_inverse=True)
        self.n_groups = len(unique)
        self.codes = codes.reshape(-1)
        # Sparse group-membership matrix (groups x items): per-group sums of any per-item quantity.
        self.members = sparse.csr_matrix(
            (np.ones(len(values)), (self.codes, np.arange(len(values)))), shape=(self.n_groups, len(values))
        )

    def group_sums(self, per_item: np.ndarray) -> np.ndarray:
        """``(b, n)`` per-item values -> ``(b, n_groups)`` sums over each group."""
        return np.asarray(self.members @ per_item.T).T

    def group_ranks(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(total weight, average rank) of each group in each resample, both ``(b, n_groups)``."""
        group_weight = self.group_sums(weights)
        return group_weight, np.cumsum(group_weight, axis=1) - (group_weight - 1) / 2.0


def bootstrap_spearman(
    x: np.ndarray, ys: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0, block: int = 32
) -> np.ndarray:
    """Spearman's rho between ``x`` and each of ``ys`` over ``n_boot`` bootstrap resamples of the rows (seeded).

    Returns ``(len(ys), n_boot)``; every ``y`` sees the same resamples. Each resample is a vector of
    multiplicities; tie-averaged ranks and the weighted Pearson correlation of the ranks give exactly
    the rho of ``scipy.stats.spearmanr`` on the materialised resample, a block of resamples at a
    time, with sums over tie groups as sparse products. A resample in which a variable is constant
    gives NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    by_x = np.argsort(x, kind="stable")  # rows sorted by x: x's group sums become a cumulative sum
    x_sorted = x[by_x]
    x_distinct = bool(np.all(np.diff(x_sorted) > 0))
    x_groups = None if x_distinct else _TieGroups(x_sorted)
    y_groups = [_TieGroups(np.asarray(y, dtype=np.float64)[by_x]) for y in ys]
    rng = np.random.default_rng(seed)
    rhos = np.empty((len(ys), n_boot))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        # multiplicities of the rows in their given order (so the resamples do not depend on how x sorts),
        # then permuted into x order
        weights = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)[:, by_x].astype(np.float64)
        if x_groups is None:
            rx = np.cumsum(weights, axis=1) - (weights - 1) / 2.0
        else:
            _, x_rank = x_groups.group_ranks(weights)
            rx = x_rank[:, x_groups.codes]
        dx = rx - (weights * rx).sum(axis=1, keepdims=True) / n
        wdx = weights * dx
        var_x = (wdx * dx).sum(axis=1)
        for i, groups in enumerate(y_groups):
            # sum_i w_i dx_i dy_i = sum_g dy_g * (sum over group g of w_i dx_i): y's ranks stay per group.
            weight_g, rank_g = groups.group_ranks(weights)
            dy_g = rank_g - (weight_g * rank_g).sum(axis=1, keepdims=True) / n
            var = var_x * (weight_g * dy_g * dy_g).sum(axis=1)
            cov = (groups.group_sums(wdx) * dy_g).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                rhos[i, start : start + b] = np.where(var > 0, cov / np.sqrt(var), np.nan)
    return rhos


def roc_curve(scores_id: object, scores_ood: object) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)``, ID positive, one per distinct threshold, from (0, 0) to (1, 1).

    At threshold t (accept = score >= t): ``tpr = mean(s_id >= t)``, ``fpr = mean(s_ood >= t)``;
    both arrays are non-decreasing.
    """
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    tp, fp = _threshold_counts(s_id, s_ood)
    return np.concatenate([[0.0], fp / s_ood.size]), np.concatenate([[0.0], tp / s_id.size])


def ood_metrics(scores_id: object, scores_ood: object) -> dict[str, float]:
    """All four OOD metrics under the module's convention, keyed by name."""
    return {
        "auroc": auroc(scores_id, scores_ood),
        "aupr_in": aupr_in(scores_id, scores_ood),
        "aupr_out": aupr_out(scores_id, scores_ood),
        "fpr_at_95_tpr": fpr_at_tpr(scores_id, scores_ood, 0.95),
    }


class ConfidenceInterval(NamedTuple):
    estimate: float
    low: float
    high: float


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: object,
    paired: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of ``statistic(*samples)``.

    ``paired=False`` resamples each sample independently (stratified bootstrap, e.g.
    ``bootstrap_ci(auroc, scores_id, scores_ood)``); ``paired=True`` resamples the same indices
    in all samples, which must have equal length (for Spearman's rho use the vectorised
    :func:`bootstrap_spearman` instead). Seeded: the same call gives the same interval. Resamples on
    which the statistic is NaN are dropped.
    """
    if not samples:
        raise NormprobeError("bootstrap_ci needs at least one sample")
    if not 0.0 < confidence < 1.0:
        raise NormprobeError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise NormprobeError(f"n_resamples must be >= 1, got {n_resamples}")
    arrays = [_scores(s, f"sample {i}") for i, s in enumerate(samples)]
    if paired and len({a.size for a in arrays}) != 1:
        raise NormprobeError("paired bootstrap needs samples of equal length")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for r in range(n_resamples):
        if paired:
            idx = rng.integers(0, arrays[0].size, arrays[0].size)
            values[r] = statistic(*(a[idx] for a in arrays))
        else:
            values[r] = statistic(*(a[rng.integers(0, a.size, a.size)] for a in arrays))
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise NormprobeError("the statistic is undefined (NaN) on every bootstrap resample")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(statistic(*arrays)), float(low), float(high))
