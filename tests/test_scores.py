"""OOD scorers (normprobe.scores): definitions recomputed by hand, score direction, the scikit-learn
estimator API (clone, Pipeline, GridSearchCV, calibrated predict), errors."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import OutlierMixin, clone, is_outlier_detector
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks

from normprobe import metrics
from normprobe.errors import NormprobeError
from normprobe.scores import (
    SCORERS,
    KNNDistanceScorer,
    MahalanobisScorer,
    NormKNNScorer,
    NormScorer,
    make_scorer,
    scorer_class,
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


def test_registry_and_settings() -> None:
    assert list(SCORERS) == ["norm", "knn", "mahalanobis", "norm+knn"]
    assert isinstance(make_scorer("knn", k=7), KNNDistanceScorer) and make_scorer("knn", k=7).k == 7
    assert make_scorer("mahalanobis", ridge=1e-3).ridge == 1e-3
    # each class takes the run settings it uses: k for the kNN-based ones
    assert scorer_class("knn").from_settings(k=3).get_params()["k"] == 3
    assert scorer_class("norm+knn").from_settings(k=3).k == 3
    assert scorer_class("norm").from_settings(k=3).get_params() == {"retain": 0.95}
    assert scorer_class("mahalanobis").from_settings(k=3).get_params() == MahalanobisScorer().get_params()
    with pytest.raises(NormprobeError, match="unknown scorer 'odin'; choose one of: norm, knn"):
        make_scorer("odin")
    with pytest.raises(NormprobeError, match="scorer 'norm' has no parameter 'ridge'"):
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
    np.testing.assert_array_equal(scorer.train_scores_, scorer.score_samples(None))


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

    def z_sum(norms: np.ndarray, knn: np.ndarray) -> np.ndarray:
        return (norms - norms_train.mean()) / norms_train.std() + (knn - knn_train.mean()) / knn_train.std()

    np.testing.assert_allclose(
        scorer.score_samples(test),
        z_sum(np.linalg.norm(test.astype(np.float64), axis=1), knn_test),
        atol=1e-5,
    )
    np.testing.assert_allclose(scorer.score_samples(None), z_sum(norms_train, knn_train), atol=1e-5)


def test_every_scorer_says_larger_is_more_familiar() -> None:
    # ID: three well-separated large-norm classes; OOD: small-norm points in other directions
    train, y = gaussian_classes(600, 16, seed=11)
    test_id, _ = gaussian_classes(200, 16, seed=12)
    rng = np.random.default_rng(13)
    ood = (0.3 * rng.standard_normal((200, 16)) + rng.normal(0.0, 1.0, 16)).astype(np.float32)
    for name in SCORERS:
        scorer = scorer_class(name).from_settings(k=10).fit(train, y)
        auroc = metrics.auroc(scorer.score_samples(test_id), scorer.score_samples(ood))
        assert auroc > 0.9, name


@pytest.mark.parametrize("name", list(SCORERS))
def test_errors(name: str) -> None:
    train, y = gaussian_classes(60, 4, seed=14)
    with pytest.raises(NotFittedError):
        make_scorer(name).score_samples(train)
    with pytest.raises(NotFittedError):
        make_scorer(name).predict(None)
    scorer = make_scorer(name, k=5) if "k" in make_scorer(name).get_params() else make_scorer(name)
    scorer.fit(train, y)
    with pytest.raises(NormprobeError, match="dimension 3 but the scorer was fitted on dimension 4"):
        scorer.score_samples(train[:, :3])
    bad = train[:5].copy()
    bad[2, 1] = math.nan
    with pytest.raises(NormprobeError, match="row 2 contains NaN or Inf"):
        scorer.score_samples(bad)
    with pytest.raises(NormprobeError, match="row 2 contains NaN or Inf"):
        clone(scorer).fit(bad)
    with pytest.raises(NormprobeError, match="labels: expected shape"):
        clone(scorer).fit(train, y[:-1])
    with pytest.raises(NormprobeError, match="retain must be in"):
        clone(scorer).set_params(retain=0.0).fit(train)


def test_fit_errors() -> None:
    with pytest.raises(NormprobeError, match="needs at least k \\+ 1 = 11"):
        KNNDistanceScorer(k=10).fit(np.ones((10, 3)))
    with pytest.raises(NormprobeError, match="k must be >= 1"):
        KNNDistanceScorer(k=0).fit(np.ones((10, 3)))
    with pytest.raises(NormprobeError, match="ridge must be > 0"):
        MahalanobisScorer(ridge=0.0).fit(np.ones((10, 3)))
    with pytest.raises(NormprobeError, match="zero within-class variance"):
        MahalanobisScorer().fit(np.ones((10, 3)))
    with pytest.raises(NormprobeError, match="norm is constant"):
        NormKNNScorer(k=2).fit(np.eye(5))


# ----------------------------------------------------------------------------- scikit-learn estimators


def id_and_ood(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train, _ = gaussian_classes(300, 16, seed=seed)
    test_id, _ = gaussian_classes(100, 16, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    ood = (0.3 * rng.standard_normal((100, 16)) + rng.normal(0.0, 1.0, 16)).astype(np.float32)
    return train, test_id, ood


@pytest.mark.parametrize("name", list(SCORERS))
def test_predict_is_calibrated_on_the_training_scores(name: str) -> None:
    train, test_id, ood = id_and_ood(20)
    scorer = scorer_class(name).from_settings(k=10).fit(train)
    assert scorer.offset_ == metrics.acceptance_threshold(scorer.train_scores_, 0.95)
    # 95% of ID-train is predicted familiar (leave-one-out scores), at least and as close as ties allow
    retained = (scorer.predict(None) == 1).mean()
    assert 0.95 <= retained < 0.95 + 1.5 / len(train)
    np.testing.assert_allclose(scorer.decision_function(ood), scorer.score_samples(ood) - scorer.offset_)
    assert set(np.unique(scorer.predict(ood))) <= {-1, 1}
    # the predictions agree with fpr@95tpr_id computed against ID-train
    assert (scorer.predict(ood) == 1).mean() == pytest.approx(
        metrics.fpr_at_tpr(scorer.train_scores_, scorer.score_samples(ood))
    )
    strict = clone(scorer).set_params(retain=0.5).fit(train)
    assert strict.offset_ > scorer.offset_ and (strict.predict(None) == 1).mean() == pytest.approx(
        0.5, abs=0.01
    )


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorers_are_scikit_learn_estimators(name: str) -> None:
    cls = scorer_class(name)
    scorer = cls.from_settings(k=7)
    copy = clone(scorer)
    assert copy is not scorer and copy.get_params() == scorer.get_params()
    assert clone(scorer.set_params(retain=0.9)).retain == 0.9
    assert isinstance(scorer, OutlierMixin) and is_outlier_detector(scorer)
    assert repr(cls()) == f"{cls.__name__}()"
    train, test_id, _ = id_and_ood(21)
    assert scorer.fit(train) is scorer
    # fit again, or fit a pickled copy: the same scores (fit is deterministic and keeps no state)
    np.testing.assert_array_equal(
        clone(scorer).fit(train).score_samples(test_id), scorer.score_samples(test_id)
    )
    restored = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(restored.score_samples(test_id), scorer.score_samples(test_id))
    # fit_predict (OutlierMixin) is fit(X).predict(X) on new data: no leave-one-out there
    np.testing.assert_array_equal(clone(scorer).fit_predict(train), scorer.predict(train))
    assert scorer.n_features_in_ == 16


@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
        estimator_checks.check_dont_overwrite_parameters,
        estimator_checks.check_fit_idempotent,
        estimator_checks.check_estimators_unfitted,
        estimator_checks.check_fit_score_takes_y,
        estimator_checks.check_n_features_in,
        estimator_checks.check_outliers_fit_predict,
    ],
    ids=lambda check: check.__name__,
)
@pytest.mark.parametrize("name", list(SCORERS))
def test_scikit_learn_estimator_checks(name: str, check) -> None:  # noqa: ANN001
    # k=3: scikit-learn's check data sets are small
    scorer = scorer_class(name).from_settings(k=3)
    check(type(scorer).__name__, scorer)


def auroc_scoring(estimator: object, X: np.ndarray, y: np.ndarray) -> float:  # noqa: N803
    """A GridSearchCV scoring callable: AUROC of ``score_samples`` with ID (y = 1) positive."""
    return metrics.auroc(estimator.score_samples(X)[y == 1], estimator.score_samples(X)[y == 0])


def test_a_scorer_in_a_pipeline_and_a_grid_search() -> None:
    train, test_id, ood = id_and_ood(22)
    pipe = Pipeline([("scale", StandardScaler()), ("ood", KNNDistanceScorer(k=5))])
    cloned = clone(pipe)
    assert cloned.named_steps["ood"] is not pipe.named_steps["ood"]
    assert cloned.get_params()["ood__k"] == 5
    cloned.fit(train)
    scaler = StandardScaler().fit(train)
    np.testing.assert_allclose(
        cloned.score_samples(ood),
        KNNDistanceScorer(k=5).fit(scaler.transform(train)).score_samples(scaler.transform(ood)),
    )
    assert set(np.unique(cloned.predict(ood))) <= {-1, 1}
    # novelty-detection CV: fit on ID-train only, score held-out ID-test (y = 1) against OOD (y = 0)
    X = np.concatenate([train, test_id, ood])
    y = np.r_[np.ones(len(train) + len(test_id)), np.zeros(len(ood))].astype(int)
    split = [(np.arange(len(train)), np.arange(len(train), len(X)))]
    search = GridSearchCV(pipe, {"ood__k": [1, 5, 20]}, scoring=auroc_scoring, cv=split).fit(X, y)
    assert search.best_params_["ood__k"] in (1, 5, 20)
    assert search.cv_results_["mean_test_score"].min() > 0.5
    best = search.best_estimator_.named_steps["ood"]
    assert isinstance(best, KNNDistanceScorer) and best.k == search.best_params_["ood__k"]


def test_mahalanobis_does_not_depend_on_the_thread_count() -> None:
    """Fitted and scored with one torch thread on the CPU (its eigendecomposition's last bits would
    otherwise follow the core count), leaving the caller's thread count as it was."""
    x, y = gaussian_classes(3000, 24, seed=31)
    queries, _ = gaussian_classes(500, 24, seed=32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            scorer = MahalanobisScorer().fit(x, y)
            results.append((scorer.score_samples(None), scorer.score_samples(queries)))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
