"""Cosine kNN search and the weighted kNN classifier (normprobe.knn)."""

from __future__ import annotations

import math
import sys
from collections.abc import Generator

import numpy as np
import pytest
import torch

import normprobe.knn as knn_module
from normprobe.device import pick_device
from normprobe.errors import NormprobeError
from normprobe.knn import (
    CosineIndex,
    KNNClassifier,
    Neighbors,
    _bf16_candidates,
    _bf16_error,
    _bf16_floor,
    _bf16_threshold,
    _group_shape,
    _round_bank,
    _topk_rows,
    cosine_topk,
    kth_neighbor_distance,
    normalize_embeddings,
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


# --- the bfloat16 candidate pass (run with bf16_prefilter=True whatever the CPU, so it is
# tested everywhere; on a CPU without bfloat16 instructions torch emulates the GEMM)

U = 2.0**-8


def loo_sims(bank: np.ndarray) -> np.ndarray:
    sims = exact_sims(bank, bank)
    np.fill_diagonal(sims, -np.inf)
    return sims


def assert_same_neighbours(got: Neighbors, ref: Neighbors, sims: np.ndarray, k: int) -> None:
    """Both are valid top-k of ``sims`` and pick the same points wherever the k-th and the
    (k+1)-th similarity are not (nearly) tied; tied rows may differ only in which tie is kept."""
    assert_valid_topk(got, sims, k)
    assert_valid_topk(ref, sims, k)
    ordered = -np.partition(-sims, [k - 1, k], axis=1)
    decided = ordered[:, k - 1] - ordered[:, k] > 1e-5
    a, b = np.sort(got.indices.numpy(), axis=1), np.sort(ref.indices.numpy(), axis=1)
    np.testing.assert_array_equal(a[decided], b[decided])
    np.testing.assert_allclose(got.similarities.numpy(), ref.similarities.numpy(), atol=1e-6)


def record_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(rows left to the float32 fallback, rows) for each call of the candidate pass."""
    counts: list[tuple[int, int]] = []
    original = knn_module._bf16_candidates

    def spy(*args: object) -> knn_module._Candidates:
        candidates = original(*args)  # type: ignore[arg-type]
        counts.append((int(candidates.fallback.sum()), candidates.fallback.numel()))
        return candidates

    monkeypatch.setattr(knn_module, "_bf16_candidates", spy)
    return counts


def hard_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian rows, rows with one dominant component, and near-constant rows: the last two put
    many components at the same binade, where bfloat16 rounding errors add up coherently."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x[: n // 3, 0] *= 100.0
    x[n // 3 : 2 * n // 3] = 1.0 + rng.uniform(0.0, U, (2 * n // 3 - n // 3, dim))
    return x.astype(np.float32)


@pytest.mark.parametrize("dim", [3, 64, 512, 2048])
def test_bf16_gemm_error_is_within_the_bound(dim: int) -> None:
    # the premise of the exactness proof, checked on this machine's GEMM kernel:
    # |bf16 GEMM entry - float32 product| <= e (accumulation and input rounding) + u |entry|
    bank = normalize_embeddings(hard_vectors(2000, dim, seed=20))
    queries = torch.cat([bank[::7], normalize_embeddings(hard_vectors(150, dim, seed=21))])
    rounded = _round_bank(bank)
    q16 = queries.bfloat16()
    error = _bf16_error(queries, q16, rounded)
    approx = torch.mm(q16, rounded.values.T).double()
    exact = torch.mm(queries, bank.T).double()
    bound = error.unsqueeze(1) + U * approx.abs()
    assert bool(((approx - exact).abs() <= bound).all())


def test_bf16_gemm_rounds_to_nearest() -> None:
    # 1 + 2^-8 + 2^-12 lies above the midpoint between the bfloat16 values 1 and 1 + 2^-7:
    # round-to-nearest gives 1 + 2^-7, truncation would give 1 (and break the bound)
    a = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.bfloat16)
    b = torch.tensor([[1.0, 2.0**-8, 2.0**-12]], dtype=torch.bfloat16)
    assert float(torch.mm(a, b.T)) == 1.0 + 2.0**-7
    assert float(torch.mm(-a, b.T)) == -(1.0 + 2.0**-7)


def test_bf16_floor_is_the_largest_bfloat16_not_above() -> None:
    gen = torch.Generator().manual_seed(22)
    t = torch.cat(
        [
            torch.randn(10_000, generator=gen, dtype=torch.float64),
            torch.randn(1000, generator=gen, dtype=torch.float64) * 1e-30,
            torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5 + 2.0**-9, -(0.5 + 2.0**-9), -1e-45]),
            torch.randn(1000, generator=gen).bfloat16().double(),  # already bfloat16
        ]
    )
    floor = _bf16_floor(t)
    assert floor.dtype == torch.bfloat16
    assert bool((floor.double() <= t).all())
    # one step up (towards +inf) from the floor is above t
    bits = floor.clone().view(torch.int16)
    bits += torch.where(bits < 0, -1, 1).to(torch.int16)
    bits[floor.double() == 0] = 1  # from either zero, the next value up is the smallest subnormal
    assert bool((bits.view(torch.bfloat16).double() > t).all())
    exact = t[-1000:]
    assert torch.equal(_bf16_floor(exact).double(), exact)


def test_bf16_candidates_are_exactly_the_columns_at_or_above_the_threshold() -> None:
    # values from a few bfloat16 levels, so that many sit exactly at the threshold
    gen = torch.Generator().manual_seed(23)
    m, lanes, n, width = 4, 64, 40, 4096
    levels = torch.tensor([0.5 - j * 2.0**-9 for j in range(8)] + [0.1, -0.3])  # bfloat16 steps
    sims16 = levels[torch.randint(0, len(levels), (n, width), generator=gen)].bfloat16()
    sims16[:, -100:] = -math.inf  # padding
    error = torch.rand(n, generator=gen, dtype=torch.float64) * 0.004
    k = 50
    group_max = sims16.view(n, -1, m, lanes).amax(dim=2).view(n, -1).float()
    threshold = _bf16_threshold(torch.topk(group_max, k, dim=1).values[:, -1].double(), error)
    candidates = _bf16_candidates(sims16, k, error, width, m)
    assert not candidates.fallback.any()
    for row in range(n):
        got = candidates.cols[candidates.crow[row] : candidates.crow[row + 1]]
        expected = (sims16[row] >= threshold[row]).nonzero().squeeze(1)
        assert torch.equal(torch.sort(got).values, expected)
        assert bool((sims16[row, expected] == threshold[row]).any())  # the boundary case occurs


def test_bf16_candidates_over_the_cap_fall_back() -> None:
    # one row whose 8 candidates lie in two groups (members j * 64 + lane of lanes 0 and 1)
    m, k = 4, 2
    sims16 = torch.full((2, 2048), 0.05, dtype=torch.bfloat16)
    sims16[:, :1024] = torch.linspace(0.0, 0.1, 1024)
    top = [j * 64 + lane for j in range(m) for lane in (0, 1)]
    sims16[0, top] = 0.9
    sims16[1, :2] = 0.9  # a row with two candidates
    error = torch.full((2,), 1e-3, dtype=torch.float64)
    for cap, fallback in [(8, [False, False]), (5, [True, False]), (1, [True, True])]:
        # cap 5: two hit groups pass the first check, the member count catches the row
        candidates = _bf16_candidates(sims16, k, error, cap, m)
        assert candidates.fallback.tolist() == fallback
        counts = candidates.crow.diff().tolist()
        assert counts == [0 if fallback[0] else 8, 0 if fallback[1] else 2]
        if not fallback[0]:
            assert sorted(candidates.cols[:8].tolist()) == sorted(top)


@pytest.mark.parametrize(("dim", "k"), [(16, 1), (16, 50), (128, 200)])
@pytest.mark.parametrize("budget", [SMALL_BUDGET, 1 << 30])
def test_bf16_path_equals_float32_and_brute_force(dim: int, k: int, budget: int) -> None:
    # the small budget splits the bank into a bfloat16 block and a float32 one (too narrow)
    bank, y = clustered(4500, dim, 5, seed=24, noise=3.0)
    queries, _ = clustered(300, dim, 5, seed=25, noise=3.0)
    fast = CosineIndex(bank, memory_budget_bytes=budget, bf16_prefilter=True)
    slow = CosineIndex(bank, memory_budget_bytes=budget, bf16_prefilter=False)
    assert fast._bf16 is not None and slow._bf16 is None
    assert_same_neighbours(fast.search(queries, k), slow.search(queries, k), exact_sims(queries, bank), k)
    loo = fast.search(None, k)
    assert not (loo.indices.numpy() == np.arange(len(bank))[:, None]).any()
    assert_same_neighbours(loo, slow.search(None, k), loo_sims(bank), k)
    a = KNNClassifier(k=k, memory_budget_bytes=budget, bf16_prefilter=True).fit(bank, y)
    b = KNNClassifier(k=k, memory_budget_bytes=budget, bf16_prefilter=False).fit(bank, y)
    np.testing.assert_array_equal(a.predict(queries), b.predict(queries))
    np.testing.assert_array_equal(a.predict(), b.predict())


def test_bf16_path_separates_neighbours_closer_than_bfloat16_resolution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1000 bank points at similarities 0.5 + j * 2e-6 to the query: bfloat16 (spacing 2^-8
    # there) cannot tell them apart, the float32 re-score must (all are candidates, within the cap)
    fallbacks = record_fallbacks(monkeypatch)
    rng = np.random.default_rng(26)
    dim, n, k = 32, 1000, 100
    cos = 0.5 + 2e-6 * rng.permutation(n)
    other = rng.standard_normal((n, dim - 1))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    far = rng.standard_normal((7000, dim))  # plus points in the other half-space
    far[:, 0] = -np.abs(far[:, 0])
    bank = np.concatenate([np.column_stack([cos, np.sqrt(1 - cos**2)[:, None] * other]), far])
    query = np.eye(dim)[:1]
    got = CosineIndex(bank.astype(np.float32), bf16_prefilter=True).search(query, k)
    assert set(got.indices[0].tolist()) == set(np.argsort(-cos)[:k].tolist())
    assert fallbacks == [(0, 1)]


def test_bf16_path_keeps_a_neighbour_that_rounding_pushed_below_the_kth() -> None:
    # From 20,000 unit vectors at similarity 0.45-0.4502 to the query, take the one with the
    # most negative bfloat16 error among the most similar tenth (the true nearest) and the k
    # with the most positive errors: rounding puts the nearest two bfloat16 steps below the
    # k-th, out of reach of any threshold without the error bound's margin.
    rng = np.random.default_rng(32)
    dim, k, n = 8, 20, 20_000
    q = rng.standard_normal(dim)
    q /= np.linalg.norm(q)
    r = rng.standard_normal((n, dim))
    r -= (r @ q)[:, None] * q
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    c = 0.45 + 2e-4 * rng.random(n)
    pool = normalize_embeddings((c[:, None] * q + np.sqrt(1 - c**2)[:, None] * r).astype(np.float32))
    query = normalize_embeddings(q[None].astype(np.float32))
    approx = torch.mm(query.bfloat16(), pool.bfloat16().T)[0].double()
    exact = torch.mm(query.double(), pool.double().T)[0]
    error = approx - exact
    high = torch.argsort(exact, descending=True)[: n // 10]
    nearest = int(high[torch.argmin(error[high])])
    others = torch.cat([torch.arange(nearest), torch.arange(nearest + 1, n)])
    up = others[torch.argsort(error[others], descending=True)[:k]]
    assert approx[nearest] < approx[up].min() * (1 - U)  # the premise: a naive threshold misses it
    far = rng.standard_normal((4000, dim)) - 3 * q  # filler on the other side
    bank = np.concatenate([pool[[nearest]].numpy(), pool[up].numpy(), far.astype(np.float32)])
    got = CosineIndex(bank, bf16_prefilter=True).search(q[None], k)
    assert 0 in got.indices[0].tolist()
    assert_valid_topk(got, exact_sims(q[None], bank), k)


def test_bf16_path_with_duplicated_bank_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 distinct points, each 1500 times: every top-200 is a choice among exact ties, and the
    # nearest point's copies alone exceed the candidate cap, so every row falls back
    fallbacks = record_fallbacks(monkeypatch)
    base, _ = clustered(12, 16, 4, seed=27)
    bank = np.repeat(base, 1500, axis=0)
    queries, _ = clustered(100, 16, 4, seed=28)
    assert_valid_topk(
        CosineIndex(bank, bf16_prefilter=True).search(queries, 200), exact_sims(queries, bank), 200
    )
    assert fallbacks == [(100, 100)]
    # 30 points, 100 times each: the k-th neighbour is tied with up to 99 others, within the cap
    fallbacks.clear()
    base, _ = clustered(30, 16, 4, seed=29)
    bank = np.repeat(base, 100, axis=0)
    loo = CosineIndex(bank, bf16_prefilter=True).search(None, 200)
    assert not (loo.indices.numpy() == np.arange(len(bank))[:, None]).any()
    assert_valid_topk(loo, loo_sims(bank), 200)
    assert sum(f for f, _ in fallbacks) == 0


@pytest.mark.parametrize("budget", [SMALL_BUDGET, 1 << 30])
def test_rows_over_the_candidate_cap_fall_back_to_float32(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    bank, _ = clustered(4500, 32, 5, seed=30)
    queries, _ = clustered(300, 32, 5, seed=31)
    k = 40
    reference = CosineIndex(bank, memory_budget_bytes=budget, bf16_prefilter=False)
    expected, expected_loo = reference.search(queries, k), reference.search(None, k)
    fallbacks = record_fallbacks(monkeypatch)
    monkeypatch.setattr(knn_module, "_candidate_cap", lambda k: k + 3)  # most rows are over it
    index = CosineIndex(bank, memory_budget_bytes=budget, bf16_prefilter=True)
    assert_same_neighbours(index.search(queries, k), expected, exact_sims(queries, bank), k)
    loo = index.search(None, k)
    assert not (loo.indices.numpy() == np.arange(len(bank))[:, None]).any()
    assert_same_neighbours(loo, expected_loo, loo_sims(bank), k)
    fallen, rows = (sum(column) for column in zip(*fallbacks, strict=True))
    assert 0 < fallen < rows  # some rows, not all


def test_bf16_prefilter_is_chosen_by_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = np.eye(8, dtype=np.float32)
    monkeypatch.setattr(knn_module, "cpu_has_bf16_matmul", lambda: False)
    assert CosineIndex(bank)._bf16 is None
    monkeypatch.setattr(knn_module, "cpu_has_bf16_matmul", lambda: True)
    assert CosineIndex(bank)._bf16 is not None
    assert CosineIndex(bank, bf16_prefilter=False)._bf16 is None
    with pytest.raises(NormprobeError, match="bf16_prefilter needs the torch backend"):
        CosineIndex(bank, backend="faiss", bf16_prefilter=True)


def test_a_memoizing_index_searches_each_query_set_once() -> None:
    """The classifier's k and the OOD scorers' smaller k share one search per set, with the same answers."""
    from normprobe.scores import KNNDistanceScorer, NormKNNScorer

    rng = np.random.default_rng(7)
    bank = rng.standard_normal((400, 16)).astype(np.float32)
    labels = rng.integers(0, 4, 400)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    index = CosineIndex(bank, memoize=True)
    calls: list[int] = []
    search = index._iter_backend

    def counted(q, k, leave_one_out, sort):  # noqa: ANN001, ANN202 - a spy on the backend search
        calls.append(k)
        return search(q, k, leave_one_out, sort)

    index._iter_backend = counted  # type: ignore[method-assign]
    shared = KNNClassifier(k=20).fit(bank, labels, index=index)
    loo, test = shared.predict(), shared.predict(queries)
    knn = KNNDistanceScorer(k=5).fit(bank, index=index)
    both = NormKNNScorer(k=5).fit(bank, index=index)
    scores = knn.score_samples(queries), both.score_samples(queries)
    assert calls == [20, 20], "leave-one-out and the queries, once each, at the largest k"
    alone = KNNClassifier(k=20).fit(bank, labels)
    np.testing.assert_array_equal(loo, alone.predict())
    np.testing.assert_array_equal(test, alone.predict(queries))
    # the same neighbours; their float32 similarities may differ in the last bit between a k = 20
    # and a k = 5 search (the re-score runs over different candidate sets)
    close = {"rtol": 0, "atol": 1e-6}
    np.testing.assert_allclose(knn.train_scores_, KNNDistanceScorer(k=5).fit(bank).train_scores_, **close)
    np.testing.assert_allclose(scores[0], KNNDistanceScorer(k=5).fit(bank).score_samples(queries), **close)
    np.testing.assert_allclose(scores[1], NormKNNScorer(k=5).fit(bank).score_samples(queries), atol=1e-5)
    with pytest.raises(NormprobeError, match="shared index"):
        KNNDistanceScorer(k=5).fit(bank[:100], index=index)


# --- approximate search through faiss (IVF, HNSW) and its recall ------------------------------------


def test_recall_at_k_by_hand() -> None:
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[3, 2, 9, 0], [8, 9, 10, 11]])  # 3 of 4, then 0 of 4
    assert knn_module.recall_at_k(approx, exact) == pytest.approx(3 / 8)
    assert knn_module.recall_at_k(torch.from_numpy(exact[:, ::-1].copy()), exact) == 1.0  # order is free
    with pytest.raises(NormprobeError, match="n_queries, k"):
        knn_module.recall_at_k(approx[:, :3], exact)


@pytest.mark.parametrize(
    ("backend", "options"),
    [("faiss-ivf", {"nlist": 32, "nprobe": 4}), ("faiss-hnsw", {"hnsw_m": 16, "ef_search": 64})],
)
def test_approximate_backends_find_most_exact_neighbours(backend: str, options: dict[str, int]) -> None:
    pytest.importorskip("faiss")
    bank, y = clustered(4000, 32, 10, seed=20)
    queries, yq = clustered(300, 32, 10, seed=21)
    index = CosineIndex(bank, backend=backend, **options)  # type: ignore[arg-type]
    assert not index.exact and index.describe().startswith(f"{backend}(")
    recall = knn_module.measure_recall(index, queries, (20, 5), sample=300)
    loo_recall = knn_module.measure_recall(index, None, (20, 5), sample=300)
    assert set(recall) == set(loo_recall) == {5, 20}
    assert min(recall.values()) >= 0.9 and min(loo_recall.values()) >= 0.9, (recall, loo_recall)
    # the same recall the full searches have, and the searches are well formed
    exact = CosineIndex(bank)
    found, truth = index.search(queries, 20), exact.search(queries, 20)
    assert knn_module.recall_at_k(found, truth) >= 0.9
    assert np.all(np.diff(found.similarities.numpy(), axis=1) <= 0)
    np.testing.assert_allclose(
        np.take_along_axis(exact_sims(queries, bank), found.indices.numpy(), axis=1),
        found.similarities.numpy(),
        atol=1e-5,
    )
    loo = index.search(None, 20).indices.numpy()
    assert not (loo == np.arange(len(bank))[:, None]).any() and (loo >= 0).all()
    assert knn_module.recall_at_k(loo, exact.search(None, 20)) >= 0.9
    # the classifier through the approximate index mostly agrees with the exact one
    approx_clf = KNNClassifier(k=20).fit(bank, y, index=index)
    exact_clf = KNNClassifier(k=20).fit(bank, y)
    assert (approx_clf.predict(queries) == exact_clf.predict(queries)).mean() >= 0.95
    assert (approx_clf.predict() == exact_clf.predict()).mean() >= 0.95


def test_ivf_probing_every_cell_is_exact() -> None:
    pytest.importorskip("faiss")
    bank, _ = clustered(3000, 16, 6, seed=22)
    queries, _ = clustered(200, 16, 6, seed=23)
    index = CosineIndex(bank, backend="faiss-ivf", nlist=24, nprobe=24)
    assert knn_module.measure_recall(index, queries, (1, 10, 30), sample=200) == {1: 1.0, 10: 1.0, 30: 1.0}
    assert knn_module.measure_recall(index, None, 30, sample=200) == {30: 1.0}
    assert_valid_topk(index.search(queries, 30), exact_sims(queries, bank), 30)
    sims = exact_sims(bank, bank)
    np.fill_diagonal(sims, -np.inf)
    assert_valid_topk(index.search(None, 30), sims, 30)
    assert index.exact_fallback_rows == 0


def test_ivf_is_seeded_and_its_parameters_are_checked() -> None:
    pytest.importorskip("faiss")
    bank, _ = clustered(2000, 16, 6, seed=24)
    queries, _ = clustered(100, 16, 6, seed=25)
    a, b = (CosineIndex(bank, backend="faiss-ivf", nlist=40, nprobe=2, seed=3) for _ in range(2))
    assert torch.equal(a.search(queries, 10).indices, b.search(queries, 10).indices)
    assert a.describe() == "faiss-ivf(nlist=40,nprobe=2,seed=3)"
    assert CosineIndex(bank, backend="faiss-ivf").params["nlist"] == knn_module.default_nlist(2000) == 51
    assert knn_module.default_nlist(50_000) == 894 and knn_module.default_nlist(10) == 1
    with pytest.raises(NormprobeError, match="nprobe=41 must be between 1 and nlist=40"):
        CosineIndex(bank, backend="faiss-ivf", nlist=40, nprobe=41)
    with pytest.raises(NormprobeError, match="nlist=0"):
        CosineIndex(bank, backend="faiss-ivf", nlist=0)
    with pytest.raises(NormprobeError, match="hnsw_m=1"):
        CosineIndex(bank, backend="faiss-hnsw", hnsw_m=1)
    with pytest.raises(NormprobeError, match="faiss-ivf, faiss-hnsw"):
        CosineIndex(bank, backend="annoy")  # type: ignore[arg-type]
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources"):
        with pytest.raises(NormprobeError, match="no GPU support"):
            CosineIndex(bank, backend="faiss-ivf", faiss_gpu=True)
        assert CosineIndex(bank, backend="faiss-ivf").params["gpu"] is False


def test_ivf_rows_with_too_few_candidates_are_searched_exactly() -> None:
    """One probed cell of ~10 points cannot hold k = 60 neighbours: those rows fall back to exact search."""
    pytest.importorskip("faiss")
    bank, _ = clustered(2000, 16, 6, seed=26)
    queries, _ = clustered(100, 16, 6, seed=27)
    index = CosineIndex(bank, backend="faiss-ivf", nlist=200, nprobe=1)
    found = index.search(queries, 60)
    assert index.exact_fallback_rows > 0
    assert (found.indices >= 0).all()
    sims = exact_sims(queries, bank)
    np.testing.assert_allclose(
        np.take_along_axis(sims, found.indices.numpy(), axis=1), found.similarities.numpy(), atol=1e-5
    )
    assert all(len(set(row)) == 60 for row in found.indices.tolist())
    loo = index.search(None, 60).indices.numpy()
    assert not (loo == np.arange(len(bank))[:, None]).any() and (loo >= 0).all()


@pytest.mark.parametrize("bf16", [False, True])
def test_block_parallel_search_equals_one_worker(bf16: bool) -> None:
    """Query blocks searched side by side (one intra-op thread each) give exactly the neighbours of
    one thread searching them in turn, and the thread count is restored afterwards."""
    if bf16 and not knn_module.cpu_has_bf16_matmul():
        pytest.skip("no bfloat16 GEMM on this CPU")
    bank, y = clustered(4500, 16, 5, seed=40, noise=3.0)
    queries, _ = clustered(1500, 16, 5, seed=41, noise=3.0)
    index = CosineIndex(bank, memory_budget_bytes=SMALL_BUDGET, bf16_prefilter=bf16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers, whatever the machine
    try:
        assert knn_module._search_workers(index.device) == 2
        assert -(-len(queries) // index._block_sizes(len(queries), 30, SMALL_BUDGET // 2)[0]) >= 4
        parallel = [index.search(queries, 30), index.search(None, 30)]
        parallel_kth = index.kth_similarity(queries, 7)
        assert torch.get_num_threads() == 2
        with knn_module.intra_op_threads(1):  # one worker
            assert knn_module._search_workers(index.device) == 1
            serial = [index.search(queries, 30), index.search(None, 30)]
            serial_kth = index.kth_similarity(queries, 7)
        assert torch.get_num_threads() == 2
        for a, b in zip(parallel, serial, strict=True):
            assert torch.equal(a.similarities, b.similarities) and torch.equal(a.indices, b.indices)
        assert torch.equal(parallel_kth, serial_kth)
        classifier = KNNClassifier(k=30, memory_budget_bytes=SMALL_BUDGET, bf16_prefilter=bf16).fit(bank, y)
        predictions = classifier.predict(queries), classifier.predict()
        with knn_module.intra_op_threads(1):
            np.testing.assert_array_equal(classifier.predict(queries), predictions[0])
            np.testing.assert_array_equal(classifier.predict(), predictions[1])
    finally:
        torch.set_num_threads(threads)


def test_block_parallel_search_reports_the_first_bad_row_and_restores_threads() -> None:
    bank, _ = clustered(2000, 8, 5, seed=42)
    queries, _ = clustered(1500, 8, 5, seed=43)
    queries[1300, 2] = np.nan  # in a late block
    queries[1400] = 0.0
    index = CosineIndex(bank, memory_budget_bytes=SMALL_BUDGET)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(NormprobeError, match="queries: row 1300 contains NaN"):
            index.search(queries, 10)
        assert torch.get_num_threads() == 2
        blocks = index.iter_search(queries[:1200], 10)
        assert isinstance(blocks, Generator)
        next(blocks)  # a consumer that stops early
        blocks.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
