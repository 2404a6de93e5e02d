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


def openood_v15(s_id: np.ndarray, s_ood: np.ndarray, drop_intermediate: bool = False) -> dict[str, float]:
    """OpenOOD v1.5 ``auc_and_fpr_recall`` (OOD positive, confidences negated), through scikit-learn."""
    y_ood, conf = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))], np.r_[s_id, s_ood]
    fpr, tpr, _ = skm.roc_curve(y_ood, -conf, drop_intermediate=drop_intermediate)
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - y_ood, conf)
    precision_out, recall_out, _ = skm.precision_recall_curve(y_ood, -conf)
    return {
        "auroc": skm.auc(fpr, tpr),
        "fpr@95tpr_ood": fpr[np.argmax(tpr >= 0.95)],
        "aupr_in_trapz": skm.auc(recall_in, precision_in),
        "aupr_out_trapz": skm.auc(recall_out, precision_out),
    }


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_an_independent_computation(ties: bool, seed: int) -> None:
    s_id, s_ood = scored_sets(seed, ties=ties)
    y, s = sk_labels(s_id, s_ood)
    result = metrics.ood_metrics(s_id, s_ood)
    assert list(result) == [m.key for m in metrics.OOD_METRICS]
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    precision_in, recall_in, _ = skm.precision_recall_curve(y, s)
    precision_out, recall_out, _ = skm.precision_recall_curve(1 - y, -s)
    expected = {
        "auroc": skm.roc_auc_score(y, s),
        # ID positive: the first ROC point (highest threshold) that keeps 95% of ID
        "fpr@95tpr_id": sk_fpr[np.argmax(sk_tpr >= 0.95)],
        "aupr_in_ap": skm.average_precision_score(y, s),
        "aupr_out_ap": skm.average_precision_score(1 - y, -s),
        "aupr_in_trapz": np.trapezoid(precision_in, recall_in),
        "aupr_out_trapz": np.trapezoid(precision_out, recall_out),
        **openood_v15(s_id, s_ood),
    }
    assert set(expected) == set(result)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    # each named function is the table's
    assert metrics.fpr_at_tpr(s_id, s_ood) == result["fpr@95tpr_id"]
    assert metrics.fpr_at_tpr_ood(s_id, s_ood) == result["fpr@95tpr_ood"]
    assert metrics.aupr_in_trapz(s_id, s_ood) == result["aupr_in_trapz"]
    fpr, tpr = metrics.roc_curve(s_id, s_ood)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)


def test_openood_with_its_default_roc_agrees_on_untied_scores() -> None:
    # OpenOOD keeps roc_curve's drop_intermediate=True; that only matters when ties make ROC steps collinear
    s_id, s_ood = scored_sets(3)
    assert metrics.fpr_at_tpr_ood(s_id, s_ood) == pytest.approx(
        openood_v15(s_id, s_ood, drop_intermediate=True)["fpr@95tpr_ood"], abs=1e-12
    )


def test_the_two_conventions_differ_and_mirror_each_other() -> None:
    s_id, s_ood = scored_sets(4, n_id=400, n_ood=400)
    id_positive, ood_positive = metrics.fpr_at_tpr(s_id, s_ood), metrics.fpr_at_tpr_ood(s_id, s_ood)
    assert abs(id_positive - ood_positive) > 0.01  # different numbers for the same scores
    # swapping the roles of the sets (and the score sign) turns one into the other
    assert ood_positive == metrics.fpr_at_tpr(-s_ood, -s_id)
    assert metrics.aupr_out_trapz(s_id, s_ood) == metrics.aupr_in_trapz(-s_ood, -s_id)
    assert metrics.aupr_out_ap(s_id, s_ood) == metrics.aupr_in_ap(-s_ood, -s_id)


def test_aupr_by_hand() -> None:
    # ranking id, ood, id: precision 1 at recall 1/2, 2/3 at recall 1 -> AP = 1/2 + 1/3
    assert metrics.aupr_in_ap([3, 1], [2]) == pytest.approx(0.5 + 1 / 3)
    # trapezoid over (0, 1), (1/2, 1), (1/2, 1/2), (1, 2/3): 1/2 + 0 + 1/2 * (1/2 + 2/3) / 2
    assert metrics.aupr_in_trapz([3, 1], [2]) == pytest.approx(0.5 + 7 / 24)
    # OOD positive, negated scores rank the ood sample (2) second of three: AP = 1/2
    assert metrics.aupr_out_ap([3, 1], [2]) == pytest.approx(0.5)
    assert metrics.aupr_in_ap([5, 6], [1, 2]) == 1.0 == metrics.aupr_out_ap([5, 6], [1, 2])
    assert metrics.aupr_in_trapz([5, 6], [1, 2]) == 1.0 == metrics.aupr_out_trapz([5, 6], [1, 2])
    # all tied: one threshold at recall 1, precision 1/2; AP 1/2, the trapezoid from (0, 1) gives 3/4
    assert metrics.aupr_in_ap([1, 1], [1, 1]) == 0.5 and metrics.aupr_in_trapz([1, 1], [1, 1]) == 0.75


def test_fpr_at_95_tpr_by_hand() -> None:
    s_id = np.arange(1, 21, dtype=float)  # 20 ID scores: accepting 19 of them needs t = 2
    s_ood = np.array([0.0, 1.0, 1.5, 2.0, 5.0])  # 2.0 and 5.0 are >= 2
    assert metrics.fpr_at_tpr(s_id, s_ood) == pytest.approx(0.4)
    assert metrics.fpr_at_tpr(s_id, s_ood, tpr=1.0) == pytest.approx(0.8)  # t = 1
    assert metrics.fpr_at_tpr(s_id, -s_ood - 100) == 0.0
    # ties at the threshold: every ID score equal -> all OOD at that value count as accepted
    assert metrics.fpr_at_tpr([1.0] * 10, [1.0, 0.0]) == 0.5
    # OOD positive: flagging 95% of the 5 OOD scores (all 5) needs u = 5.0, which flags ID 1..5
    assert metrics.fpr_at_tpr_ood(s_id, s_ood) == pytest.approx(5 / 20)
    assert metrics.fpr_at_tpr_ood(s_id, s_ood, tpr=0.8) == pytest.approx(2 / 20)  # u = 2.0


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


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_auroc_is_bootstrap_ci_of_auroc(ties: bool) -> None:
    s_id, s_ood = scored_sets(6, n_id=150, n_ood=90, ties=ties)
    for seed, confidence in ((0, 0.95), (3, 0.9)):
        fast = metrics.bootstrap_auroc(
            s_id, s_ood, n_resamples=150, seed=seed, confidence=confidence, block=64
        )
        slow = metrics.bootstrap_ci(
            metrics.auroc, s_id, s_ood, n_resamples=150, seed=seed, confidence=confidence
        )
        assert fast.estimate == slow.estimate
        assert fast.low == pytest.approx(slow.low, abs=1e-12) and fast.high == pytest.approx(
            slow.high, abs=1e-12
        )


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_aurocs_share_resamples_and_equal_separate_calls(ties: bool) -> None:
    s_id, s_ood = scored_sets(8, n_id=150, n_ood=90, ties=ties)
    rng = np.random.default_rng(9)
    ids = [s_id, -s_id, s_id + rng.normal(0.0, 0.5, s_id.size), np.round(s_id)]
    oods = [s_ood, -s_ood, s_ood + rng.normal(0.0, 0.5, s_ood.size), np.round(s_ood)]
    together = metrics.bootstrap_aurocs(ids, oods, n_resamples=120, seed=4)
    for block in (None, 1, 7, 64):  # the block size changes nothing
        assert metrics.bootstrap_aurocs(ids, oods, n_resamples=120, seed=4, block=block) == together
    for a, b, interval in zip(ids, oods, together, strict=True):
        assert metrics.bootstrap_auroc(a, b, n_resamples=120, seed=4) == interval
        slow = metrics.bootstrap_ci(metrics.auroc, a, b, n_resamples=120, seed=4)
        assert interval.estimate == slow.estimate
        assert interval.low == pytest.approx(slow.low, abs=1e-12)
        assert interval.high == pytest.approx(slow.high, abs=1e-12)
    with pytest.raises(NormprobeError, match="same numbers"):
        metrics.bootstrap_aurocs([s_id, s_id[1:]], [s_ood, s_ood])
    with pytest.raises(NormprobeError, match="as many"):
        metrics.bootstrap_aurocs([s_id], [])


def test_bootstrap_spearman_many_groups_and_any_block_size() -> None:
    """Variables of many groups (summed per group) and of few (one matrix product), every block
    size: the rho of scipy on each materialised resample, and the same bits whatever the block."""
    rng = np.random.default_rng(2)
    n = 80
    x = rng.random(n)
    ys = [rng.random(n), (rng.random(n) < 0.3).astype(float), np.round(rng.random(n) * 40)]
    boots = metrics.bootstrap_spearman(x, ys, n_boot=9, seed=5)
    draws = np.random.default_rng(5).integers(0, n, size=(9, n))
    for b, rows in enumerate(draws):
        for i, y in enumerate(ys):
            assert boots[i, b] == pytest.approx(stats.spearmanr(x[rows], y[rows]).statistic, abs=1e-12)
    for block in (1, 2, 4, 9, 32):
        np.testing.assert_array_equal(metrics.bootstrap_spearman(x, ys, n_boot=9, seed=5, block=block), boots)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: metrics.auroc([1.0, math.nan], [0.0]), "NaN or Inf"),
        (lambda: metrics.auroc([], [0.0]), "no scores"),
        (lambda: metrics.aupr_in_ap(np.ones((2, 2)), [0.0]), "1-D"),
        (lambda: metrics.aupr_out_trapz([1.0], [math.inf]), "NaN or Inf"),
        (lambda: metrics.fpr_at_tpr([1.0], [0.0], tpr=0.0), "tpr must be"),
        (lambda: metrics.fpr_at_tpr_ood([1.0], [0.0], tpr=1.5), "tpr must be"),
        (lambda: metrics.spearman([1.0, 2.0], [1.0]), "differ in length"),
        (lambda: metrics.bootstrap_ci(metrics.auroc, [1.0], [0.0], confidence=1.0), "confidence"),
        (lambda: metrics.bootstrap_auroc([1.0], [0.0], n_resamples=0), "n_resamples"),
    ],
)
def test_bad_input(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(NormprobeError, match=match):
        call()
