"""Out-of-distribution scorers as scikit-learn outlier detectors.

Every scorer is a scikit-learn estimator (``BaseEstimator`` + ``OutlierMixin``): its constructor
arguments are its parameters (``get_params`` / ``set_params``, ``sklearn.base.clone``), and

* ``fit(X, y=None) -> self`` fits on ID-train embeddings (``y``: class labels, used only by the
  class-conditional Mahalanobis score);
* ``score_samples(X)``: **larger = more familiar (in-distribution)**, as everywhere in normprobe
  (see :mod:`normprobe.metrics`);
* ``decision_function(X) = score_samples(X) - offset_``, and ``predict(X)`` gives +1 (familiar,
  ``decision_function >= 0``) or -1 (unfamiliar), as scikit-learn's ``IsolationForest`` and
  ``LocalOutlierFactor(novelty=True)``;
* ``offset_`` is calibrated on the training scores ``train_scores_``: the ``ceil(retain * n)``-th
  largest, so a fraction ``retain`` (default 0.95) of ID-train is predicted familiar, the same
  threshold rule as ``fpr@95tpr_id`` (:func:`normprobe.metrics.acceptance_threshold`).

``train_scores_`` are leave-one-out where a scorer looks at neighbours (no training point is its
own neighbour), and ``score_samples(None)`` returns them: the normprobe extension of the
scikit-learn API that scores the training set honestly. A scorer thus drops into a scikit-learn
``Pipeline`` or ``GridSearchCV``.

Scorers, by registry name (:data:`SCORERS`, :func:`make_scorer`):

``"norm"``         :class:`NormScorer` -- the L2 norm of the raw embedding (Draganov et al., 2025).
``"knn"``          :class:`KNNDistanceScorer` -- minus the cosine distance to the k-th nearest
                   ID-train embedding (Sun et al., 2022).
``"mahalanobis"``  :class:`MahalanobisScorer` -- minus the smallest Mahalanobis distance to a class
                   mean under a shared covariance (Lee et al., 2018).
``"norm+knn"``     :class:`NormKNNScorer` -- the sum of the two z-scored scores above.

Each class builds itself from a run's settings with :meth:`Scorer.from_settings`, taking the ones it
uses. Inputs are numpy arrays, torch tensors (kept on their device) or array-likes ``(n, d)``;
results are float64 numpy arrays.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from normprobe.errors import NormprobeError
from normprobe.knn import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    Backend,
    CosineIndex,
    as_embeddings,
    intra_op_threads,
    shared_index,
)
from normprobe.metrics import acceptance_threshold

_S = TypeVar("_S", bound="Scorer")


def _checked(x: Any, name: str) -> torch.Tensor:
    """2-D float32 tensor with every value finite (a NaN/Inf makes its row's norm non-finite)."""
    t = as_embeddings(x if isinstance(x, np.ndarray | torch.Tensor) else np.asarray(x), name)
    norms = torch.linalg.vector_norm(t, dim=1)
    if not bool(torch.isfinite(norms).all()):
        row = int((~torch.isfinite(norms)).nonzero()[0, 0])
        raise NormprobeError(f"{name}: row {row} contains NaN or Inf")
    return t


def _labels(y: Any, n: int) -> np.ndarray | None:
    if y is None:
        return None
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise NormprobeError(f"labels: expected shape ({n},) to match the embeddings, got {labels.shape}")
    return labels


class Scorer(OutlierMixin, BaseEstimator):
    """Base class: input checks, the calibrated threshold and the scikit-learn outlier-detector API.

    A subclass declares its parameters in ``__init__`` (stored unchanged, checked in ``fit``, as
    scikit-learn requires), implements ``_fit`` (fit, then return the training scores,
    leave-one-out where neighbours are involved) and ``_score``, and may override
    :meth:`from_settings`.
    """

    name: ClassVar[str]
    """The registry name (:data:`SCORERS`), used in column names (``score_<name>``)."""
    label: ClassVar[str]
    """A readable name, for reports."""
    retain: float

    @classmethod
    def from_settings(cls: type[_S], *, k: int) -> _S:
        """The scorer of a run whose kNN OOD scores use ``k`` neighbours (``--ood-k``).

        Each class takes the settings it uses; this one (no neighbours) takes none.
        """
        return cls()

    def fit(self: _S, X: Any, y: Any = None, *, index: CosineIndex | None = None) -> _S:
        """Fit on ID-train embeddings ``X`` (``y``: class labels, used by class-conditional scorers).

        ``index``: a :class:`~normprobe.knn.CosineIndex` already built on ``X``, which the
        neighbour-based scorers search instead of building their own (a memoizing one, shared with
        the kNN classifier, searches each set once; see ``CosineIndex(memoize=True)``).
        """
        if not 0.0 < self.retain <= 1.0:
            raise NormprobeError(f"retain must be in (0, 1], got {self.retain}")
        x = _checked(X, "embeddings")
        train_scores = self._fit(x, _labels(y, x.shape[0]), shared_index(index, x))
        self.n_features_in_ = int(x.shape[1])
        self.train_scores_ = train_scores
        self.offset_ = acceptance_threshold(train_scores, self.retain)
        return self

    def score_samples(self, X: Any = None) -> np.ndarray:
        """Scores, larger = more familiar; ``None`` gives the training scores (leave-one-out)."""
        check_is_fitted(self, "train_scores_")
        if X is None:
            return self.train_scores_.copy()
        x = _checked(X, "embeddings")
        if x.shape[1] != self.n_features_in_:
            raise NormprobeError(
                f"embeddings have dimension {x.shape[1]} but the scorer was fitted on dimension "
                f"{self.n_features_in_}"
            )
        return self._score(x)

    def decision_function(self, X: Any = None) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for samples below the calibrated threshold."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any = None) -> np.ndarray:
        """+1 (familiar: ``score >= offset_``) or -1 (unfamiliar) per sample."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None, index: CosineIndex | None) -> np.ndarray:
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


class NormScorer(Scorer):
    """The L2 norm ``||z||`` of the un-normalised embedding.

    Cosine-similarity SSL losses grow the norm of what the encoder sees often, so small norms
    flag novel samples (Draganov et al., 2025, Section 5). Fitting records only the training
    norms (and so the threshold).
    """

    name = "norm"
    label = "embedding norm"

    def __init__(self, *, retain: float = 0.95) -> None:
        self.retain = retain

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None, index: CosineIndex | None) -> np.ndarray:
        return self._score(x)

    def _score(self, x: torch.Tensor) -> np.ndarray:
        return torch.linalg.vector_norm(x.double(), dim=1).cpu().numpy()


class _NeighbourScorer(Scorer):
    """The parameters of a scorer that searches the ``k`` nearest ID-train embeddings: ``k``
    (``--ood-k`` in a run) and the :class:`~normprobe.knn.CosineIndex` search options."""

    def __init__(
        self,
        k: int = 50,
        *,
        backend: Backend = "torch",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        retain: float = 0.95,
    ) -> None:
        self.k = k
        self.backend = backend
        self.memory_budget_bytes = memory_budget_bytes
        self.retain = retain

    @classmethod
    def from_settings(cls: type[_S], *, k: int) -> _S:
        return cls(k=k)


class KNNDistanceScorer(_NeighbourScorer):
    """Minus the cosine distance to the k-th nearest ID-train embedding (Sun et al., 2022).

    Sun et al., "Out-of-distribution detection with deep nearest neighbors" (ICML 2022): with
    normalised features ``z* = z / ||z||``, the score is ``-||z* - z*_(k)||`` where ``z*_(k)`` is
    the k-th nearest normalised training feature, k = 50 by default. On the unit sphere that
    distance is ``sqrt(2 * (1 - cos))``, a monotone function of the cosine distance, so we return
    ``-(1 - cos(z, z_(k)))``: the same ranking, hence the same AUROC/AUPR/FPR. The search is
    :meth:`normprobe.knn.CosineIndex.kth_similarity`.
    """

    name = "knn"
    label = "kNN distance"

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None, index: CosineIndex | None) -> np.ndarray:
        if self.k < 1:
            raise NormprobeError(f"k must be >= 1, got {self.k}")
        # k + 1 points are needed so that leave-one-out scoring of the training set works too
        if x.shape[0] < self.k + 1:
            raise NormprobeError(
                f"k={self.k} needs at least k + 1 = {self.k + 1} ID-train samples, got {x.shape[0]}"
            )
        self.index_ = index or CosineIndex(
            x, backend=self.backend, memory_budget_bytes=self.memory_budget_bytes
        )
        return self._kth(None)

    def _kth(self, queries: torch.Tensor | None) -> np.ndarray:
        # float64 before subtracting: 1 - cos loses digits in float32 for near neighbours
        return self.index_.kth_similarity(queries, self.k).double().cpu().numpy() - 1.0

    def _score(self, x: torch.Tensor) -> np.ndarray:
        return self._kth(x)


def _one_thread_on_cpu(x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """One torch thread for CPU work of many small operations (see :func:`normprobe.knn.intra_op_threads`)."""
    return intra_op_threads(1) if x.device.type == "cpu" else contextlib.nullcontext()


class MahalanobisScorer(Scorer):
    """Minus the smallest Mahalanobis distance to a class mean (Lee et al., 2018).

    Lee et al., "A simple unified framework for detecting out-of-distribution samples and
    adversarial attacks" (NeurIPS 2018): fit class means ``mu_c`` and one covariance shared by
    all classes, ``Sigma = 1/N sum_c sum_{i in c} (z_i - mu_c)(z_i - mu_c)^T``; the score is
    ``max_c -(z - mu_c)^T Sigma^-1 (z - mu_c)``. Without labels there is one class (a single
    Gaussian). Only this feature-space score is implemented, not their input preprocessing or
    multi-layer ensemble. It works on the raw (un-normalised) embeddings.

    ``Sigma`` is inverted through its eigendecomposition with a ridge ``ridge * trace(Sigma) / d``
    added to every eigenvalue, so rank-deficient covariances (d > N, collapsed dimensions) stay
    well-conditioned; the ridge is relative, so the score does not depend on the embedding scale.
    Computed in float64, in row blocks of ``block_rows``, with one torch thread on the CPU: the
    ``d x d`` eigendecomposition is hundreds of small steps that threads only wait on each other for
    (seconds instead of milliseconds beside another busy process), and its last bits would depend
    on the machine's core count. The Gaussian is a global fit, so the training points are scored as
    they are (no leave-one-out).
    """

    name = "mahalanobis"
    label = "Mahalanobis distance"

    def __init__(self, ridge: float = 1e-6, *, block_rows: int = 8192, retain: float = 0.95) -> None:
        self.ridge = ridge
        self.block_rows = block_rows
        self.retain = retain

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None, index: CosineIndex | None) -> np.ndarray:
        if not self.ridge > 0:
            raise NormprobeError(f"ridge must be > 0, got {self.ridge}")
        with _one_thread_on_cpu(x):
            return self._fit_gaussian(x, labels)

    def _fit_gaussian(self, x: torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        n, d = x.shape
        if labels is None:
            codes = np.zeros(n, dtype=np.int64)
            self.classes_ = np.array([0])
        else:
            self.classes_, codes = np.unique(labels, return_inverse=True)
        codes_t = torch.from_numpy(codes.reshape(-1).astype(np.int64)).to(x.device)
        n_classes = len(self.classes_)
        block = self.block_rows
        sums = torch.zeros(n_classes, d, dtype=torch.float64, device=x.device)
        for r0 in range(0, n, block):
            sums.index_add_(0, codes_t[r0 : r0 + block], x[r0 : r0 + block].double())
        counts = torch.bincount(codes_t, minlength=n_classes).double()
        means = sums / counts.unsqueeze(1)
        scatter = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for r0 in range(0, n, block):
            centred = x[r0 : r0 + block].double() - means[codes_t[r0 : r0 + block]]
            scatter.addmm_(centred.T, centred)
        cov = scatter / n
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0.0)  # round-off can make null eigenvalues slightly negative
        trace = float(eigvals.sum())
        if not trace > 0:
            raise NormprobeError(
                "the ID-train embeddings have zero within-class variance; Mahalanobis is undefined"
            )
        # whitening W with W W^T = (Sigma + eps I)^-1: distances become Euclidean after z -> z W
        self.whitener_ = eigvecs / torch.sqrt(eigvals + self.ridge * trace / d)
        self.white_means_ = means @ self.whitener_
        return self._score(x)

    def _score(self, x: torch.Tensor) -> np.ndarray:
        with _one_thread_on_cpu(x):
            return self._distances(x)

    def _distances(self, x: torch.Tensor) -> np.ndarray:
        w = self.whitener_.to(x.device)
        mu = self.white_means_.to(x.device)
        mu_sq = (mu * mu).sum(1)
        out = []
        for r0 in range(0, x.shape[0], self.block_rows):
            z = x[r0 : r0 + self.block_rows].double() @ w
            # ||z - mu_c||^2 by expansion: one GEMM against all class means (float64 keeps the
            # cancellation harmless at these magnitudes)
            d2 = (z * z).sum(1, keepdim=True) - 2.0 * z @ mu.T + mu_sq
            out.append(d2.amin(dim=1).clamp_min_(0.0))
        return -torch.cat(out).cpu().numpy()


def _zscore_stats(values: np.ndarray, what: str) -> tuple[float, float]:
    mean, std = float(values.mean()), float(values.std())
    if not std > 0:
        raise NormprobeError(f"{what} is constant on the ID-train set; it cannot be standardised")
    return mean, std


class NormKNNScorer(_NeighbourScorer):
    """Embedding norm and kNN distance combined: ``(n - mu_n) / sd_n + (s - mu_s) / sd_s``.

    ``n`` is the norm (:class:`NormScorer`), ``s`` the kNN score (:class:`KNNDistanceScorer`),
    each standardised by its mean and standard deviation over the ID-train scores (the kNN ones
    leave-one-out), so the two signals -- how familiar the encoder finds a sample (norm) and how
    close it lies to the training data (direction) -- get equal weight whatever their scales.
    """

    name = "norm+knn"
    label = "norm + kNN"

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None, index: CosineIndex | None) -> np.ndarray:
        self.norm_ = NormScorer(retain=self.retain).fit(x)
        self.knn_ = KNNDistanceScorer(
            self.k, backend=self.backend, memory_budget_bytes=self.memory_budget_bytes, retain=self.retain
        ).fit(x, index=index)
        self.norm_mean_, self.norm_std_ = _zscore_stats(self.norm_.train_scores_, "the embedding norm")
        self.knn_mean_, self.knn_std_ = _zscore_stats(self.knn_.train_scores_, "the kNN score")
        return self._combine(self.norm_.train_scores_, self.knn_.train_scores_)

    def _combine(self, norms: np.ndarray, knn: np.ndarray) -> np.ndarray:
        return (norms - self.norm_mean_) / self.norm_std_ + (knn - self.knn_mean_) / self.knn_std_

    def _score(self, x: torch.Tensor) -> np.ndarray:
        return self._combine(self.norm_.score_samples(x), self.knn_.score_samples(x))


SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (NormScorer, KNNDistanceScorer, MahalanobisScorer, NormKNNScorer)
}
"""Scorer classes by registry name."""


def scorer_class(name: str) -> type[Scorer]:
    """The scorer class registered as ``name``."""
    try:
        return SCORERS[name]
    except KeyError:
        raise NormprobeError(f"unknown scorer {name!r}; choose one of: {', '.join(SCORERS)}") from None


def make_scorer(name: str, **params: Any) -> Scorer:
    """A new scorer by registry name, with ``params`` for its constructor."""
    cls = scorer_class(name)
    known = list(cls().get_params())
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise NormprobeError(
            f"scorer {name!r} has no parameter {unknown[0]!r} (parameters: {', '.join(known)})"
        )
    return cls(**params)
