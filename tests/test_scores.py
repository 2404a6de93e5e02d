"""OOD scorers (normprobe.scores): definitions recomputed by hand, score direction, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normprobe import metrics
from normprobe.errors import NormprobeError
from normprobe.scores import (
    SCORERS,
    KNNDistanceScorer,
    MahalanobisScorer,
    NormKNNScorer,
    NormScorer,
    make_scorer,
)


def gaussian_classes(n: int, dim: int, seed: int, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(99).normal(0.0, 3.0, (n_classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    return (centres[y] + rng.standard_normal((n, dim))).astype(np.float32), y


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a.astype(np.float64) @ b.astype(np.float64).T


def kth_largest(sims: np.ndarray, k: int) -> np.ndarray:
    return -np.sort(-sims, axis=1)[:, k - 1]


def test_registry() -> None:
    assert list(SCORERS) == ["norm", "knn", "mahalanobis", "norm+knn"]
    assert isinstance(make_scorer("knn", k=7), KNNDistanceScorer) and make_scorer("knn", k=7).k == 7
    assert make_scorer("norm+knn", k=3).knn.k == 3
    assert make_scorer("norm+knn", seed=5).seed == 5 and isinstance(
        make_scorer("norm", seed=5), NormScorer
    )  # seed: seeded ones only
    assert isinstance(make_scorer("norm", k=7), NormScorer)  # k is ignored where unused
    assert make_scorer("mahalanobis", ridge=1e-3).ridge == 1e-3
    with pytest.raises(NormprobeError, match="unknown scorer 'odin'; choose one of: norm, knn"):
        make_scorer("odin")
    with pytest.raises(NormprobeError, match="scorer 'norm'"):
        make_scorer("norm", ridge=1.0)


def test_norm_scorer() -> None:
    train, _ = gaussian_classes(50, 4, seed=0)
    test, _ = gaussian_classes(10, 4, seed=1)
    scorer = NormScorer().fit(train)
    np.testing.assert_allclose(
        scorer.score_samples(test), np.linalg.norm(test.astype(np.float64), axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(
        scorer.score_samples(None), np.linalg.norm(train.astype(np.float64), axis=1), rtol=1e-6
    )
    assert scorer.score_samples(torch.from_numpy(test)).dtype == np.float64


def test_knn_scorer_is_sun_et_al() -> None:
    train, _ = gaussian_classes(300, 8, seed=2)
    test, _ = gaussian_classes(40, 8, seed=3)
    scorer = KNNDistanceScorer(k=5).fit(train)
    expected = kth_largest(cosine(test, train), 5) - 1.0
    np.testing.assert_allclose(scorer.score_samples(test), expected, atol=1e-6)
    # Sun et al. rank by minus the Euclidean distance between normalised features: same order
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    euclid = np.sort(np.linalg.norm(unit(test)[:, None] - unit(train)[None], axis=2), axis=1)[:, 4]
    np.testing.assert_array_equal(np.argsort(scorer.score_samples(test)), np.argsort(-euclid))
    # ID-train rows: leave-one-out
    loo = cosine(train, train)
    np.fill_diagonal(loo, -np.inf)
    np.testing.assert_allclose(scorer.score_samples(None), kth_largest(loo, 5) - 1.0, atol=1e-6)
    rows = np.array([0, 17, 299])
    np.testing.assert_allclose(scorer._score_fit_rows(rows), kth_largest(loo, 5)[rows] - 1.0, atol=1e-6)


def mahalanobis_by_hand(train: np.ndarray, labels: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    train, x = train.astype(np.float64), x.astype(np.float64)
    labels = np.zeros(len(train), dtype=int) if labels is None else labels
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    precision = np.linalg.inv(centred.T @ centred / len(train))
    d = x[:, None, :] - means[None]
    return -np.einsum("ncd,de,nce->nc", d, precision, d).min(axis=1)


@pytest.mark.parametrize("class_conditional", [True, False])
def test_mahalanobis_is_lee_et_al(class_conditional: bool) -> None:
    train, y = gaussian_classes(500, 6, seed=4)
    test, _ = gaussian_classes(50, 6, seed=5)
    labels = y if class_conditional else None
    scorer = MahalanobisScorer(ridge=1e-12).fit(train, labels)
    np.testing.assert_allclose(
        scorer.score_samples(test), mahalanobis_by_hand(train, labels, test), rtol=1e-6
    )
    np.testing.assert_allclose(
        scorer.score_samples(None), mahalanobis_by_hand(train, labels, train), rtol=1e-6
    )


def test_mahalanobis_is_scale_invariant_and_stable_when_rank_deficient() -> None:
    train, y = gaussian_classes(300, 6, seed=6)
    test, _ = gaussian_classes(20, 6, seed=7)
    base = MahalanobisScorer().fit(train, y).score_samples(test)
    np.testing.assert_allclose(
        MahalanobisScorer().fit(1000 * train, y).score_samples(1000 * test), base, rtol=1e-5
    )
    # more dimensions than samples, plus a dead dimension: a singular covariance
    wide, y_wide = gaussian_classes(20, 64, seed=8)
    wide[:, 0] = 0.0
    scores = MahalanobisScorer().fit(wide, y_wide).score_samples(np.vstack([wide[:3], 5 * wide[:3]]))
    assert np.isfinite(scores).all() and (scores <= 0).all()
    assert (scores[:3] > scores[3:]).all()  # the training points are more familiar than their far copies


def test_norm_knn_is_the_sum_of_z_scores() -> None:
    train, _ = gaussian_classes(200, 8, seed=9)
    test, _ = gaussian_classes(30, 8, seed=10)
    scorer = NormKNNScorer(k=4).fit(train)
    norms_train = np.linalg.norm(train.astype(np.float64), axis=1)
    loo = cosine(train, train)
    np.fill_diagonal(loo, -np.inf)
    knn_train = kth_largest(loo, 4) - 1.0
    knn_test = kth_largest(cosine(test, train), 4) - 1.0
    expected = (np.linalg.norm(test.astype(np.float64), axis=1) - norms_train.mean()) / norms_train.std() + (
        knn_test - knn_train.mean()
    ) / knn_train.std()
    np.testing.assert_allclose(scorer.score_samples(test), expected, atol=1e-5)
    # a subsample of the training set for the kNN statistics: seeded, and close to the full ones
    sub = NormKNNScorer(k=4, n_stat_samples=100, seed=1).fit(train)
    assert sub.knn_mean_ == NormKNNScorer(k=4, n_stat_samples=100, seed=1).fit(train).knn_mean_
    assert sub.knn_mean_ == pytest.approx(knn_train.mean(), rel=0.2)


def test_every_scorer_says_larger_is_more_familiar() -> None:
    # ID: three well-separated large-norm classes; OOD: small-norm points in other directions
    train, y = gaussian_classes(600, 16, seed=11)
    test_id, _ = gaussian_classes(200, 16, seed=12)
    rng = np.random.default_rng(13)
    ood = (0.3 * rng.standard_normal((200, 16)) + rng.normal(0.0, 1.0, 16)).astype(np.float32)
    for name in SCORERS:
        scorer = make_scorer(name, k=10).fit(train, y)
        auroc = metrics.auroc(scorer.score_samples(test_id), scorer.score_samples(ood))
        assert auroc > 0.9, name


@pytest.mark.parametrize("name", list(SCORERS))
def test_errors(name: str) -> None:
    train, y = gaussian_classes(60, 4, seed=14)
    with pytest.raises(NormprobeError, match="not fitted"):
        make_scorer(name, k=5).score_samples(train)
    with pytest.raises(NormprobeError, match="not fitted"):
        make_scorer(name, k=5).score_samples(None)
    scorer = make_scorer(name, k=5).fit(train, y)
    with pytest.raises(NormprobeError, match="dimension 3 but the scorer was fitted on dimension 4"):
        scorer.score_samples(train[:, :3])
    bad = train[:5].copy()
    bad[2, 1] = math.nan
    with pytest.raises(NormprobeError, match="row 2 contains NaN or Inf"):
        scorer.score_samples(bad)
    with pytest.raises(NormprobeError, match="row 2 contains NaN or Inf"):
        make_scorer(name, k=5).fit(bad)
    with pytest.raises(NormprobeError, match="labels: expected shape"):
        make_scorer(name, k=5).fit(train, y[:-1])


def test_fit_errors() -> None:
    with pytest.raises(NormprobeError, match="needs at least k \\+ 1 = 11"):
        KNNDistanceScorer(k=10).fit(np.ones((10, 3)))
    with pytest.raises(NormprobeError, match="zero within-class variance"):
        MahalanobisScorer().fit(np.ones((10, 3)))
    with pytest.raises(NormprobeError, match="norm is constant"):
        NormKNNScorer(k=2).fit(np.eye(5))
