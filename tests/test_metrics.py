"""OOD metrics and rank correlation (normprobe.metrics): hand-computed cases and scikit-learn/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from normprobe import metrics
from normprobe.errors import NormprobeError


def scored_sets(
    seed: int, n_id: int = 700, n_ood: int = 300, ties: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s_id = rng.normal(1.0, 1.0, n_id)
    s_ood = rng.normal(0.0, 1.0, n_ood)
    if ties:  # coarse scores: many ties within and across the two sets
        s_id, s_ood = np.round(s_id * 2) / 2, np.round(s_ood * 2) / 2
    return s_id, s_ood


def sk_labels(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]


def test_auroc_by_hand() -> None:
    assert metrics.auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert metrics.auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert metrics.auroc([1, 1, 1], [1, 1]) == 0.5
    # pairs (id, ood): (3,2) (3,1) (2,1) won, (2,2) tied -> 3.5 / 4
    assert metrics.auroc([3, 2], [2, 1]) == 0.875


@pytest.mark.parametrize("ties", [False, True])
def test_against_sklearn(ties: bool) -> None:
    s_id, s_ood = scored_sets(0, ties=ties)
    y, s = sk_labels(s_id, s_ood)
    assert metrics.auroc(s_id, s_ood) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert metrics.aupr_in(s_id, s_ood) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert metrics.aupr_out(s_id, s_ood) == pytest.approx(skm.average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr = metrics.roc_curve(s_id, s_ood)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    # FPR@95TPR from scikit-learn's ROC: the first threshold whose TPR reaches 0.95
    assert metrics.fpr_at_tpr(s_id, s_ood) == pytest.approx(sk_fpr[np.argmax(sk_tpr >= 0.95)], abs=1e-12)


def test_aupr_by_hand() -> None:
    # ranking id, ood, id: precision 1 at recall 1/2, 2/3 at recall 1 -> AP = 1/2 + 1/3
    assert metrics.aupr_in([3, 1], [2]) == pytest.approx(0.5 + 1 / 3)
    # OOD positive, negated scores rank the ood sample (2) second of three: AP = 1/2
    assert metrics.aupr_out([3, 1], [2]) == pytest.approx(0.5)
    assert metrics.aupr_in([5, 6], [1, 2]) == 1.0 == metrics.aupr_out([5, 6], [1, 2])


def test_fpr_at_95_tpr_by_hand() -> None:
    s_id = np.arange(1, 21, dtype=float)  # 20 ID scores: accepting 19 of them needs t = 2
    s_ood = np.array([0.0, 1.0, 1.5, 2.0, 5.0])  # 2.0 and 5.0 are >= 2
    assert metrics.fpr_at_tpr(s_id, s_ood) == pytest.approx(0.4)
    assert metrics.fpr_at_tpr(s_id, s_ood, tpr=1.0) == pytest.approx(0.8)  # t = 1
    assert metrics.fpr_at_tpr(s_id, -s_ood - 100) == 0.0
    # ties at the threshold: every ID score equal -> all OOD at that value count as accepted
    assert metrics.fpr_at_tpr([1.0] * 10, [1.0, 0.0]) == 0.5


def test_ood_metrics_keys() -> None:
    s_id, s_ood = scored_sets(1)
    result = metrics.ood_metrics(s_id, s_ood)
    assert set(result) == {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr"}
    assert result["auroc"] == metrics.auroc(s_id, s_ood)


def test_average_ranks_match_scipy() -> None:
    x = np.random.default_rng(2).integers(0, 10, 500).astype(float)
    np.testing.assert_array_equal(metrics.average_ranks(x), stats.rankdata(x))


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    y = x + rng.normal(size=400)
    if ties:
        x, y = np.round(x), (y > 0).astype(float)
    result = metrics.spearman(x, y)
    ref = stats.spearmanr(x, y)
    assert result.rho == pytest.approx(ref.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)


def test_spearman_by_hand_and_constant_input() -> None:
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]).rho == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]).rho == pytest.approx(-1.0)
    constant = metrics.spearman([1, 2, 3], [5, 5, 5], n_boot=10)
    assert math.isnan(constant.rho) and math.isnan(constant.p_value) and math.isnan(constant.ci_low)


def test_spearman_bootstrap_interval() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    a = metrics.spearman(x, y, n_boot=300, seed=7)
    assert a == metrics.spearman(x, y, n_boot=300, seed=7)  # seeded
    assert a.ci_low < a.rho < a.ci_high
    assert 0.5 < a.ci_low and a.ci_high < 0.8  # rho ~ 0.68 for this construction


def test_bootstrap_spearman_equals_scipy_on_materialised_resamples() -> None:
    rng = np.random.default_rng(1)
    n = 60
    x_tied = np.round(rng.random(n), 1)  # many ties in x
    x_distinct = rng.random(n)
    y_binary = (rng.random(n) < 0.6).astype(float)
    y_levels = rng.integers(0, 4, n).astype(float)
    for x in (x_tied, x_distinct):
        boots = metrics.bootstrap_spearman(x, [y_binary, y_levels], n_boot=7, seed=3, block=3)
        # the same draws of row indices, materialised
        draw_rng = np.random.default_rng(3)
        draws = np.concatenate([draw_rng.integers(0, n, size=(min(3, 7 - s), n)) for s in range(0, 7, 3)])
        for b, rows in enumerate(draws):
            for i, y in enumerate((y_binary, y_levels)):
                assert boots[i, b] == pytest.approx(stats.spearmanr(x[rows], y[rows]).statistic, abs=1e-12)
    again = metrics.bootstrap_spearman(x_distinct, [y_binary], n_boot=7, seed=3, block=3)
    np.testing.assert_array_equal(again[0], boots[0])


def test_bootstrap_ci() -> None:
    s_id, s_ood = scored_sets(5, n_id=200, n_ood=100)
    ci = metrics.bootstrap_ci(metrics.auroc, s_id, s_ood, n_resamples=400, seed=1)
    assert ci.estimate == metrics.auroc(s_id, s_ood)
    assert ci.low < ci.estimate < ci.high and ci.high - ci.low < 0.2
    assert ci == metrics.bootstrap_ci(metrics.auroc, s_id, s_ood, n_resamples=400, seed=1)
    assert ci != metrics.bootstrap_ci(metrics.auroc, s_id, s_ood, n_resamples=400, seed=2)
    wider = metrics.bootstrap_ci(metrics.auroc, s_id, s_ood, n_resamples=400, seed=1, confidence=0.99)
    assert wider.low <= ci.low and wider.high >= ci.high
    with pytest.raises(NormprobeError, match="equal length"):
        metrics.bootstrap_ci(metrics.auroc, s_id, s_ood, paired=True)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: metrics.auroc([1.0, math.nan], [0.0]), "NaN or Inf"),
        (lambda: metrics.auroc([], [0.0]), "no scores"),
        (lambda: metrics.aupr_in(np.ones((2, 2)), [0.0]), "1-D"),
        (lambda: metrics.fpr_at_tpr([1.0], [0.0], tpr=0.0), "tpr must be"),
        (lambda: metrics.spearman([1.0, 2.0], [1.0]), "differ in length"),
        (lambda: metrics.bootstrap_ci(metrics.auroc, [1.0], [0.0], confidence=1.0), "confidence"),
    ],
)
def test_bad_input(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(NormprobeError, match=match):
        call()
