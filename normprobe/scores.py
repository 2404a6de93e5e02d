"""Out-of-distribution scorers, scikit-learn style: ``fit(id_train, labels=None) -> self`` and
``score_samples(x) -> np.ndarray``.

Score direction (as everywhere in normprobe, see :mod:`normprobe.metrics`): **larger = more
familiar (in-distribution)**. ``score_samples(None)`` scores the fitted ID-train samples
themselves; scorers that look at neighbours then leave each point out of its own neighbours, so
ID-train scores are not inflated by self-matches.

Scorers, by registry name (:data:`SCORERS`, :func:`make_scorer`):

``"norm"``         :class:`NormScorer` -- the L2 norm of the raw embedding (Draganov et al., 2025).
``"knn"``          :class:`KNNDistanceScorer` -- minus the cosine distance to the k-th nearest
                   ID-train embedding (Sun et al., 2022).
``"mahalanobis"``  :class:`MahalanobisScorer` -- minus the smallest Mahalanobis distance to a class
                   mean under a shared covariance (Lee et al., 2018).
``"norm+knn"``     :class:`NormKNNScorer` -- the sum of the two z-scored scores above.

Inputs are numpy arrays or torch tensors ``(n, d)``; results are float64 numpy arrays.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from normprobe.errors import NormprobeError
from normprobe.knn import DEFAULT_MEMORY_BUDGET_BYTES, ArrayLike, Backend, CosineIndex, as_embeddings

_S = TypeVar("_S", bound="Scorer")


def _checked(x: ArrayLike, name: str) -> torch.Tensor:
    """2-D float32 tensor with every value finite (a NaN/Inf makes its row's norm non-finite)."""
    t = as_embeddings(x, name)
    norms = torch.linalg.vector_norm(t, dim=1)
    if not bool(torch.isfinite(norms).all()):
        row = int((~torch.isfinite(norms)).nonzero()[0, 0])
        raise NormprobeError(f"{name}: row {row} contains NaN or Inf")
    return t


class Scorer:
    """Base class: input checks, the fitted state and the ``score_samples(None)`` convention."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.dim_: int | None = None
        self.n_fit_: int | None = None

    def fit(self: _S, embeddings: ArrayLike, labels: ArrayLike | None = None) -> _S:
        """Fit on ID-train embeddings (``labels`` are used only by class-conditional scorers)."""
        x = _checked(embeddings, "embeddings")
        y = None
        if labels is not None:
            y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise NormprobeError(
                    f"labels: expected shape ({x.shape[0]},) to match the embeddings, got {y.shape}"
                )
        self._fit(x, y)
        self.dim_, self.n_fit_ = int(x.shape[1]), int(x.shape[0])
        return self

    def score_samples(self, embeddings: ArrayLike | None) -> np.ndarray:
        """Scores, larger = more familiar; ``None`` scores the fitted samples (leave-one-out)."""
        if self.dim_ is None:
            raise NormprobeError(f"{type(self).__name__} is not fitted; call fit(id_train_embeddings) first")
        if embeddings is None:
            return self._score_fit()
        x = _checked(embeddings, "embeddings")
        if x.shape[1] != self.dim_:
            raise NormprobeError(
                f"embeddings have dimension {x.shape[1]} but the scorer was fitted on dimension {self.dim_}"
            )
        return self._score(x)

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None) -> None:
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _score_fit(self) -> np.ndarray:
        raise NotImplementedError


def _zscore_stats(values: np.ndarray, what: str) -> tuple[float, float]:
    mean, std = float(values.mean()), float(values.std())
    if not std > 0:
        raise NormprobeError(f"{what} is constant on the ID-train set; it cannot be standardised")
    return mean, std


class NormScorer(Scorer):
    """The L2 norm ``||z||`` of the un-normalised embedding.

    Cosine-similarity SSL losses grow the norm of what the encoder sees often, so small norms
    flag novel samples (Draganov et al., 2025, Section 5). Fitting only records the dimension
    and the ID-train norms (their mean/std are used by :class:`NormKNNScorer`).
    """

    name = "norm"

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None) -> None:
        self.train_norms_ = self._score(x)

    def _score(self, x: torch.Tensor) -> np.ndarray:
        return torch.linalg.vector_norm(x.double(), dim=1).cpu().numpy()

    def _score_fit(self) -> np.ndarray:
        return self.train_norms_.copy()


class KNNDistanceScorer(Scorer):
    """Minus the cosine distance to the k-th nearest ID-train embedding (Sun et al., 2022).

    Sun et al., "Out-of-distribution detection with deep nearest neighbors" (ICML 2022): with
    normalised features ``z* = z / ||z||``, the score is ``-||z* - z*_(k)||`` where ``z*_(k)`` is
    the k-th nearest normalised training feature, k = 50 by default. On the unit sphere that
    distance is ``sqrt(2 * (1 - cos))``, a monotone function of the cosine distance, so we return
    ``-(1 - cos(z, z_(k)))``: the same ranking, hence the same AUROC/AUPR/FPR.
    """

    name = "knn"

    def __init__(
        self,
        k: int = 50,
        *,
        backend: Backend = "torch",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> None:
        super().__init__()
        if k < 1:
            raise NormprobeError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.backend: Backend = backend
        self.memory_budget_bytes = int(memory_budget_bytes)

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None) -> None:
        # k + 1 points are needed so that leave-one-out scoring of the training set works too
        if x.shape[0] < self.k + 1:
            raise NormprobeError(
                f"k={self.k} needs at least k + 1 = {self.k + 1} ID-train samples, got {x.shape[0]}"
            )
        self.index_ = CosineIndex(x, backend=self.backend, memory_budget_bytes=self.memory_budget_bytes)

    def _kth_similarity(self, queries: torch.Tensor | None, k: int) -> np.ndarray:
        """The k-th largest cosine similarity of each query: the smallest of its top k."""
        blocks = self.index_.iter_search(queries, k, sort=False)
        return torch.cat([block.similarities.amin(dim=1) for _, block in blocks]).double().cpu().numpy()

    def _score(self, x: torch.Tensor) -> np.ndarray:
        return self._kth_similarity(x, self.k) - 1.0

    def _score_fit(self) -> np.ndarray:
        return self._kth_similarity(None, self.k) - 1.0

    def _score_fit_rows(self, rows: np.ndarray) -> np.ndarray:
        """Leave-one-out scores of some training rows: each row's nearest neighbour is itself
        (cosine 1), so its k-th neighbour among the others is the (k+1)-th overall."""
        queries = self.index_.bank[torch.from_numpy(rows).to(self.index_.device)]
        return self._kth_similarity(queries, self.k + 1) - 1.0


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
    Computed in float64, in row blocks of ``block_rows``.
    """

    name = "mahalanobis"

    def __init__(self, ridge: float = 1e-6, *, block_rows: int = 8192) -> None:
        super().__init__()
        if not ridge > 0:
            raise NormprobeError(f"ridge must be > 0, got {ridge}")
        self.ridge = float(ridge)
        self.block_rows = int(block_rows)

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None) -> None:
        n, d = x.shape
        if labels is None:
            codes = np.zeros(n, dtype=np.int64)
            self.classes_ = np.array([0])
        else:
            self.classes_, codes = np.unique(labels, return_inverse=True)
        codes_t = torch.from_numpy(codes.reshape(-1).astype(np.int64)).to(x.device)
        n_classes = len(self.classes_)
        sums = torch.zeros(n_classes, d, dtype=torch.float64, device=x.device)
        for r0 in range(0, n, self.block_rows):
            sums.index_add_(0, codes_t[r0 : r0 + self.block_rows], x[r0 : r0 + self.block_rows].double())
        counts = torch.bincount(codes_t, minlength=n_classes).double()
        means = sums / counts.unsqueeze(1)
        scatter = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for r0 in range(0, n, self.block_rows):
            centred = x[r0 : r0 + self.block_rows].double() - means[codes_t[r0 : r0 + self.block_rows]]
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
        # the Gaussian is a global fit: ID-train points are scored as they are (no leave-one-out)
        self.train_scores_ = self._score(x)

    def _score(self, x: torch.Tensor) -> np.ndarray:
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

    def _score_fit(self) -> np.ndarray:
        return self.train_scores_.copy()


class NormKNNScorer(Scorer):
    """Embedding norm and kNN distance combined: ``(n - mu_n) / sd_n + (s - mu_s) / sd_s``.

    ``n`` is the norm (:class:`NormScorer`), ``s`` the kNN score (:class:`KNNDistanceScorer`),
    each standardised by its mean and standard deviation on ID-train, so the two signals -- how
    familiar the encoder finds a sample (norm) and how close it lies to the training data
    (direction) -- get equal weight whatever their scales. The kNN statistics are computed
    leave-one-out on a seeded random subset of at most ``n_stat_samples`` training points, which
    keeps fitting cheap on large training sets.
    """

    name = "norm+knn"

    def __init__(
        self,
        k: int = 50,
        *,
        n_stat_samples: int = 10_000,
        seed: int = 0,
        backend: Backend = "torch",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> None:
        super().__init__()
        if n_stat_samples < 2:
            raise NormprobeError(f"n_stat_samples must be >= 2, got {n_stat_samples}")
        self.norm = NormScorer()
        self.knn = KNNDistanceScorer(k, backend=backend, memory_budget_bytes=memory_budget_bytes)
        self.n_stat_samples = int(n_stat_samples)
        self.seed = int(seed)

    def _fit(self, x: torch.Tensor, labels: np.ndarray | None) -> None:
        self.norm.fit(x)
        self.knn.fit(x)
        self.norm_mean_, self.norm_std_ = _zscore_stats(self.norm.score_samples(None), "the embedding norm")
        n = x.shape[0]
        rows = np.arange(n)
        if n > self.n_stat_samples:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, self.n_stat_samples, replace=False))
        self.knn_mean_, self.knn_std_ = _zscore_stats(self.knn._score_fit_rows(rows), "the kNN score")

    def _combine(self, norms: np.ndarray, knn: np.ndarray) -> np.ndarray:
        return (norms - self.norm_mean_) / self.norm_std_ + (knn - self.knn_mean_) / self.knn_std_

    def _score(self, x: torch.Tensor) -> np.ndarray:
        return self._combine(self.norm.score_samples(x), self.knn.score_samples(x))

    def _score_fit(self) -> np.ndarray:
        return self._combine(self.norm.score_samples(None), self.knn.score_samples(None))


SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (NormScorer, KNNDistanceScorer, MahalanobisScorer, NormKNNScorer)
}
"""Scorer classes by registry name."""

_USES_K = (KNNDistanceScorer, NormKNNScorer)
SEEDED: tuple[type[Scorer], ...] = (NormKNNScorer,)
"""Scorers whose fit draws random numbers (norm+knn: the subset behind its kNN statistics)."""


def make_scorer(name: str, *, k: int = 50, seed: int = 0, **params: Any) -> Scorer:
    """A new scorer by registry name.

    ``k`` is the neighbour count of the kNN-based scorers and ``seed`` the seed of the
    :data:`SEEDED` ones; each is ignored by the others, so one call site can build every scorer
    from the same settings. Other ``params`` go to the class.
    """
    try:
        cls = SCORERS[name]
    except KeyError:
        raise NormprobeError(f"unknown scorer {name!r}; choose one of: {', '.join(SCORERS)}") from None
    if issubclass(cls, _USES_K):
        params["k"] = k
    if issubclass(cls, SEEDED):
        params["seed"] = seed
    try:
        return cls(**params)
    except TypeError as exc:
        raise NormprobeError(f"scorer {name!r}: {exc}") from None
