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

``spearman`` (rank correlation, e.g. norm vs kNN correctness) and ``bootstrap_ci`` (seeded
percentile intervals for any of these) complete the module.

Average precision is scikit-learn's ``average_precision_score``: sum over distinct thresholds of
(R_n - R_{n-1}) * P_n, tied scores forming one threshold. All functions are tie-correct and
vectorised (sorting, no Python loops over samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import special

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


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """AP of ``pos`` (positives) against ``neg``, larger score = more positive."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    # a threshold ends at the last element of each run of tied scores
    last = np.flatnonzero(np.concatenate([scores[1:] != scores[:-1], [True]]))
    tp = np.cumsum(is_pos)[last]
    precision = tp / (last + 1)
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

    With ``n_boot > 0`` also a seeded percentile bootstrap interval over paired resamples of
    the rows (see :func:`bootstrap_ci`).
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
    low = high = math.nan
    if n_boot > 0 and not math.isnan(rho):
        _, low, high = bootstrap_ci(
            _spearman_rho, a, b, paired=True, n_resamples=n_boot, confidence=confidence, seed=seed
        )
    return SpearmanResult(rho, p_value, low, high)


def roc_curve(scores_id: object, scores_ood: object) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)``, ID positive, one per distinct threshold, from (0, 0) to (1, 1).

    At threshold t (accept = score >= t): ``tpr = mean(s_id >= t)``, ``fpr = mean(s_ood >= t)``;
    both arrays are non-decreasing.
    """
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(s_id.size), np.zeros(s_ood.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_id = scores[order], is_id[order]
    last = np.flatnonzero(np.concatenate([scores[1:] != scores[:-1], [True]]))
    tp = np.cumsum(is_id)[last]
    fp = last + 1 - tp
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
    in all samples, which must have equal length (e.g. ``spearman(..., n_boot=1000)`` uses it
    that way). Seeded: the same call gives the same interval. Resamples on which the
    statistic is NaN (e.g. a constant resample for ``spearman``) are dropped.
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
