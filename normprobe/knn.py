"""Chunked cosine k-nearest-neighbour search and the weighted kNN classifier.

The classifier is the one used to evaluate SSL encoders since InstDisc (Wu et al., 2018) and in
the paper (Draganov et al., 2025, Appendix C.1; also lightly, solo-learn): embeddings are
L2-normalised, each query takes its ``k`` most cosine-similar bank points, and each neighbour
votes for its label with weight ``exp(sim / T)``; the class with the largest summed weight wins.

Conventions
-----------
* Embeddings may be numpy arrays or torch tensors of shape ``(n, d)``; they are cast to float32.
  The work runs on the bank's device (a CUDA bank runs on CUDA); query blocks are moved there.
* Neighbour results (:class:`Neighbors`) are torch tensors on that device, similarities sorted in
  decreasing order (``iter_search(..., sort=False)`` skips the sort); class predictions are
  numpy arrays of the original label values.
* ``queries=None`` means *leave-one-out*: the queries are the bank itself and no bank point is
  ever its own neighbour (the scikit-learn ``kneighbors(X=None)`` convention).

Memory is bounded by ``memory_budget_bytes`` whatever the problem size: queries are processed in
blocks, the bank in column blocks, with a running top-k merge. Only the normalised bank (one
contiguous float32 matrix) and the per-block working buffers are held; :meth:`KNNClassifier.predict`
and :func:`kth_neighbor_distance` keep nothing per query beyond their result.

Speed: the similarities of a query block are one GEMM into a reused buffer, which is the floor;
the exact top-k on the CPU avoids a full selection over every row (see :func:`_topk_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch

from normprobe.errors import NormprobeError

Backend = Literal["torch", "faiss"]
ArrayLike = np.ndarray | torch.Tensor

DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30
"""Working memory for similarity blocks (1 GiB); the inputs and returned results come on top."""

# Query blocks are at least this tall when the budget allows (a GEMM with a thin left operand
# runs far below peak): for a huge bank we split the bank rather than shrink the query block.
_MIN_QUERY_BLOCK = 256

# glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh pages on every
# call, and page faults on hundreds of megabytes of temporaries per block cost as much as the
# selection itself; so query blocks keep their largest temporary below this bound. The
# similarity buffer itself is allocated once per search and may be larger.
_TEMPORARY_BYTES = 24 << 20


class Neighbors(NamedTuple):
    """The ``k`` nearest bank points of each query, most similar first (unless unsorted on request)."""

    similarities: torch.Tensor
    """``(n_queries, k)`` float32 cosine similarities, decreasing along each row."""
    indices: torch.Tensor
    """``(n_queries, k)`` int64 row indices into the bank."""


def as_embeddings(
    x: ArrayLike, name: str = "embeddings", dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """Return ``x`` as a 2-D torch tensor of ``dtype`` (no copy when it already is one;
    ``dtype=None`` keeps the input's, so that a large query set is converted block by block).

    Raises :class:`NormprobeError` for anything that is not a non-empty 2-D real array.
    Finiteness is checked later, row block by row block, via the norms (see :func:`_normalize`).
    """
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise NormprobeError(f"{name}: expected a real-valued array, got dtype {x.dtype}")
        # Cached embeddings arrive as read-only memory maps, which torch refuses to wrap without a warning.
        t = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))
    elif isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise NormprobeError(f"{name}: expected a real-valued tensor, got dtype {x.dtype}")
        t = x.detach()
    else:
        raise NormprobeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.ndim != 2:
        raise NormprobeError(f"{name}: expected shape (n_samples, dim), got {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise NormprobeError(f"{name}: empty array of shape {tuple(t.shape)}")
    return t if dtype is None else t.to(dtype)


def _normalize(block: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    """L2-normalise rows of a float32 block, rejecting NaN/Inf and zero rows.

    A NaN or Inf anywhere in a row makes that row's norm non-finite, so checking the norms finds
    bad values without materialising a boolean mask of the whole block.
    """
    norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        row = offset + int(bad.nonzero()[0, 0])
        raise NormprobeError(f"{name}: row {row} contains NaN or Inf (or values too large for float32)")
    zero = norms == 0
    if bool(zero.any()):
        row = offset + int(zero.nonzero()[0, 0])
        raise NormprobeError(f"{name}: row {row} has zero norm; its cosine similarity is undefined")
    return block / norms


def normalize_embeddings(x: ArrayLike, name: str = "embeddings") -> torch.Tensor:
    """Validated, L2-normalised, contiguous float32 copy of ``x`` (on ``x``'s device)."""
    return _normalize(as_embeddings(x, name), name).contiguous()


def _group_shape(n: int, k: int) -> tuple[int, int] | None:
    """``(m, lanes)`` for the grouped top-k of a row of ``n`` (see :func:`_topk_rows`), or None.

    A block of ``m * lanes`` columns holds ``lanes`` groups of ``m`` members each. Picks the
    shape that minimises the top-k work ``n / m`` (group maxima) + ``k * m`` (candidates) +
    leftover columns; ``m`` near ``sqrt(n / k)`` balances the first two.
    """
    best: tuple[int, int, int] | None = None
    for lanes in (32, 64, 128):  # multiples of the SIMD width: the max runs vectorised
        for m in range(2, 65):
            blocks = n // (m * lanes)
            if blocks * lanes < 4 * k:  # too few groups to be worth it
                continue
            cost = blocks * lanes + k * m + (n - blocks * m * lanes)
            if best is None or cost < best[0]:
                best = (cost, m, lanes)
    return None if best is None or best[0] > n // 2 else (best[1], best[2])


def _select(values: torch.Tensor, k: int) -> torch.Tensor:
    """Column positions of the ``k`` largest values of each row, in no particular order.

    On the CPU, numpy's SIMD introselect (``np.partition``) finds each row's k-th largest value
    several times faster than ``torch.topk``; the k positions at or above it are then read off
    a mask. Rows where the k-th value is tied (more than k positions qualify) are redone with
    ``torch.topk``, which breaks the tie.
    """
    q, n = values.shape
    if values.device.type != "cpu" or k == n:
        return torch.topk(values, k, dim=1, sorted=False).indices
    a = values.numpy()
    kth = np.partition(a, n - k, axis=1)[:, n - k : n - k + 1]
    mask = a >= kth
    tied = np.flatnonzero(np.count_nonzero(mask, axis=1) != k)
    mask[tied] = False
    out = torch.empty(q, k, dtype=torch.int64)
    good = np.ones(q, dtype=bool)
    good[tied] = False
    out[torch.from_numpy(good)] = torch.from_numpy(mask).nonzero()[:, 1].view(-1, k)
    if tied.size:
        rows = torch.from_numpy(tied)
        out[rows] = torch.topk(values[rows], k, dim=1, sorted=False).indices
    return out


def _topk_rows(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact row-wise top-``k`` (values, column indices; unsorted) of a similarity block.

    Selecting over all ``n`` columns costs several ns per element, about as much as the GEMM
    that produced the block. So, when the block is wide, its columns are split into groups of
    ``m`` and only the ``k`` groups with the largest maxima are searched: every one of the
    row's top-k values lies in one of them (a group holding the j-th largest value has a
    maximum at least that large, and at most j - 1 other groups can exceed it). This reads the
    block once (a vectorised max) and selects among ``n / m + k * m`` instead of ``n`` values.
    The result is exact; only which of several tied values is kept may differ.

    Layout: each run of ``m * lanes`` columns is ``m`` consecutive slices of ``lanes`` columns,
    and group ``(run, lane)`` takes column ``lane`` of every slice. The max over a group is then
    an elementwise max of ``m`` contiguous slices (fast), and a group's members lie within a
    few KiB of each other, so gathering the candidates touches few pages.
    """
    q, n = sims.shape
    # torch.topk on a GPU (radix select) is already far cheaper than the GEMM
    shape = _group_shape(n, k) if sims.device.type == "cpu" else None
    if shape is None:
        cols = _select(sims, k)
        return sims.gather(1, cols), cols
    m, lanes = shape
    runs = n // (m * lanes)
    head = runs * m * lanes
    group_max = sims[:, :head].view(q, runs, m, lanes).amax(dim=2).view(q, runs * lanes)
    top = _select(group_max, k)
    first = top // lanes * (m * lanes) + top % lanes  # column of each group's first member
    steps = torch.arange(0, m * lanes, lanes)
    cols = torch.empty(q, k * m + n - head, dtype=torch.int64)
    torch.add(first.unsqueeze(2), steps, out=cols[:, : k * m].view(q, k, m))
    cols[:, k * m :] = torch.arange(head, n)  # leftover columns are always candidates
    pool = sims.gather(1, cols)
    pos = _select(pool, k)
    return pool.gather(1, pos), cols.gather(1, pos)


class CosineIndex:
    """A bank of embeddings, normalised once, searched by cosine similarity.

    Parameters
    ----------
    bank:
        ``(n_bank, d)`` embeddings (not necessarily normalised).
    backend:
        ``"torch"`` (blocked GEMM + exact top-k, CPU or CUDA) or ``"faiss"`` (faiss-cpu
        ``IndexFlatIP`` on the normalised vectors: the same neighbours, up to ties).
    memory_budget_bytes:
        Bound on the working memory of a search (similarity block and top-k buffers).
    """

    def __init__(
        self,
        bank: ArrayLike,
        *,
        backend: Backend = "torch",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> None:
        if backend not in ("torch", "faiss"):
            raise NormprobeError(f"unknown kNN backend {backend!r}; choose 'torch' or 'faiss'")
        if memory_budget_bytes < 1 << 20:
            raise NormprobeError(f"memory budget of {memory_budget_bytes} bytes is too small (< 1 MiB)")
        self.backend: Backend = backend
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.bank = normalize_embeddings(bank, "bank")
        self._faiss_index = None
        if backend == "faiss":
            faiss = _import_faiss()
            self._faiss_index = faiss.IndexFlatIP(self.dim)
            self._faiss_index.add(self.bank.cpu().numpy())

    @property
    def n_bank(self) -> int:
        return int(self.bank.shape[0])

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    @property
    def device(self) -> torch.device:
        return self.bank.device

    def search(self, queries: ArrayLike | None, k: int) -> Neighbors:
        """The ``k`` most similar bank points of every query (``None``: leave-one-out)."""
        sims, idx = [], []
        for _, block in self.iter_search(queries, k, sort=True):
            sims.append(block.similarities)
            idx.append(block.indices)
        return Neighbors(torch.cat(sims), torch.cat(idx))

    def kth_similarity(self, queries: ArrayLike | None, k: int) -> torch.Tensor:
        """The cosine similarity of each query to its k-th nearest bank point (``None``: leave-one-out).

        The one k-th-neighbour search behind :func:`kth_neighbor_distance` and the kNN OOD scorers
        (:mod:`normprobe.scores`); float32, shape ``(n_queries,)``, on the bank's device.
        """
        # the k-th largest similarity is the smallest of the top k: no need to sort them
        return torch.cat(
            [block.similarities.amin(dim=1) for _, block in self.iter_search(queries, k, sort=False)]
        )

    def iter_search(
        self, queries: ArrayLike | None, k: int, *, sort: bool = True
    ) -> Iterator[tuple[int, Neighbors]]:
        """Yield ``(first_query_row, Neighbors)`` for consecutive query blocks.

        Lets callers reduce each block (vote, keep the k-th similarity) so that nothing of size
        ``n_queries * k`` is ever held. ``sort=False`` skips ordering each row's neighbours
        (the torch backend then returns them in no particular order) for callers that do not
        need it.
        """
        leave_one_out = queries is None
        q = self.bank if leave_one_out else as_embeddings(queries, "queries", dtype=None)
        if q.shape[1] != self.dim:
            raise NormprobeError(f"queries have dimension {q.shape[1]} but the bank has dimension {self.dim}")
        available = self.n_bank - 1 if leave_one_out else self.n_bank
        if not 1 <= k <= available:
            what = "bank size - 1 (leave-one-out)" if leave_one_out else "bank size"
            raise NormprobeError(f"k={k} must be between 1 and the {what} = {available}")
        if self.backend == "faiss":
            yield from self._iter_faiss(q, k, leave_one_out)
        else:
            yield from self._iter_torch(q, k, leave_one_out, sort)

    def _block_sizes(self, n_queries: int, k: int) -> tuple[int, int]:
        """Query and bank block sizes: within the memory budget, and with per-block
        temporaries small enough to be recycled by the allocator (see ``_TEMPORARY_BYTES``)."""
        budget = self.memory_budget_bytes

        def widths(bank_block: int) -> tuple[int, int]:
            """Per query row: (candidates selected from, group maxima) of :func:`_topk_rows`."""
            kk = min(k, bank_block)
            shape = _group_shape(bank_block, kk)
            if shape is None:
                return bank_block, 0
            m, lanes = shape
            groups = bank_block // (m * lanes) * lanes
            return kk * m + bank_block - groups * m, groups

        def row_bytes(bank_block: int) -> int:
            # the similarity row; candidate values, int64 columns, numpy's partition copy and
            # mask; the same for the group maxima; the running merge of 2k values and indices
            pool, groups = widths(bank_block)
            return 4 * bank_block + 17 * pool + 13 * groups + 24 * min(k, bank_block)

        bank_block = self.n_bank
        rows = min(n_queries, _MIN_QUERY_BLOCK)
        if rows * row_bytes(bank_block) > budget:
            # Split the bank so that a reasonably tall query block still fits; never below a
            # few k wide, where the per-block merge would dominate.
            bank_block = min(self.n_bank, max(8 * k, 4096, (budget // rows) // 5))
        by_budget = budget // row_bytes(bank_block)
        # the largest temporary is the int64 candidate-column matrix
        by_temporaries = max(_MIN_QUERY_BLOCK, _TEMPORARY_BYTES // (8 * widths(bank_block)[0]))
        query_block = max(1, min(n_queries, by_budget, by_temporaries))
        return query_block, bank_block

    def _iter_torch(
        self, q: torch.Tensor, k: int, leave_one_out: bool, sort: bool
    ) -> Iterator[tuple[int, Neighbors]]:
        n_q = q.shape[0]
        qb, bb = self._block_sizes(n_q, k)
        # One reusable buffer for all similarity blocks: a fresh half-gigabyte allocation per
        # block costs page faults comparable to the GEMM itself.
        buffer = torch.empty(qb * bb, dtype=torch.float32, device=self.device)
        for q0 in range(0, n_q, qb):
            q1 = min(q0 + qb, n_q)
            if leave_one_out:
                qn = self.bank[q0:q1]
            else:
                qn = _normalize(q[q0:q1].to(self.device, torch.float32), "queries", q0)
            best: tuple[torch.Tensor, torch.Tensor] | None = None
            for b0 in range(0, self.n_bank, bb):
                b1 = min(b0 + bb, self.n_bank)
                sims = buffer[: (q1 - q0) * (b1 - b0)].view(q1 - q0, b1 - b0)
                torch.mm(qn, self.bank[b0:b1].T, out=sims)
                if leave_one_out and q0 < b1 and b0 < q1:
                    # entries where query row == bank row lie on one diagonal of the block
                    sims.diagonal(q0 - b0).fill_(-math.inf)
                vals, idx = _topk_rows(sims, min(k, b1 - b0))
                if b0:
                    idx += b0
                if best is not None:
                    vals, idx = torch.cat([best[0], vals], 1), torch.cat([best[1], idx], 1)
                    pos = _select(vals, k)
                    vals, idx = vals.gather(1, pos), idx.gather(1, pos)
                best = (vals, idx)
            assert best is not None
            vals, idx = best
            if sort:
                vals, order = torch.sort(vals, dim=1, descending=True)
                idx = idx.gather(1, order)
            yield q0, Neighbors(vals, idx)

    def _iter_faiss(self, q: torch.Tensor, k: int, leave_one_out: bool) -> Iterator[tuple[int, Neighbors]]:
        n_q = q.shape[0]
        extra = 1 if leave_one_out else 0
        # faiss allocates its own result arrays; blocks only bound those and the query copy.
        qb = max(1, min(n_q, self.memory_budget_bytes // (4 * self.dim + 12 * (k + extra) + 1)))
        for q0 in range(0, n_q, qb):
            q1 = min(q0 + qb, n_q)
            if leave_one_out:
                qn = self.bank[q0:q1].cpu()
            else:
                qn = _normalize(q[q0:q1].to("cpu", torch.float32), "queries", q0)
            assert self._faiss_index is not None
            sims_np, idx_np = self._faiss_index.search(qn.contiguous().numpy(), k + extra)
            sims, idx = torch.from_numpy(sims_np), torch.from_numpy(idx_np)
            if leave_one_out:
                # Drop the self match (or, if ties pushed it out, the last neighbour): a stable
                # sort moves the one self entry to the end and keeps the others in order.
                is_self = idx == torch.arange(q0, q1).unsqueeze(1)
                order = torch.sort(is_self.to(torch.uint8), dim=1, stable=True).indices[:, :k]
                sims, idx = sims.gather(1, order), idx.gather(1, order)
            yield q0, Neighbors(sims, idx)


def _import_faiss():  # noqa: ANN202 - faiss has no type stubs
    try:
        import faiss
    except ImportError as exc:
        raise NormprobeError(
            "backend='faiss' needs the faiss-cpu package: pip install 'normprobe[faiss]'"
        ) from exc
    return faiss


def cosine_topk(
    queries: ArrayLike | None,
    bank: ArrayLike,
    k: int,
    *,
    backend: Backend = "torch",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> Neighbors:
    """The ``k`` most cosine-similar bank points of each query (``queries=None``: leave-one-out)."""
    index = CosineIndex(bank, backend=backend, memory_budget_bytes=memory_budget_bytes)
    return index.search(queries, k)


def kth_neighbor_distance(
    queries: ArrayLike | None,
    bank: ArrayLike,
    k: int = 50,
    *,
    backend: Backend = "torch",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """Cosine distance ``1 - cos(z, z_(k))`` from each query to its k-th nearest bank point.

    The OOD score of Sun et al. (2022), "Out-of-distribution detection with deep nearest
    neighbors", ranks by the Euclidean distance between normalised features, which equals
    ``sqrt(2 * (1 - cos))`` and so orders samples identically. ``queries=None``: leave-one-out.
    Returns a float32 tensor of shape ``(n_queries,)`` on the bank's device.
    """
    index = CosineIndex(bank, backend=backend, memory_budget_bytes=memory_budget_bytes)
    return 1.0 - index.kth_similarity(queries, k)


class KNNClassifier:
    """Weighted cosine kNN classifier: neighbour j of a query votes ``exp(sim_j / temperature)``.

    ``k=200, temperature=0.1`` are the values of InstDisc (Wu et al., 2018), lightly and the
    paper. Ties between classes go to the smallest label (``np.unique`` order), as in
    scikit-learn.

    Example::

        clf = KNNClassifier(k=200, temperature=0.1).fit(train_z, train_y)
        accuracy = (clf.predict(test_z) == test_y).mean()
        loo_pred = clf.predict()      # each training point classified by the others
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        *,
        backend: Backend = "torch",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ) -> None:
        if k < 1:
            raise NormprobeError(f"k must be >= 1, got {k}")
        if not temperature > 0:
            raise NormprobeError(f"temperature must be > 0, got {temperature}")
        self.k = int(k)
        self.temperature = float(temperature)
        self.backend: Backend = backend
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.index_: CosineIndex | None = None
        self.classes_: np.ndarray | None = None
        self._codes: torch.Tensor | None = None

    def fit(self, bank: ArrayLike, labels: ArrayLike) -> KNNClassifier:
        """Store the normalised bank and its labels (any 1-D array of sortable values)."""
        index = CosineIndex(bank, backend=self.backend, memory_budget_bytes=self.memory_budget_bytes)
        labels_np = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if labels_np.ndim != 1 or labels_np.shape[0] != index.n_bank:
            raise NormprobeError(
                f"labels: expected shape ({index.n_bank},) to match the bank, got {labels_np.shape}"
            )
        self.classes_, codes = np.unique(labels_np, return_inverse=True)
        # faiss returns CPU indices; the torch backend returns them on the bank's device.
        device = index.device if self.backend == "torch" else torch.device("cpu")
        self._codes = torch.from_numpy(codes.reshape(-1).astype(np.int64)).to(device)
        self.index_ = index
        return self

    def _fitted(self) -> tuple[CosineIndex, np.ndarray, torch.Tensor]:
        if self.index_ is None or self.classes_ is None or self._codes is None:
            raise NormprobeError("KNNClassifier is not fitted; call fit(bank, labels) first")
        return self.index_, self.classes_, self._codes

    def kneighbors(self, queries: ArrayLike | None = None) -> Neighbors:
        """Top-``k`` similarities and bank indices per query (``None``: leave-one-out)."""
        index, _, _ = self._fitted()
        return index.search(queries, self.k)

    def predict(self, queries: ArrayLike | None = None) -> np.ndarray:
        """Predicted labels, shape ``(n_queries,)`` (``None``: leave-one-out on the bank)."""
        index, classes, codes = self._fitted()
        out = np.empty(index.n_bank if queries is None else len(queries), dtype=np.int64)
        for q0, block in index.iter_search(queries, self.k, sort=False):
            # float64 votes: near-tied classes must not be decided by float32 rounding.
            weights = torch.exp(block.similarities.double() / self.temperature)
            votes = torch.zeros(weights.shape[0], len(classes), dtype=torch.float64, device=weights.device)
            votes.scatter_add_(1, codes[block.indices], weights)
            out[q0 : q0 + weights.shape[0]] = votes.argmax(dim=1).cpu().numpy()
        return classes[out]
