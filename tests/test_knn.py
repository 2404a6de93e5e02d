"""Cosine kNN search and the weighted kNN classifier (normprobe.knn)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from normprobe.device import pick_device
from normprobe.errors import NormprobeError
from normprobe.knn import (
    CosineIndex,
    KNNClassifier,
    Neighbors,
    _group_shape,
    _topk_rows,
    cosine_topk,
    kth_neighbor_distance,
)

MIB = 1 << 20
SMALL_BUDGET = 4 * MIB
"""Small enough to split a 4500-point bank into two column blocks and the queries into ~180-row blocks."""


def clustered(
    n: int, dim: int, n_classes: int, seed: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around centres shared by every seed, so queries match their bank."""
    centres = np.random.default_rng(1234).standard_normal((n_classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = centres[y] + noise * rng.standard_normal((n, dim))
    x *= rng.lognormal(0.0, 0.5, (n, 1))  # un-normalised, like real embeddings
    return x.astype(np.float32), y


def exact_sims(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return q @ b.T


def assert_valid_topk(result: Neighbors, sims: np.ndarray, k: int, atol: float = 1e-5) -> None:
    """``result`` is *a* correct top-k of ``sims`` (rows may differ from another only by tie order)."""
    got_sims = result.similarities.cpu().numpy()
    idx = result.indices.cpu().numpy()
    assert got_sims.shape == idx.shape == (sims.shape[0], k)
    top = np.partition(-sims, k - 1, axis=1)[:, :k]
    expected = np.sort(-top, axis=1)[:, ::-1]
    np.testing.assert_allclose(got_sims, expected, atol=atol)
    np.testing.assert_allclose(np.take_along_axis(sims, idx, axis=1), got_sims, atol=atol)
    assert all(len(set(row)) == k for row in idx)
    assert np.all(np.diff(got_sims, axis=1) <= 0)


def test_cosine_topk_matches_brute_force() -> None:
    bank, _ = clustered(600, 24, 4, seed=0)
    queries, _ = clustered(150, 24, 4, seed=1)
    result = cosine_topk(queries, bank, 30)
    assert result.similarities.dtype == torch.float32 and result.indices.dtype == torch.int64
    assert_valid_topk(result, exact_sims(queries, bank), 30)


def test_grouped_topk_is_exact_even_when_neighbours_are_adjacent() -> None:
    # wide enough for the grouped path; sorting each row puts all of its top-k in adjacent
    # columns, the worst case for a grouping, and 100 equal values tie at the k-th place
    gen = torch.Generator().manual_seed(0)
    sims = torch.rand(64, 30_000, generator=gen)
    adversarial = torch.sort(sims, dim=1).values
    adversarial[:, 100:200] = 0.999
    assert _group_shape(30_000, 40) is not None
    for block in (sims, adversarial):
        vals, idx = _topk_rows(block, 40)
        ref = torch.topk(block, 40, dim=1).values
        assert torch.equal(torch.sort(vals, dim=1, descending=True).values, ref)
        assert torch.equal(block.gather(1, idx), vals)
        assert all(len(set(row.tolist())) == 40 for row in idx)


def test_chunked_equals_unchunked() -> None:
    bank, y = clustered(4500, 8, 5, seed=2)
    queries, _ = clustered(300, 8, 5, seed=3)
    small = CosineIndex(bank, memory_budget_bytes=SMALL_BUDGET)
    qb, bb = small._block_sizes(len(queries), 10)
    assert qb < len(queries) and bb < len(bank)
    full = CosineIndex(bank)
    assert full._block_sizes(len(queries), 10) == (300, 4500)
    sims = exact_sims(queries, bank)
    assert_valid_topk(small.search(queries, 10), sims, 10)
    assert_valid_topk(full.search(queries, 10), sims, 10)
    a = KNNClassifier(k=10, memory_budget_bytes=SMALL_BUDGET).fit(bank, y)
    b = KNNClassifier(k=10).fit(bank, y)
    np.testing.assert_array_equal(a.predict(queries), b.predict(queries))
    np.testing.assert_array_equal(a.predict(), b.predict())


@pytest.mark.parametrize("budget", [SMALL_BUDGET, 1 << 30])
def test_leave_one_out_never_returns_self(budget: int) -> None:
    bank, _ = clustered(4500, 8, 5, seed=4)
    bank[1] = bank[0]  # a duplicate: it may vote for its twin, but never for itself
    result = CosineIndex(bank, memory_budget_bytes=budget).search(None, 12)
    idx = result.indices.numpy()
    assert not (idx == np.arange(len(bank))[:, None]).any()
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    sims = exact_sims(bank, bank)
    np.fill_diagonal(sims, -np.inf)
    assert_valid_topk(result, sims, 12)


def test_kth_neighbor_distance() -> None:
    bank, _ = clustered(400, 8, 3, seed=5)
    queries, _ = clustered(50, 8, 3, seed=6)
    expected = 1.0 - (-np.sort(-exact_sims(queries, bank), axis=1))[:, 6]
    np.testing.assert_allclose(kth_neighbor_distance(queries, bank, k=7).numpy(), expected, atol=1e-6)
    loo = exact_sims(bank, bank)
    np.fill_diagonal(loo, -np.inf)
    expected_loo = 1.0 - (-np.sort(-loo, axis=1))[:, 6]
    np.testing.assert_allclose(kth_neighbor_distance(None, bank, k=7).numpy(), expected_loo, atol=1e-6)


def test_vote_by_hand() -> None:
    # query (1, 0): sims 1 (label 1), 1/sqrt2 and 0 (label 0), all three vote
    bank = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels = np.array([1, 0, 0])
    query = np.array([[1.0, 0.0]])
    # T = 1: class 1 gets e^1 = 2.72, class 0 gets e^0.707 + e^0 = 3.03 -> 0
    assert KNNClassifier(k=3, temperature=1.0).fit(bank, labels).predict(query)[0] == 0
    # T = 0.1: class 1 gets e^10 = 22026, class 0 gets e^7.07 + 1 = 1177 -> 1
    assert KNNClassifier(k=3, temperature=0.1).fit(bank, labels).predict(query)[0] == 1
    # an exact tie goes to the smallest label, as in scikit-learn
    tie = KNNClassifier(k=2).fit(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([7, 3]))
    assert tie.predict(np.array([[1.0, 1.0]]))[0] == 3


def test_predictions_match_sklearn() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    temperature = 0.1
    bank, y = clustered(3000, 32, 6, seed=7, noise=2.5)
    queries, y_q = clustered(500, 32, 6, seed=8, noise=2.5)
    ours = KNNClassifier(k=50, temperature=temperature).fit(bank, y).predict(queries)
    # scikit-learn hands the callable cosine *distances* 1 - sim
    ref = KNeighborsClassifier(
        n_neighbors=50, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1.0 - d) / temperature)
    ).fit(bank, y)
    np.testing.assert_array_equal(ours, ref.predict(queries))
    assert 0.3 < (ours == y_q).mean() < 1.0  # non-trivial problem


def test_labels_keep_their_values_and_inputs_may_be_torch() -> None:
    bank, y = clustered(300, 8, 3, seed=9)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = KNNClassifier(k=10).fit(torch.from_numpy(bank).double(), names)
    pred = clf.predict(torch.from_numpy(bank[:20]))
    assert pred.dtype == names.dtype and set(pred) <= {"cat", "dog", "emu"}
    np.testing.assert_array_equal(
        pred, KNNClassifier(k=10).fit(bank, y).predict(bank[:20]).choose(["cat", "dog", "emu"])
    )
    neighbours = clf.kneighbors(bank[:5])
    assert neighbours.similarities.shape == (5, 10)


def test_faiss_backend_gives_the_same_neighbours() -> None:
    pytest.importorskip("faiss")
    bank, y = clustered(2000, 16, 4, seed=10)
    queries, _ = clustered(200, 16, 4, seed=11)
    sims = exact_sims(queries, bank)
    assert_valid_topk(cosine_topk(queries, bank, 20, backend="faiss"), sims, 20)
    loo_sims = exact_sims(bank, bank)
    np.fill_diagonal(loo_sims, -np.inf)
    loo = cosine_topk(None, bank, 20, backend="faiss")
    assert not (loo.indices.numpy() == np.arange(len(bank))[:, None]).any()
    assert_valid_topk(loo, loo_sims, 20)
    torch_clf = KNNClassifier(k=20).fit(bank, y)
    faiss_clf = KNNClassifier(k=20, backend="faiss").fit(bank, y)
    np.testing.assert_array_equal(torch_clf.predict(queries), faiss_clf.predict(queries))
    np.testing.assert_array_equal(torch_clf.predict(), faiss_clf.predict())


def test_missing_faiss_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(NormprobeError, match="faiss-cpu"):
        CosineIndex(np.eye(3), backend="faiss")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_bank_device() -> None:
    bank, y = clustered(1000, 16, 4, seed=12)
    queries, _ = clustered(100, 16, 4, seed=13)
    device = pick_device("cuda")
    gpu = CosineIndex(torch.from_numpy(bank).to(device)).search(torch.from_numpy(queries), 10)
    assert gpu.indices.is_cuda
    assert_valid_topk(gpu, exact_sims(queries, bank), 10)
    clf = KNNClassifier(k=10).fit(torch.from_numpy(bank).to(device), y)
    np.testing.assert_array_equal(clf.predict(queries), KNNClassifier(k=10).fit(bank, y).predict(queries))


def bad(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize(
    ("bank", "match"),
    [
        (bad([[1, 0], [math.nan, 1]]), "row 1 contains NaN or Inf"),
        (bad([[1, 0], [math.inf, 1]]), "row 1 contains NaN or Inf"),
        (bad([[1, 0], [0, 0]]), "row 1 has zero norm"),
        (np.ones(3), "expected shape"),
        (np.ones((0, 3)), "empty"),
        (np.ones((2, 2), dtype=bool), "real-valued"),
        ([[1.0, 2.0]], "numpy array or torch tensor"),
    ],
)
def test_bad_bank(bank: object, match: str) -> None:
    with pytest.raises(NormprobeError, match=match):
        CosineIndex(bank)  # type: ignore[arg-type]


def test_bad_queries_and_k() -> None:
    index = CosineIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(NormprobeError, match="dimension 3 but the bank has dimension 4"):
        index.search(np.ones((2, 3)), 1)
    with pytest.raises(NormprobeError, match="queries: row 1 contains NaN"):
        index.search(bad([[1, 0, 0, 0], [math.nan, 0, 0, 0]]), 1)
    with pytest.raises(NormprobeError, match="between 1 and the bank size = 4"):
        index.search(np.ones((2, 4)), 5)
    with pytest.raises(NormprobeError, match=r"bank size - 1 \(leave-one-out\) = 3"):
        index.search(None, 4)
    with pytest.raises(NormprobeError, match="unknown kNN backend"):
        CosineIndex(np.eye(3), backend="annoy")  # type: ignore[arg-type]


def test_classifier_errors() -> None:
    with pytest.raises(NormprobeError, match="not fitted"):
        KNNClassifier(k=2).predict(np.eye(3))
    with pytest.raises(NormprobeError, match="labels: expected shape"):
        KNNClassifier(k=2).fit(np.eye(3), np.array([0, 1]))
    with pytest.raises(NormprobeError, match="temperature"):
        KNNClassifier(k=2, temperature=0.0)
    with pytest.raises(NormprobeError, match="between 1 and the bank size"):
        KNNClassifier(k=5).fit(np.eye(3), np.array([0, 1, 1])).predict(np.eye(3))
