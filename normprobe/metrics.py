"""OOD-detection and ranking metrics, in numpy.

Convention (the one used everywhere in normprobe)
------------------------------------------------
Scores are **larger = more in-distribution (familiar)**: an embedding norm, a negative kNN
distance, a negative Mahalanobis distance. The metrics take the scores of the in-distribution
(ID) samples and of the out-of-distribution (OOD) samples as two arrays. Where a metric depends
on which class is "positive", its name says so.

OOD metrics and what they equal elsewhere (:data:`OOD_METRICS`, keys of :func:`ood_metrics`):

=================  ========  =============================================  ==============================================
key                positive  definition                                     the same number elsewhere
=================  ========  =============================================  ==============================================
``auroc``          either    P(s_id > s_ood) + P(s_id = s_ood) / 2          OpenOOD v1.5 ``AUROC``, pytorch-ood ``AUROC``,
                                                                            scikit-learn ``roc_auc_score``
``fpr@95tpr_id``   ID        fraction of OOD accepted at the threshold      Hendrycks & Gimpel / Sun et al. (kNN-OOD)
                             that accepts 95 % of ID                        ``FPR95``; ``fpr95`` in normprobe 0.1 results
``fpr@95tpr_ood``  OOD       fraction of ID flagged at the threshold        OpenOOD v1.5 ``compute_all_metrics`` ``FPR@95``,
                             that flags 95 % of OOD                         pytorch-ood ``OODMetrics`` ``FPR95TPR``
``aupr_in_ap``     ID        average precision                              scikit-learn ``average_precision_score``
``aupr_out_ap``    OOD       average precision, scores negated              scikit-learn ``average_precision_score``
``aupr_in_trapz``  ID        PR curve integrated by the trapezoid rule      OpenOOD v1.5 ``AUPR_IN``, pytorch-ood ``AUPR-IN``
``aupr_out_trapz`` OOD       the same, scores negated                       OpenOOD v1.5 ``AUPR_OUT``, pytorch-ood ``AUPR-OUT``
=================  ========  =============================================  ==============================================

Details:

* accept = ``score >= t``; an FPR at 95 % TPR takes the strictest threshold whose TPR reaches
  95 % (the first ROC point with ``tpr >= 0.95``, as OpenOOD's ``argmax(tpr >= 0.95)`` and
  pytorch-ood's ``searchsorted``). With the OOD class positive the score is negated, so
  ``fpr@95tpr_ood`` is the fraction of ID samples scoring at or below the 95th-percentile-from-the-top
  OOD score. OpenOOD calls scikit-learn's ``roc_curve`` with its default ``drop_intermediate=True``,
  which can skip that first point when tied scores make ROC steps collinear; on untied scores the
  two agree exactly, and normprobe always takes the first point (pytorch-ood's behaviour).
* Average precision is sum over distinct thresholds of ``(R_n - R_{n-1}) * P_n``; the trapezoid
  AUPR is ``sum (R_n - R_{n-1}) * (P_n + P_{n-1}) / 2`` over the same points plus
  ``(R_0, P_0) = (0, 1)`` (the point scikit-learn's ``precision_recall_curve`` appends, and which
  OpenOOD and pytorch-ood integrate with ``auc``). Tied scores form one threshold. The two differ
  most with ties, where the trapezoid interpolates linearly between thresholds.
* ``roc_curve``: the (FPR, TPR) points behind ``auroc``, ID positive.

``spearman`` (rank correlation, e.g. norm vs kNN correctness), ``bootstrap_spearman`` (its seeded,
vectorised, tie-exact bootstrap: the one used for every Spearman interval in normprobe),
``bootstrap_ci`` (seeded percentile intervals for any metric) and ``bootstrap_auroc`` (the same
interval for ``auroc``, vectorised) complete the module. All functions are tie-correct and
vectorised (sorting, no Python loops over samples).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
from scipy import special
from threadpoolctl import threadpool_limits

from normprobe.errors import NormprobeError
from normprobe.parallel import ordered_map


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


def _trapezoid_pr_area(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoid-rule area under the PR curve of ``pos`` against ``neg``, from (recall 0, precision 1)."""
    tp, fp = _threshold_counts(pos, neg)
    precision = np.concatenate([[1.0], tp / (tp + fp)])
    recall = np.concatenate([[0.0], tp / pos.size])
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def aupr_in_ap(scores_id: object, scores_ood: object) -> float:
    """Average precision with the ID samples as positives (scikit-learn's ``average_precision_score``)."""
    return _average_precision(_scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood"))


def aupr_out_ap(scores_id: object, scores_ood: object) -> float:
    """Average precision with the OOD samples as positives (scores negated)."""
    return _average_precision(-_scores(scores_ood, "scores_ood"), -_scores(scores_id, "scores_id"))


def aupr_in_trapz(scores_id: object, scores_ood: object) -> float:
    """Trapezoid-integrated PR curve with the ID samples as positives (OpenOOD / pytorch-ood ``AUPR-IN``)."""
    return _trapezoid_pr_area(_scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood"))


def aupr_out_trapz(scores_id: object, scores_ood: object) -> float:
    """Trapezoid-integrated PR curve with the OOD samples as positives (OpenOOD / pytorch-ood ``AUPR-OUT``)."""
    return _trapezoid_pr_area(-_scores(scores_ood, "scores_ood"), -_scores(scores_id, "scores_id"))


def acceptance_threshold(scores: object, fraction: float) -> float:
    """The largest threshold ``t`` with ``mean(scores >= t) >= fraction``: the ``ceil(fraction * n)``-th largest score.

    The threshold behind ``fpr@95tpr_id`` / ``fpr@95tpr_ood`` and the scorers' calibrated
    ``offset_`` (:mod:`normprobe.scores`): accepting ``score >= t`` keeps at least ``fraction``
    of ``scores`` (more when scores tie at ``t``).
    """
    s = _scores(scores, "scores")
    if not 0.0 < fraction <= 1.0:
        raise NormprobeError(f"the accepted fraction must be in (0, 1], got {fraction}")
    # the small slack keeps e.g. 0.95 * 20 = 19.000000000000004 from rounding up to 20
    m = max(1, math.ceil(fraction * s.size - 1e-9))
    return float(np.partition(s, s.size - m)[s.size - m])


def _fpr_at_tpr(pos: np.ndarray, neg: np.ndarray, tpr: float) -> float:
    """Fraction of ``neg`` at or above the :func:`acceptance_threshold` that keeps ``tpr`` of ``pos``.

    That threshold is the first point of the ROC curve where the TPR reaches ``tpr``.
    """
    if not 0.0 < tpr <= 1.0:
        raise NormprobeError(f"tpr must be in (0, 1], got {tpr}")
    return float(np.mean(neg >= acceptance_threshold(pos, tpr)))


def fpr_at_tpr(scores_id: object, scores_ood: object, tpr: float = 0.95) -> float:
    """ID positive: the fraction of OOD samples accepted where a fraction ``tpr`` of ID samples is.

    Accept = ``score >= t`` with ``t`` the ``ceil(tpr * n_id)``-th largest ID score; the result
    is ``mean(s_ood >= t)`` (``fpr@95tpr_id`` at the default).
    """
    return _fpr_at_tpr(_scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood"), tpr)


def fpr_at_tpr_ood(scores_id: object, scores_ood: object, tpr: float = 0.95) -> float:
    """OOD positive: the fraction of ID samples flagged where a fraction ``tpr`` of OOD samples is.

    Flag = ``score <= u`` with ``u`` the ``ceil(tpr * n_ood)``-th smallest OOD score; the result
    is ``mean(s_id <= u)`` (``fpr@95tpr_ood`` at the default; OpenOOD v1.5 and pytorch-ood).
    """
    return _fpr_at_tpr(-_scores(scores_ood, "scores_ood"), -_scores(scores_id, "scores_id"), tpr)


class OODMetric(NamedTuple):
    """One OOD metric: its key (in tables, run.json and :func:`ood_metrics`), how to compute it, what it is."""

    key: str
    function: Callable[[object, object], float]
    label: str
    """A short readable label, for reports."""
    positive: str
    """The positive class: ``"ID"``, ``"OOD"`` or ``"either"`` (the metric does not depend on it)."""
    higher_is_better: bool
    reference: str
    """What the same number is called in OpenOOD v1.5, pytorch-ood and the literature."""


OOD_METRICS: tuple[OODMetric, ...] = (
    OODMetric("auroc", auroc, "AUROC", "either", True, "OpenOOD/pytorch-ood AUROC; sklearn roc_auc_score"),
    OODMetric(
        "fpr@95tpr_id",
        partial(fpr_at_tpr, tpr=0.95),
        "FPR@95 (ID pos.)",
        "ID",
        False,
        "Hendrycks & Gimpel, Sun et al. (kNN-OOD) FPR95: OOD accepted at 95% ID retained",
    ),
    OODMetric(
        "fpr@95tpr_ood",
        partial(fpr_at_tpr_ood, tpr=0.95),
        "FPR@95 (OOD pos.)",
        "OOD",
        False,
        "OpenOOD v1.5 FPR@95, pytorch-ood FPR95TPR: ID rejected at 95% OOD detected",
    ),
    OODMetric("aupr_in_ap", aupr_in_ap, "AUPR-in (AP)", "ID", True, "sklearn average_precision_score"),
    OODMetric("aupr_out_ap", aupr_out_ap, "AUPR-out (AP)", "OOD", True, "sklearn average_precision_score"),
    OODMetric(
        "aupr_in_trapz", aupr_in_trapz, "AUPR-in (trapezoid)", "ID", True, "OpenOOD/pytorch-ood AUPR-IN"
    ),
    OODMetric(
        "aupr_out_trapz",
        aupr_out_trapz,
        "AUPR-out (trapezoid)",
        "OOD",
        True,
        "OpenOOD/pytorch-ood AUPR-OUT",
    ),
)
"""Every OOD metric normprobe reports, in table order (see the module docstring)."""


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
        # items ordered by group, and where each group starts in that order (every group is non-empty)
        self.by_group = np.argsort(self.codes, kind="stable")
        self.starts = np.searchsorted(self.codes[self.by_group], np.arange(self.n_groups))

    def group_sums(self, per_item: np.ndarray) -> np.ndarray:
        """``(b, n)`` per-item values -> ``(b, n_groups)`` sums over each group (exact for integers)."""
        return np.add.reduceat(per_item[:, self.by_group], self.starts, axis=1)

    def one_hot(self) -> np.ndarray:
        """``(n, n_groups)`` float64 membership: ``per_item @ one_hot()`` is :meth:`group_sums`."""
        out = np.zeros((len(self.codes), self.n_groups))
        out[np.arange(len(self.codes)), self.codes] = 1.0
        return out


def _average_group_ranks(group_weight: np.ndarray) -> np.ndarray:
    """The average rank of each group of total weight ``group_weight`` (``(b, n_groups)``, in value order)."""
    return np.cumsum(group_weight, axis=1) - (group_weight - 1) / 2.0


_ONE_HOT_GROUPS = 16
_ONE_HOT_BYTES = 32 << 20
"""Variables of at most ``_ONE_HOT_GROUPS`` groups get their group sums from one matrix product over
a one-hot matrix of at most this size (all of them together), the others from a sum per group."""


def bootstrap_spearman(
    x: np.ndarray, ys: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0, block: int | None = None
) -> np.ndarray:
    """Spearman's rho between ``x`` and each of ``ys`` over ``n_boot`` bootstrap resamples of the rows (seeded).

    Returns ``(len(ys), n_boot)``; every ``y`` sees the same resamples. Each resample is a vector of
    multiplicities; tie-averaged ranks and the weighted Pearson correlation of the ranks give exactly
    the rho of ``scipy.stats.spearmanr`` on the materialised resample, a block of resamples at a
    time (``block``; default: a few hundred thousand multiplicities, which stay in cache), with
    sums over tie groups as one matrix product for variables of few groups (binary ones) and
    per-group sums otherwise. Up to a few hundred thousand rows every sum adds integers (or halves)
    below 2^53 and is exact, so neither ``block`` nor the order of the sums changes a bit of the
    result. A resample in which a variable is constant gives NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    by_x = np.argsort(x, kind="stable")  # rows sorted by x: x's group sums become a cumulative sum
    rank_x = np.empty(n, dtype=np.int64)
    rank_x[by_x] = np.arange(n)  # a drawn row -> its position in x order
    x_sorted = x[by_x]
    x_distinct = bool(np.all(np.diff(x_sorted) > 0))
    x_groups = None if x_distinct else _TieGroups(x_sorted)
    y_groups = [_TieGroups(np.asarray(y, dtype=np.float64)[by_x]) for y in ys]
    # the variables with fewest groups (binary ones: two) whose one-hot matrices fit the budget
    dense: dict[int, slice] = {}
    width = 0
    for i in sorted(range(len(ys)), key=lambda i: y_groups[i].n_groups):
        if y_groups[i].n_groups > _ONE_HOT_GROUPS or 8 * n * (width + y_groups[i].n_groups) > _ONE_HOT_BYTES:
            break
        dense[i] = slice(width, width + y_groups[i].n_groups)
        width += y_groups[i].n_groups
    one_hot = (
        np.concatenate([y_groups[i].one_hot() for i in sorted(dense, key=lambda i: dense[i].start)], axis=1)
        if dense
        else None
    )
    block = max(1, min(32, (1 << 18) // max(n, 1))) if block is None else block
    rng = np.random.default_rng(seed)
    rhos = np.empty((len(ys), n_boot))
    # The one-hot products are small: BLAS threads would only wait on each other (and, beside other
    # busy processes, on the scheduler), so they run on one; the setting is restored afterwards.
    with threadpool_limits(1, user_api="blas"):
        _run_blocks(
            functools.partial(_spearman_block, x_groups, y_groups, rank_x, dense, one_hot, draws, start, rhos)
            for start, draws in _draw_blocks(rng, n, n_boot, block)
        )
    return rhos


def _draw_blocks(
    rng: np.random.Generator, n: int, n_boot: int, block: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first resample, (b, n) drawn rows)`` of every block of resamples, drawn in order."""
    for start in range(0, n_boot, block):
        yield start, rng.integers(0, n, size=(min(block, n_boot - start), n))


def _spearman_block(
    x_groups: _TieGroups | None,
    y_groups: list[_TieGroups],
    rank_x: np.ndarray,
    dense: dict[int, slice],
    one_hot: np.ndarray | None,
    drawn: np.ndarray,
    start: int,
    rhos: np.ndarray,
) -> None:
    """The rhos of the resamples ``drawn`` (rows of the data, in their given order) of
    :func:`bootstrap_spearman`, into ``rhos[:, start:]``."""
    b, n = drawn.shape
    # the draws counted in x order (so the resamples do not depend on how x sorts)
    weights = np.bincount((rank_x[drawn] + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(
        b, n
    )
    # Twice the centred x ranks, 2 (r_i - (n + 1) / 2), are integers: a resample's average ranks
    # are half-integers with mean (n + 1) / 2. The sums below add integers (or halves) below 2^53
    # (n up to ~3e5), so they are exact in float64 whatever the order.
    if x_groups is None:
        twice_rank = 2 * np.cumsum(weights, axis=1) - weights + 1
    else:
        group_weight = x_groups.group_sums(weights)
        twice_rank = (2 * np.cumsum(group_weight, axis=1) - group_weight + 1)[:, x_groups.codes]
    twice_dx = (twice_rank - (n + 1)).astype(np.float64)
    twice_wdx = weights * twice_dx
    var_x = np.einsum("ij,ij->i", twice_wdx, twice_dx) / 4.0
    # per group of each y: total weight, and twice the sum of w_i dx_i (rows b: of the stack)
    sums = np.concatenate([weights, twice_wdx]) @ one_hot if one_hot is not None else None
    for i, groups in enumerate(y_groups):
        if sums is not None and i in dense:
            weight_g, twice_wdx_g = sums[:b, dense[i]], sums[b:, dense[i]]
        else:
            weight_g, twice_wdx_g = groups.group_sums(weights), groups.group_sums(twice_wdx)
        # sum_i w_i dx_i dy_i = sum_g dy_g * (sum over group g of w_i dx_i): y's ranks stay per group.
        rank_g = _average_group_ranks(weight_g)
        dy_g = rank_g - (weight_g * rank_g).sum(axis=1, keepdims=True) / n
        var = var_x * (weight_g * dy_g * dy_g).sum(axis=1)
        cov = (twice_wdx_g / 2.0 * dy_g).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rhos[i, start : start + b] = np.where(var > 0, cov / np.sqrt(var), np.nan)


def _bootstrap_workers() -> int:
    """Threads computing blocks of bootstrap resamples side by side: the cores this process may use (at
    most 4). numpy releases the GIL in every heavy step of a block, and the blocks share nothing."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _run_blocks(tasks: Iterable[Callable[[], None]]) -> None:
    """Run every task (one block of resamples, writing its own part of the results) on
    :func:`_bootstrap_workers` threads. The calling thread makes the tasks in order (drawing their
    resamples from the one generator, so the draws are those of a serial run) while the workers
    compute, at most two tasks per worker ahead."""
    for _ in ordered_map(lambda task: task(), tasks, _bootstrap_workers(), name="normprobe-bootstrap"):
        pass


def roc_curve(scores_id: object, scores_ood: object) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)``, ID positive, one per distinct threshold, from (0, 0) to (1, 1).

    At threshold t (accept = score >= t): ``tpr = mean(s_id >= t)``, ``fpr = mean(s_ood >= t)``;
    both arrays are non-decreasing.
    """
    s_id, s_ood = _scores(scores_id, "scores_id"), _scores(scores_ood, "scores_ood")
    tp, fp = _threshold_counts(s_id, s_ood)
    return np.concatenate([[0.0], fp / s_ood.size]), np.concatenate([[0.0], tp / s_id.size])


def ood_metrics(scores_id: object, scores_ood: object) -> dict[str, float]:
    """Every metric of :data:`OOD_METRICS`, keyed by name."""
    return {metric.key: metric.function(scores_id, scores_ood) for metric in OOD_METRICS}


class ConfidenceInterval(NamedTuple):
    estimate: float
    low: float
    high: float


def _check_bootstrap(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise NormprobeError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise NormprobeError(f"n_resamples must be >= 1, got {n_resamples}")


def _resamples(
    arrays: Sequence[np.ndarray], *, paired: bool, n_resamples: int, seed: int
) -> Iterator[list[np.ndarray]]:
    """Seeded bootstrap row indices of each array, one list per resample (the draws every bootstrap here uses)."""
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        if paired:
            idx = rng.integers(0, arrays[0].size, arrays[0].size)
            yield [idx] * len(arrays)
        else:
            yield [rng.integers(0, a.size, a.size) for a in arrays]


def _percentile_interval(estimate: float, values: np.ndarray, confidence: float) -> ConfidenceInterval:
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise NormprobeError("the statistic is undefined (NaN) on every bootstrap resample")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(estimate), float(low), float(high))


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
    ``bootstrap_ci(auroc, scores_id, scores_ood)``; :func:`bootstrap_auroc` is that interval,
    vectorised); ``paired=True`` resamples the same indices in all samples, which must have equal
    length (for Spearman's rho use the vectorised :func:`bootstrap_spearman` instead). Seeded: the
    same call gives the same interval. Resamples on which the statistic is NaN are dropped.
    """
    if not samples:
        raise NormprobeError("bootstrap_ci needs at least one sample")
    _check_bootstrap(confidence, n_resamples)
    arrays = [_scores(s, f"sample {i}") for i, s in enumerate(samples)]
    if paired and len({a.size for a in arrays}) != 1:
        raise NormprobeError("paired bootstrap needs samples of equal length")
    values = np.array(
        [
            statistic(*(a[i] for a, i in zip(arrays, idx, strict=True)))
            for idx in _resamples(arrays, paired=paired, n_resamples=n_resamples, seed=seed)
        ]
    )
    return _percentile_interval(statistic(*arrays), values, confidence)


def bootstrap_auroc(
    scores_id: object,
    scores_ood: object,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    block: int | None = None,
) -> ConfidenceInterval:
    """``bootstrap_ci(auroc, scores_id, scores_ood, ...)``: the same resamples and interval, vectorised.

    A resample is a vector of multiplicities ``w`` (ID) and ``v`` (OOD). With the ID scores sorted
    once, each OOD score's count of ID scores above and equal to it is a difference of cumulative
    sums of ``w``, so AUROC = ``sum_j v_j (above_j + equal_j / 2) / (n_id * n_ood)`` takes no
    sorting per resample (a block of resamples at a time): several times faster than ranking every
    materialised resample, which matters with one interval per OOD set and scorer. Several scorers
    of the same sets share their resamples through :func:`bootstrap_aurocs`.
    """
    return bootstrap_aurocs(
        [scores_id], [scores_ood], n_resamples=n_resamples, confidence=confidence, seed=seed, block=block
    )[0]


def bootstrap_aurocs(
    scores_id: Sequence[object],
    scores_ood: Sequence[object],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    block: int | None = None,
) -> list[ConfidenceInterval]:
    """:func:`bootstrap_auroc` of each pair ``(scores_id[i], scores_ood[i])``, e.g. every scorer of
    one ID / OOD comparison: the same intervals, drawing the resamples once.

    The resamples depend only on ``seed`` and the two sample sizes, so every pair must have the
    same ``n_id`` and ``n_ood``; the multiplicities of a block of resamples are counted once and
    each pair only reorders them by its own ID ranking. The statistic is computed exactly in
    integers (twice the Mann-Whitney U of the resample), so the values equal those of separate
    calls bit for bit.
    """
    _check_bootstrap(confidence, n_resamples)
    if len(scores_id) != len(scores_ood) or not scores_id:
        raise NormprobeError("bootstrap_aurocs needs as many ID as OOD score arrays, at least one of each")
    pairs = [
        (_scores(a, "scores_id"), _scores(b, "scores_ood"))
        for a, b in zip(scores_id, scores_ood, strict=True)
    ]
    n_id, n_ood = pairs[0][0].size, pairs[0][1].size
    if any(a.size != n_id or b.size != n_ood for a, b in pairs):
        raise NormprobeError("bootstrap_aurocs: every pair must have the same numbers of ID and OOD scores")
    plans = []
    for s_id, s_ood in pairs:
        order = np.argsort(s_id, kind="stable")
        sorted_id = s_id[order]
        below = np.searchsorted(sorted_id, s_ood, side="left")  # ID scores < each OOD score
        at_or_below = np.searchsorted(sorted_id, s_ood, side="right")
        # without ties between the sets, one cumulative count serves both
        plans.append((order, below, None if np.array_equal(below, at_or_below) else at_or_below))
    draws = _resamples([pairs[0][0], pairs[0][1]], paired=False, n_resamples=n_resamples, seed=seed)
    # a block of resamples at a time (default: a few hundred thousand multiplicities, cache-sized);
    # the values do not depend on it
    block = max(1, min(64, (1 << 18) // n_id)) if block is None else block
    values = np.empty((len(pairs), n_resamples))

    def blocks() -> Iterator[Callable[[], None]]:
        for start in range(0, n_resamples, block):
            chunk = [next(draws) for _ in range(min(block, n_resamples - start))]
            ids, oods = np.stack([c[0] for c in chunk]), np.stack([c[1] for c in chunk])
            yield functools.partial(_auroc_block, plans, ids, oods, start, values)

    _run_blocks(blocks())
    return [
        _percentile_interval(auroc(s_id, s_ood), values[i], confidence)
        for i, (s_id, s_ood) in enumerate(pairs)
    ]


def _auroc_block(
    plans: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    ids: np.ndarray,
    oods: np.ndarray,
    start: int,
    values: np.ndarray,
) -> None:
    """The AUROC of every pair of :func:`bootstrap_aurocs` on the resamples ``ids`` / ``oods``
    (``(b, n)`` drawn rows of each set), into ``values[:, start:]``."""
    (b, n_id), n_ood = ids.shape, oods.shape[1]
    offsets = np.arange(b)[:, None]
    # multiplicities of the rows in their given order, (b, n); int32 halves the memory traffic
    w = np.bincount((ids + offsets * n_id).ravel(), minlength=b * n_id).reshape(b, n_id).astype(np.int32)
    v = np.bincount((oods + offsets * n_ood).ravel(), minlength=b * n_ood).reshape(b, n_ood).astype(np.int32)
    cumulative = np.zeros((b, n_id + 1), dtype=np.int32)  # column c: ID weight of the c lowest ID scores
    for i, (ranking, strictly_below, tied_or_below) in enumerate(plans):
        np.cumsum(w[:, ranking], axis=1, out=cumulative[:, 1:])
        # twice (ID weight above each OOD score + half the weight tied with it):
        # 2 n_id - (weight at or below) - (weight below)
        lower = cumulative[:, strictly_below]
        lower += lower if tied_or_below is None else cumulative[:, tied_or_below]
        twice_u = 2 * n_id * n_ood - np.einsum("ij,ij->i", v, lower, dtype=np.int64)
        values[i, start : start + b] = (twice_u / 2.0) / (n_id * n_ood)
