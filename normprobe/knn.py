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
contiguous float32 matrix, plus a bfloat16 copy where that path runs) and the per-block working
buffers are held; :meth:`KNNClassifier.predict`
and :func:`kth_neighbor_distance` keep nothing per query beyond their result.

Speed: the similarities of a query block are one GEMM into a reused buffer, which is the floor;
the exact top-k on the CPU avoids a full selection over every row (see :func:`_topk_rows`). On a
CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX), the GEMM runs in bfloat16 instead
and only selects candidates, which are then re-scored in float32; a rounding-error bound makes
the result exact, the same neighbours as the float32 GEMM (see :func:`_topk_bf16`).

Past one machine's patience, ``backend="faiss-ivf"`` (inverted lists, ``nlist`` / ``nprobe``) and
``backend="faiss-hnsw"`` (a graph, ``hnsw_m`` / ``ef_search``) search approximately through faiss;
:func:`measure_recall` says how many of the exact neighbours they find (:func:`recall_at_k`). The
faiss backends run on a GPU when the bank is on CUDA and faiss was built with GPU support.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import queue
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from normprobe.errors import NormprobeError
from normprobe.parallel import ordered_map

Backend = Literal["torch", "faiss", "faiss-ivf", "faiss-hnsw"]
BACKENDS: tuple[Backend, ...] = ("torch", "faiss", "faiss-ivf", "faiss-hnsw")
APPROXIMATE_BACKENDS: tuple[Backend, ...] = ("faiss-ivf", "faiss-hnsw")
"""Backends whose neighbours may miss some of the exact ones (see :func:`measure_recall`)."""
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


DEFAULT_NPROBE = 32
"""IVF cells searched per query unless told (``faiss-ivf``)."""
DEFAULT_HNSW_M = 32
"""HNSW links per point unless told (``faiss-hnsw``)."""


def approximate_params(
    backend: str,
    n_bank: int,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int | None = None,
    ef_construction: int = 80,
    ef_search: int | None = None,
    seed: int = 0,
) -> dict[str, int | str]:
    """The parameters an approximate :class:`CosineIndex` of ``n_bank`` points uses, defaults
    resolved (empty for the exact backends); what its neighbours depend on. Raises
    :class:`NormprobeError` for impossible values."""
    if backend == "faiss-ivf":
        nlist = default_nlist(n_bank) if nlist is None else int(nlist)
        if not 1 <= nlist <= n_bank:
            raise NormprobeError(f"nlist={nlist} must be between 1 and the bank size {n_bank}")
        nprobe = min(nlist, DEFAULT_NPROBE) if nprobe is None else int(nprobe)
        if not 1 <= nprobe <= nlist:
            raise NormprobeError(f"nprobe={nprobe} must be between 1 and nlist={nlist}")
        return {"nlist": nlist, "nprobe": nprobe, "seed": int(seed)}
    if backend == "faiss-hnsw":
        hnsw_m = DEFAULT_HNSW_M if hnsw_m is None else int(hnsw_m)
        if hnsw_m < 2 or ef_construction < 1 or (ef_search is not None and ef_search < 1):
            raise NormprobeError(
                f"hnsw_m={hnsw_m} must be >= 2, ef_construction={ef_construction} and ef_search={ef_search} >= 1"
            )
        ef: int | str = "max(2k,128)" if ef_search is None else int(ef_search)
        return {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": ef}
    return {}


def default_nlist(n_bank: int) -> int:
    """IVF cells for a bank of ``n_bank``: about ``4 sqrt(n)`` (faiss's rule of thumb), with at
    least 39 training points per cell (below that faiss's k-means warns): 894 at 50k, 4000 at 1M."""
    return max(1, min(n_bank // 39, round(4 * math.sqrt(n_bank))))


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


_BF16_ROUNDOFF = 2.0**-8
"""Unit roundoff of bfloat16 (8 significant bits): rounding to nearest moves ``x`` by at most this
times ``|x|`` (and at most this times the rounded value's magnitude)."""

_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

# torch's bfloat16 max over groups 32 lanes wide (one cache line) is ~6x slower than over 64
_BF16_LANES = 64


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (x86 ``avx512_bf16`` or ``amx_bf16``)
    for torch's oneDNN GEMM, read from ``/proc/cpuinfo``: a capability check, not a timing.

    Without them a bfloat16 GEMM is emulated and no faster than float32, so the float32 path stays.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to know, keep float32
        return False
    flags = {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}
    return not _BF16_CPU_FLAGS.isdisjoint(flags)


def _upper_norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms of a float32 block, inflated to upper bounds of the exact norms.

    float32 computes a norm of ``d`` terms with a relative error below about ``d * 2^-24``;
    inflating by twice that covers it.
    """
    return torch.linalg.vector_norm(x, dim=1) * (1.0 + (x.shape[1] + 2) * 2.0**-23)


class _Bf16Bank(NamedTuple):
    """The normalised bank rounded to bfloat16, and row-norm maxima for :func:`_bf16_error`."""

    values: torch.Tensor
    """``(n_bank, d)`` bfloat16."""
    residual: float
    """Largest ``||b - bf16(b)||`` over bank rows."""
    norm: float
    """Largest ``||b||``."""
    rounded_norm: float
    """Largest ``||bf16(b)||``."""


def _round_bank(bank: torch.Tensor) -> _Bf16Bank:
    """Round a normalised float32 bank to bfloat16 and bound its rounding error."""
    values = bank.bfloat16()
    residual = norm = rounded_norm = 0.0
    rows = max(1, _TEMPORARY_BYTES // (4 * bank.shape[1]))
    for r0 in range(0, bank.shape[0], rows):
        exact, rounded = bank[r0 : r0 + rows], values[r0 : r0 + rows].float()
        # the difference of a float32 and its bfloat16 rounding is exact in float32
        residual = max(residual, float(_upper_norms(exact - rounded).max()))
        norm = max(norm, float(_upper_norms(exact).max()))
        rounded_norm = max(rounded_norm, float(_upper_norms(rounded).max()))
    return _Bf16Bank(values, residual, norm, rounded_norm)


def _bf16_error(q: torch.Tensor, q16: torch.Tensor, bank: _Bf16Bank) -> torch.Tensor:
    """Per query row, a bound on ``|a - r|`` for every bank row ``b``, where ``a`` is the bfloat16
    GEMM's float32 accumulator of ``bf16(q) . bf16(b)`` (before it is rounded to bfloat16) and
    ``r`` the float32 re-score of ``q . b``; float64 ``(n,)``.

    With ``q~ = bf16(q)``: ``q~.b~ - q.b = q~.(b~ - b) + (q~ - q).b``, at most
    ``||q~|| ||b - b~|| + ||q - q~|| ||b||`` (Cauchy-Schwarz). The products of two bfloat16 values
    are exact in float32, so accumulating ``d`` of them in any order adds at most
    ``gamma_d ||q~|| ||b~||`` with ``gamma_d = d 2^-24 / (1 - d 2^-24)``, and the float32 re-score
    is off by at most ``gamma_d ||q|| ||b||``. AVX512-BF16 flushes subnormals to zero: at most
    ``2^-126`` per term, covered by the last term. Using the measured residual norms (about
    ``0.45 u`` for the bank's rows, ``u = 2^-8``) rather than the worst case ``u`` halves the
    candidate window.
    """
    d = q.shape[1]
    gamma = d * 2.0**-24 / (1.0 - d * 2.0**-24)
    rounded = q16.float()
    q_norm = _upper_norms(q).double()
    rounded_norm = _upper_norms(rounded).double()
    residual = _upper_norms(q - rounded).double()
    return (
        rounded_norm * bank.residual
        + residual * bank.norm
        + gamma * (rounded_norm * bank.rounded_norm + q_norm * bank.norm)
        + d * 2.0**-120
    )


def _bf16_floor(t: torch.Tensor) -> torch.Tensor:
    """The largest bfloat16 value ``<=`` each element of the float64 tensor ``t``."""
    r = t.to(torch.bfloat16)  # one of the two bfloat16 neighbours of t
    up = r.double() > t
    bits = r.view(torch.int16)
    # sign-magnitude: the next value down is one step larger in magnitude if negative (sign bit
    # set, so negative as int16, -0.0 included), one step smaller otherwise
    bits[up] += torch.where(bits[up] < 0, 1, -1).to(torch.int16)
    return r


def _bf16_threshold(kth_lower: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """bfloat16 threshold per row that every exact top-k value's bfloat16 similarity reaches.

    Let ``a`` be the accumulators, ``s~ = bf16(a)`` and ``r`` the float32 re-scores, with
    ``|a - r| <= e`` (:func:`_bf16_error`). Rounding is monotone, so the k-th largest ``s~`` is
    ``bf16(a_(k))`` and ``a_(k) >= s~_(k) - u |s~_(k)| >= g - u |g|`` for any ``g <= s~_(k)``.
    The k points with ``a >= a_(k)`` have ``r >= a_(k) - e``, so the k-th largest re-score is at
    least that, and a point among the top k by re-score has ``a >= a_(k) - 2e`` and hence
    ``s~ = bf16(a) >= floor_bf16(g - u |g| - 2e)``. The tiny constant covers float64 rounding
    and a subnormal ``a`` flushed to zero.
    """
    return _bf16_floor(kth_lower - _BF16_ROUNDOFF * kth_lower.abs() - 2.0 * error - 2.0**-40)


def _kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of each row, as float64 ``(n,)`` (numpy's SIMD introselect)."""
    a = values.float().numpy()
    n = a.shape[1]
    return torch.from_numpy(np.partition(a, n - k, axis=1)[:, n - k]).double()


def _candidate_cap(k: int) -> int:
    """Most candidates re-scored for one query row; a row with more falls back to float32.

    Near-duplicate banks put many points within the rounding window of the k-th. The cap
    bounds memory; it lies below the break-even point (measured: a float32 row of a 50k bank
    costs about as much as re-scoring 2,500 candidates at d = 512, 3,000 at d = 128).
    """
    return 2 * k + 1024


def _bf16_group_shape(width: int, k: int) -> tuple[int, int] | None:
    """``(m, padded_width)`` for :func:`_bf16_candidates` on a block ``width`` columns wide, or None.

    Groups are laid out as in :func:`_topk_rows` with 64 lanes; the block is padded with
    ``-inf`` columns to whole runs of ``m * 64``, so that no column is left over. Minimises the
    group maxima to select from, ``k * m`` members read for about k hit groups, and the padding
    (at most an eighth of the width, so the padded bfloat16 block fits the float32 buffer);
    None when there would be fewer than ``4 k`` groups (a float32 block is then as cheap).
    """
    best: tuple[int, int, int] | None = None
    for m in range(2, 33):
        run = m * _BF16_LANES
        padded = -(-width // run) * run
        groups = padded // m
        if groups < 4 * k or padded - width > width // 8:
            continue
        cost = groups + k * m + (padded - width)
        if best is None or cost < best[0]:
            best = (cost, m, padded)
    return None if best is None else (best[1], best[2])


class _Candidates(NamedTuple):
    """Per query row, the bank columns to re-score in float32, in CSR layout."""

    crow: torch.Tensor
    """``(n + 1,)`` int64: row ``i``'s columns are ``cols[crow[i]:crow[i + 1]]``."""
    cols: torch.Tensor
    """``(nnz,)`` int64 bank columns (grouped by row, not sorted within one)."""
    fallback: torch.Tensor
    """``(n,)`` bool: rows with more than the cap, left empty, to be done in float32."""


def _bf16_candidates(sims16: torch.Tensor, k: int, error: torch.Tensor, cap: int, m: int) -> _Candidates:
    """Every column of each row that may hold one of the row's exact top-``k`` (see :func:`_topk_bf16`).

    ``sims16`` is the bfloat16 similarity block, padded with ``-inf`` to whole runs of
    ``m * 64`` columns (:func:`_bf16_group_shape`), and ``error`` the per-row bound of
    :func:`_bf16_error`. Columns form groups as in :func:`_topk_rows`. The k-th largest group
    maximum ``g`` is a lower bound on the row's k-th largest value (k groups each hold a value
    at least ``g``), which avoids a selection over the whole row; only the groups whose maximum
    reaches the threshold (about one per candidate) are read member by member.
    """
    n, width = sims16.shape
    lanes = _BF16_LANES
    grouped = sims16.view(n, width // (m * lanes), m, lanes)
    group_max = grouped.amax(dim=2).view(n, -1)
    threshold = _bf16_threshold(_kth_largest(group_max, k), error).unsqueeze(1)
    rows, groups = (group_max >= threshold).nonzero().unbind(1)
    # each hit group holds a candidate: a row with more hit groups than the cap is over it
    over = torch.bincount(rows, minlength=n) > cap
    if bool(over.any()):
        keep = ~over[rows]
        rows, groups = rows[keep], groups[keep]
    run, lane = groups // lanes, groups % lanes
    members = grouped[rows, run, :, lane] >= threshold[rows]  # (hit groups, m)
    pair, member = members.nonzero().unbind(1)  # in row order, as the groups are
    columns = (run * (m * lanes) + lane)[pair] + member * lanes
    counts = torch.zeros(n, dtype=torch.int64).index_add_(0, rows, members.sum(dim=1))
    fallback = over | (counts > cap)
    if bool(fallback.any()):
        keep = ~fallback[rows[pair]]
        columns = columns[keep]
        counts[fallback] = 0
    crow = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    return _Candidates(crow, columns, fallback)


def _rescore(q: torch.Tensor, bank: torch.Tensor, candidates: _Candidates) -> torch.Tensor:
    """float32 ``q[i] . bank[j]`` for every candidate ``(i, j)``, in the order of ``candidates.cols``.

    A sampled GEMM (SDDMM) reads each candidate's bank row once, without gathering the rows
    into a copy first (a third of the memory traffic of gather + batched matrix-vector).
    """
    n, width = q.shape[0], bank.shape[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            candidates.crow,
            candidates.cols,
            torch.zeros(candidates.cols.numel(), dtype=q.dtype),
            size=(n, width),
            check_invariants=False,  # the kernel does not need columns sorted within a row
        )
        return torch.sparse.sampled_addmm(pattern, q, bank.T, beta=0.0).values()


def _ragged_topk(values: torch.Tensor, candidates: _Candidates, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-``k`` (values, bank columns; unsorted) of the re-scored candidates.

    Rows are padded with ``-inf`` to the longest; empty (fallback) rows give ``-inf`` values.
    """
    crow = candidates.crow
    counts = crow.diff()
    n = counts.numel()
    width = max(k, int(counts.max()))
    rows = torch.repeat_interleave(torch.arange(n), counts)
    pos = torch.arange(values.numel()) - crow[rows]
    padded = torch.full((n, width), -math.inf)
    padded[rows, pos] = values
    cols = torch.zeros((n, width), dtype=torch.int64)
    cols[rows, pos] = candidates.cols
    best = _select(padded, k)
    return padded.gather(1, best), cols.gather(1, best)


def _topk_bf16(
    q: torch.Tensor,
    q16: torch.Tensor,
    error: torch.Tensor,
    bank: torch.Tensor,
    bank16: torch.Tensor,
    k: int,
    buffer: torch.Tensor,
    diagonal: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact row-wise top-``k`` (values, columns; unsorted) of ``q @ bank.T`` through bfloat16.

    A bfloat16 GEMM (3-4x the float32 rate on AVX512-BF16, half the bytes to select from)
    gives ``s~``; :func:`_bf16_candidates` keeps every column that can be among the exact top k
    (a proof from the rounding-error bound, :func:`_bf16_threshold`, not a heuristic); those
    are re-scored in float32 and the top k taken. Rows with more candidates than
    :func:`_candidate_cap` are redone with a float32 GEMM. ``buffer`` is a float32 work area of
    at least ``n * n_bank`` values (the padded bfloat16 block fits in it); ``diagonal``
    (leave-one-out) is the offset of the block's diagonal whose entries are each query's own
    row, excluded.
    """
    n, width = q.shape[0], bank.shape[0]
    shape = _bf16_group_shape(width, k)
    assert shape is not None
    m, padded = shape
    sims16 = buffer.view(torch.bfloat16)[: n * padded].view(n, padded)
    block = sims16[:, :width]
    torch.mm(q16, bank16.T, out=block)  # oneDNN writes the strided rows in place
    sims16[:, width:] = -math.inf
    if diagonal is not None:
        block.diagonal(diagonal).fill_(-math.inf)
    candidates = _bf16_candidates(sims16, k, error, _candidate_cap(k), m)
    vals, idx = _ragged_topk(_rescore(q, bank, candidates), candidates, k)
    rows = candidates.fallback.nonzero().squeeze(1)
    if rows.numel():
        # the bfloat16 block is done with: its buffer takes the float32 rows
        sims = buffer[: rows.numel() * width].view(rows.numel(), width)
        torch.mm(q[rows], bank.T, out=sims)
        if diagonal is not None:
            own = rows + diagonal
            inside = (own >= 0) & (own < width)
            sims[torch.arange(rows.numel())[inside], own[inside]] = -math.inf
        vals[rows], idx[rows] = _topk_rows(sims, k)
    return vals, idx


def _search_workers(device: torch.device) -> int:
    """Threads that search query blocks side by side: torch's intra-op thread count on the CPU, else 1.

    Each worker searches whole query blocks with a single intra-op thread (see
    :func:`intra_op_threads`), instead of every small operation of a block being split over all
    threads. The work is the same, but the threads meet once per block instead of at every
    operation (about 40 per block). When another process competes for the cores, a thread waiting
    at such a barrier for a descheduled partner loses a scheduler time slice each time: on 2 cores
    beside a training run, a 50k leave-one-out search took 77 s with 2 threads, 8 s with 1 and 9 s
    with 2 workers (the CPU the other process leaves is about one core). Each block's result does
    not depend on which worker computes it.
    """
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then restored.

    Threads started inside the block (the search workers) take ``n`` as their own count. Also for
    work made of many small operations (a ``d x d`` eigendecomposition), where threads mostly wait
    on each other, and whose float results would otherwise depend on the machine's core count.
    """
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CosineIndex:
    """A bank of embeddings, normalised once, searched by cosine similarity.

    Parameters
    ----------
    bank:
        ``(n_bank, d)`` embeddings (not necessarily normalised).
    backend:
        ``"torch"`` (blocked GEMM + exact top-k, CPU or CUDA), ``"faiss"`` (faiss
        ``IndexFlatIP`` on the normalised vectors: the same neighbours, up to ties), or one of the
        approximate faiss indexes: ``"faiss-ivf"`` (``IndexIVFFlat``: k-means cells, ``nprobe`` of
        ``nlist`` searched per query) and ``"faiss-hnsw"`` (``IndexHNSWFlat``: a graph of ``hnsw_m``
        links per point, ``ef_search`` candidates kept per query). Their recall against the exact
        search is measured by :func:`measure_recall`. Leave-one-out searches one neighbour more and
        drops the query itself; a row for which an approximate index finds fewer than ``k``
        neighbours (too few points in its ``nprobe`` cells) is searched exactly instead
        (counted in :attr:`exact_fallback_rows`).
    memory_budget_bytes:
        Bound on the working memory of a search (similarity block and top-k buffers).
    bf16_prefilter:
        Select candidates with a bfloat16 GEMM and re-score them in float32 (torch backend, CPU;
        the same neighbours as float32, see :func:`_topk_bf16`). ``None``: where the CPU
        multiplies bfloat16 natively (:func:`cpu_has_bf16_matmul`); ``False``: float32 only.
    memoize:
        Keep every search's sorted neighbours (per query set, identified by its content) and answer
        any later search of the same queries with at most that many neighbours from them. One
        analysis asks the same bank for the classifier's k = 200 neighbours and the OOD scorers'
        k = 50 of the same sets: with a shared memoizing index each set is searched once, at the
        largest k, which is asked first. Costs ``n_queries * k * 12`` bytes per set kept.
    nlist, nprobe:
        ``faiss-ivf``: k-means cells (default :func:`default_nlist`: about ``4 sqrt(n_bank)``, at
        least 39 training points each) and cells searched per query (default
        :data:`DEFAULT_NPROBE`, at most ``nlist``; ``nprobe = nlist`` is exhaustive, hence exact).
        The cells are trained on a seeded sample of at most ``256 * nlist`` bank rows.
    hnsw_m, ef_construction, ef_search:
        ``faiss-hnsw``: links per point (default 32), candidate list while building (default 80)
        and while searching (default ``max(2 k, 128)``, never below ``k``). The graph is built by
        faiss's parallel insertion, which may differ slightly from run to run with several threads.
    seed:
        Seed of the IVF training sample and k-means initialisation.
    faiss_gpu:
        Put the faiss index on a GPU (flat and IVF; faiss has no GPU HNSW). ``None``: when CUDA is
        present and faiss was built with GPU support; ``True`` without either is an error.
    """

    def __init__(
        self,
        bank: ArrayLike,
        *,
        backend: Backend = "torch",
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        bf16_prefilter: bool | None = None,
        memoize: bool = False,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int | None = None,
        ef_construction: int = 80,
        ef_search: int | None = None,
        seed: int = 0,
        faiss_gpu: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise NormprobeError(f"unknown kNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if memory_budget_bytes < 1 << 20:
            raise NormprobeError(f"memory budget of {memory_budget_bytes} bytes is too small (< 1 MiB)")
        self.backend: Backend = backend
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.bank = normalize_embeddings(bank, "bank")
        on_cpu_torch = backend == "torch" and self.device.type == "cpu"
        if bf16_prefilter is None:
            # with oneDNN switched off, torch's bfloat16 GEMM is not the kernel the bound was checked on
            bf16_prefilter = on_cpu_torch and cpu_has_bf16_matmul() and bool(torch.backends.mkldnn.enabled)
        elif bf16_prefilter and not on_cpu_torch:
            raise NormprobeError("bf16_prefilter needs the torch backend with a CPU bank")
        self._bf16 = _round_bank(self.bank) if bf16_prefilter else None
        self._memo: dict[str, Neighbors] | None = {} if memoize else None
        self.exact_fallback_rows = 0
        """Query rows an approximate index found fewer than k neighbours for, searched exactly instead."""
        self.params: dict[str, int | str | bool] = {}
        """The approximate index's parameters as used (``nlist``, ``nprobe``, ...), and ``gpu``."""
        self._faiss_index = None
        if backend.startswith("faiss"):
            self._faiss_index = self._build_faiss(
                nlist=nlist,
                nprobe=nprobe,
                hnsw_m=hnsw_m,
                ef_construction=ef_construction,
                ef_search=ef_search,
                seed=seed,
                gpu=faiss_gpu,
            )
        self._ef_search = ef_search

    @property
    def exact(self) -> bool:
        """Whether searches return the exact neighbours (up to ties): not an approximate backend."""
        return self.backend not in APPROXIMATE_BACKENDS

    def describe(self) -> str:
        """The backend and its parameters, e.g. ``faiss-ivf(nlist=894,nprobe=32)``: what an
        approximate search's results depend on (cache keys, run.json)."""
        params = ",".join(f"{key}={value}" for key, value in self.params.items() if key != "gpu")
        return f"{self.backend}({params})" if params else self.backend

    def _build_faiss(
        self,
        *,
        nlist: int | None,
        nprobe: int | None,
        hnsw_m: int | None,
        ef_construction: int,
        ef_search: int | None,
        seed: int,
        gpu: bool | None,
    ):  # noqa: ANN202 - faiss has no type stubs
        faiss = _import_faiss()
        n, d = self.n_bank, self.dim
        vectors = self.bank.cpu().numpy()  # a view for a CPU bank: faiss copies what it keeps
        has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if gpu is None:
            gpu = has_gpu and torch.cuda.is_available() and self.backend != "faiss-hnsw"
        elif gpu and not has_gpu:
            raise NormprobeError("faiss_gpu=True, but this faiss has no GPU support or sees no GPU")
        elif gpu and self.backend == "faiss-hnsw":
            raise NormprobeError("faiss has no GPU HNSW index; use faiss-ivf or faiss on the GPU")
        params = approximate_params(
            self.backend,
            n,
            nlist=nlist,
            nprobe=nprobe,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            seed=seed,
        )
        if self.backend == "faiss":
            index = faiss.IndexFlatIP(d)
        elif self.backend == "faiss-ivf":
            nlist, nprobe = int(params["nlist"]), int(params["nprobe"])
            self._faiss_quantizer = faiss.IndexFlatIP(d)  # the index keeps a pointer to it
            index = faiss.IndexIVFFlat(self._faiss_quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(seed)
            sample = min(n, 256 * nlist)  # faiss's own cap on k-means points
            rows = np.random.default_rng(seed).choice(n, sample, replace=False) if sample < n else None
            # faiss warns (stderr) when a cell gets fewer than 39 training points: nlist is too large
            index.train(vectors if rows is None else vectors[np.sort(rows)])
            index.nprobe = nprobe
        else:
            index = faiss.IndexHNSWFlat(d, int(params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
        self.params = dict(params)
        if gpu:
            device = self.device.index if self.device.type == "cuda" and self.device.index is not None else 0
            self._faiss_gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._faiss_gpu_resources, device, index)
            if self.backend == "faiss-ivf":
                index.nprobe = nprobe
        index.add(vectors)
        self.params["gpu"] = bool(gpu)
        return index

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
        return self._collect(
            self.iter_search(queries, k, sort=True), self.n_bank if queries is None else len(queries)
        )

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
        need it. On the CPU, worker threads search the next blocks while the caller reduces one
        (see :func:`_search_workers`); while such a search is open, torch runs one intra-op thread.
        """
        leave_one_out = queries is None
        q = self.bank if queries is None else as_embeddings(queries, "queries", dtype=None)
        if q.shape[1] != self.dim:
            raise NormprobeError(f"queries have dimension {q.shape[1]} but the bank has dimension {self.dim}")
        available = self.n_bank - 1 if leave_one_out else self.n_bank
        if not 1 <= k <= available:
            what = "bank size - 1 (leave-one-out)" if leave_one_out else "bank size"
            raise NormprobeError(f"k={k} must be between 1 and the {what} = {available}")
        if self._memo is None:
            yield from self._iter_backend(q, k, leave_one_out, sort)
            return
        key = "leave-one-out" if leave_one_out else _content_key(q)
        kept = self._memo.get(key)
        if kept is None or kept.similarities.shape[1] < k:
            kept = self._collect(self._iter_backend(q, k, leave_one_out, sort=True), q.shape[0])
            self._memo[key] = kept
        # sorted rows: their first k entries are the k nearest
        yield 0, Neighbors(kept.similarities[:, :k], kept.indices[:, :k])

    @staticmethod
    def _collect(blocks: Iterator[tuple[int, Neighbors]], n_queries: int) -> Neighbors:
        """The blocks of one search in one :class:`Neighbors`, each copied in as it arrives (while
        the search workers go on) rather than concatenated at the end: one pass over 100+ MB
        fewer, and no copy made with every thread once the search has handed them back."""
        sims = idx = None
        for q0, block in blocks:
            if sims is None or idx is None:
                k = block.similarities.shape[1]
                sims = block.similarities.new_empty((n_queries, k))
                idx = block.indices.new_empty((n_queries, k))
            rows = block.similarities.shape[0]
            sims[q0 : q0 + rows] = block.similarities
            idx[q0 : q0 + rows] = block.indices
        assert sims is not None and idx is not None
        return Neighbors(sims, idx)

    def _iter_backend(
        self, q: torch.Tensor, k: int, leave_one_out: bool, sort: bool
    ) -> Iterator[tuple[int, Neighbors]]:
        if self._faiss_index is not None:
            yield from self._iter_faiss(q, k, leave_one_out)
        else:
            yield from self._iter_torch(q, k, leave_one_out, sort)

    def _block_sizes(self, n_queries: int, k: int, budget: int | None = None) -> tuple[int, int]:
        """Query and bank block sizes: within the memory ``budget`` (default: the index's), and
        with per-block temporaries small enough to be recycled by the allocator (see
        ``_TEMPORARY_BYTES``)."""
        budget = self.memory_budget_bytes if budget is None else budget

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
            work = 17 * pool + 13 * groups
            if self._bf16 is not None:
                # bfloat16 group maxima, float copies and mask; at most the cap of candidates
                # per row: their group members (value + mask), int64 indices, re-scores and
                # padded top-k input; the float32 fallback reuses the similarity row
                shape = _bf16_group_shape(bank_block, min(k, bank_block))
                if shape is not None:
                    m, padded = shape
                    cap = _candidate_cap(k)
                    work = max(work, 11 * padded // m + cap * (3 * m + 80))
            return 4 * bank_block + work + 24 * min(k, bank_block)

        bank_block = self.n_bank
        rows = min(n_queries, _MIN_QUERY_BLOCK)
        if rows * row_bytes(bank_block) > budget:
            # Split the bank so that a reasonably tall query block still fits; never below a
            # few k wide, where the per-block merge would dominate.
            bank_block = min(self.n_bank, max(8 * k, 4096, (budget // rows) // 5))
        by_budget = budget // row_bytes(bank_block)
        # the largest temporary is the int64 candidate-column matrix
        by_temporaries = max(_MIN_QUERY_BLOCK, _TEMPORARY_BYTES // (8 * widths(bank_block)[0]))
        if self._bf16 is not None:
            # the bfloat16 GEMM runs as fast on short blocks; a small block stays in cache for
            # the selection pass and costs fewer first-touch page faults of the buffer
            by_temporaries = min(by_temporaries, max(_MIN_QUERY_BLOCK, _TEMPORARY_BYTES // (2 * bank_block)))
        query_block = max(1, min(n_queries, by_budget, by_temporaries))
        return query_block, bank_block

    def _iter_torch(
        self, q: torch.Tensor, k: int, leave_one_out: bool, sort: bool
    ) -> Iterator[tuple[int, Neighbors]]:
        n_q = q.shape[0]
        workers = _search_workers(self.device)
        qb, bb = self._block_sizes(n_q, k, self.memory_budget_bytes // workers)
        workers = min(workers, -(-n_q // qb))
        if workers == 1:  # one block: searched with every thread
            qb, bb = self._block_sizes(n_q, k)
        # One reusable buffer per worker for all similarity blocks: a fresh half-gigabyte
        # allocation per block costs page faults comparable to the GEMM itself.
        buffers: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        for _ in range(workers):
            buffers.put(torch.empty(qb * bb, dtype=torch.float32, device=self.device))

        def block(q0: int) -> Neighbors:
            buffer = buffers.get()
            try:
                return self._search_block(q, q0, min(q0 + qb, n_q), k, bb, leave_one_out, sort, buffer)
            finally:
                buffers.put(buffer)

        starts = range(0, n_q, qb)
        if workers == 1:
            for q0 in starts:
                yield q0, block(q0)
            return
        # Each worker searches whole query blocks with one thread; see _search_workers.
        with intra_op_threads(1):
            yield from ordered_map(lambda q0: (q0, block(q0)), starts, workers, name="normprobe-knn")

    def _search_block(
        self,
        q: torch.Tensor,
        q0: int,
        q1: int,
        k: int,
        bb: int,
        leave_one_out: bool,
        sort: bool,
        buffer: torch.Tensor,
    ) -> Neighbors:
        """The top-``k`` of query rows ``q0:q1``, over bank blocks ``bb`` wide, in ``buffer``."""
        if leave_one_out:
            qn = self.bank[q0:q1]
        else:
            qn = _normalize(q[q0:q1].to(self.device, torch.float32), "queries", q0)
        if self._bf16 is not None:
            q16 = self._bf16.values[q0:q1] if leave_one_out else qn.bfloat16()
            error = _bf16_error(qn, q16, self._bf16)
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        for b0 in range(0, self.n_bank, bb):
            b1 = min(b0 + bb, self.n_bank)
            kk = min(k, b1 - b0)
            # entries where query row == bank row lie on one diagonal of the block
            diagonal = q0 - b0 if leave_one_out and q0 < b1 and b0 < q1 else None
            if self._bf16 is not None and _bf16_group_shape(b1 - b0, kk) is not None:
                bank16 = self._bf16.values[b0:b1]
                vals, idx = _topk_bf16(qn, q16, error, self.bank[b0:b1], bank16, kk, buffer, diagonal)
            else:
                sims = buffer[: (q1 - q0) * (b1 - b0)].view(q1 - q0, b1 - b0)
                torch.mm(qn, self.bank[b0:b1].T, out=sims)
                if diagonal is not None:
                    sims.diagonal(diagonal).fill_(-math.inf)
                vals, idx = _topk_rows(sims, kk)
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
        return Neighbors(vals, idx)

    def _iter_faiss(self, q: torch.Tensor, k: int, leave_one_out: bool) -> Iterator[tuple[int, Neighbors]]:
        n_q = q.shape[0]
        extra = 1 if leave_one_out else 0
        # faiss allocates its own result arrays (12 bytes per neighbour); dropping each row's own
        # entry and filling in missing rows take about 24 more: blocks bound those and the query copy
        qb = max(1, min(n_q, self.memory_budget_bytes // (4 * self.dim + 36 * (k + extra) + 1)))
        for q0 in range(0, n_q, qb):
            q1 = min(q0 + qb, n_q)
            if leave_one_out:
                qn = self.bank[q0:q1]
            else:
                qn = _normalize(q[q0:q1].to(self.device, torch.float32), "queries", q0)
            yield q0, self._faiss_block(qn, k, torch.arange(q0, q1) if leave_one_out else None)

    def _faiss_block(self, qn: torch.Tensor, k: int, own: torch.Tensor | None) -> Neighbors:
        """Sorted top-``k`` of normalised queries ``qn`` through the faiss index (CPU tensors);
        ``own``: each query's own bank row, left out (leave-one-out)."""
        assert self._faiss_index is not None
        width = k + (own is not None)
        if self.backend == "faiss-hnsw":
            ef = self._ef_search if self._ef_search is not None else max(2 * k, 128)
            self._faiss_index.hnsw.efSearch = max(ef, width)
        sims_np, idx_np = self._faiss_index.search(qn.detach().cpu().contiguous().numpy(), width)
        sims, idx = torch.from_numpy(sims_np), torch.from_numpy(idx_np)
        if own is not None:
            sims, idx = _drop_own(sims, idx, own, k)
        missing = (idx < 0).any(dim=1).nonzero().squeeze(1)  # faiss pads with -1 what it did not find
        if missing.numel():
            self.exact_fallback_rows += int(missing.numel())
            exact = self._exact_rows(qn[missing.to(qn.device)], k, None if own is None else own[missing])
            sims[missing], idx[missing] = exact.similarities.cpu(), exact.indices.cpu()
        return Neighbors(sims, idx)

    def _exact_rows(self, qn: torch.Tensor, k: int, own: torch.Tensor | None) -> Neighbors:
        """Exact sorted top-``k`` of a few normalised queries by plain float32 GEMMs on the bank's
        device, in row blocks within the memory budget; ``own`` as in :meth:`_faiss_block`."""
        rows = max(1, self.memory_budget_bytes // (4 * self.n_bank))
        sims_out, idx_out = [], []
        for r0 in range(0, qn.shape[0], rows):
            sims = qn[r0 : r0 + rows].to(self.device) @ self.bank.T
            if own is not None:
                mine = own[r0 : r0 + rows].to(self.device)
                sims[torch.arange(len(mine), device=self.device), mine] = -math.inf
            top = torch.topk(sims, k, dim=1)
            sims_out.append(top.values)
            idx_out.append(top.indices)
        return Neighbors(torch.cat(sims_out), torch.cat(idx_out))


def _drop_own(
    sims: torch.Tensor, idx: torch.Tensor, own: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of each row's ``k + 1`` neighbours other than the row's own bank row ``own``:
    a stable sort moves the one self entry (or, if ties or an approximate index left it out, the
    last neighbour) to the end and keeps the others in order."""
    is_self = idx == own.to(idx.device).unsqueeze(1)
    order = torch.sort(is_self.to(torch.uint8), dim=1, stable=True).indices[:, :k]
    return sims.gather(1, order), idx.gather(1, order)


def _content_key(x: torch.Tensor) -> str:
    """Identity of a query set for :class:`CosineIndex`'s memo: a digest of its shape, dtype and values."""
    values = x.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{tuple(values.shape)}{values.dtype}".encode(), digest_size=16)
    digest.update(values.view(torch.uint8).numpy().data)  # the raw bytes, whatever the dtype
    return digest.hexdigest()


def _import_faiss():  # noqa: ANN202 - faiss has no type stubs
    try:
        import faiss
    except ImportError as exc:
        raise NormprobeError(
            "backend='faiss' needs the faiss-cpu package: pip install 'normprobe[faiss]'"
        ) from exc
    return faiss


def recall_at_k(approx: Neighbors | ArrayLike, exact: Neighbors | ArrayLike) -> float:
    """Mean over queries of the fraction of the exact ``k`` nearest neighbours that ``approx`` found.

    Both are ``(n_queries, k)`` bank indices (or :class:`Neighbors`) of the same queries, ``exact``
    from an exact search; each row's indices are distinct. Ties at the exact k-th similarity can
    make an exact-but-different search score just below 1.
    """
    a = approx.indices if isinstance(approx, Neighbors) else approx
    e = exact.indices if isinstance(exact, Neighbors) else exact
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
    if a.shape != e.shape or a.ndim != 2 or a.shape[1] == 0:
        raise NormprobeError(f"recall_at_k needs two (n_queries, k) arrays, got {a.shape} and {e.shape}")
    if a.shape[0] == 0:
        raise NormprobeError("recall_at_k needs at least one query")
    both = np.sort(np.concatenate([a, e], axis=1).astype(np.int64), axis=1)
    found = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)  # each common index appears twice
    return float(found.mean() / e.shape[1])


def measure_recall(
    index: CosineIndex,
    queries: ArrayLike | None,
    ks: int | tuple[int, ...],
    *,
    sample: int = 1000,
    seed: int = 0,
) -> dict[int, float]:
    """Recall@k of ``index``'s search (:func:`recall_at_k`) against the exact search of the same
    bank, on a seeded sample of at most ``sample`` queries, for every ``k`` in ``ks``.

    ``queries=None``: leave-one-out, sampling bank rows (each left out of its own search). One
    search at the largest k serves every k (each k's neighbours are a prefix of the sorted ones).
    The exact reference is a plain float32 GEMM against the same normalised bank, in blocks within
    the index's memory budget: for 1,000 queries about ``1000 * n_bank * d * 2`` flops.
    """
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks or min(ks) < 1:
        raise NormprobeError(f"recall needs k >= 1, got {ks}")
    k = max(ks)
    n = index.n_bank if queries is None else len(queries)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))
    if queries is None:
        qn = index.bank[torch.from_numpy(rows).to(index.device)]
        own: torch.Tensor | None = torch.from_numpy(rows)
    else:
        picked = (
            queries[torch.from_numpy(rows)]
            if isinstance(queries, torch.Tensor)
            else np.asarray(queries)[rows]
        )
        qn = normalize_embeddings(picked, "queries").to(index.device)
        own = None
    available = index.n_bank - (own is not None)
    if k > available:
        raise NormprobeError(f"k={k} must be at most {available} to measure recall")
    if index.backend.startswith("faiss"):
        found = index._faiss_block(qn, k, own)
    else:
        found = index._exact_rows(qn, k, own)
    truth = index._exact_rows(qn, k, own)
    return {kk: recall_at_k(found.indices[:, :kk], truth.indices[:, :kk]) for kk in sorted(set(ks))}


def shared_index(index: CosineIndex | None, bank: ArrayLike) -> CosineIndex | None:
    """``index`` after checking that it indexes ``bank`` (same shape), or None when not given."""
    if index is None:
        return None
    shape = tuple(bank.shape)
    if shape != (index.n_bank, index.dim):
        raise NormprobeError(f"the shared index holds {index.n_bank} x {index.dim} embeddings, not {shape}")
    return index


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
        bf16_prefilter: bool | None = None,
    ) -> None:
        if k < 1:
            raise NormprobeError(f"k must be >= 1, got {k}")
        if not temperature > 0:
            raise NormprobeError(f"temperature must be > 0, got {temperature}")
        self.k = int(k)
        self.temperature = float(temperature)
        self.backend: Backend = backend
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.bf16_prefilter = bf16_prefilter
        self.index_: CosineIndex | None = None
        self.classes_: np.ndarray | None = None
        self._codes: torch.Tensor | None = None

    def fit(self, bank: ArrayLike, labels: ArrayLike, *, index: CosineIndex | None = None) -> KNNClassifier:
        """Store the normalised bank and its labels (any 1-D array of sortable values).

        ``index``: an already built :class:`CosineIndex` of this ``bank`` to search (e.g. one shared,
        memoizing, with the kNN OOD scorers) instead of building one.
        """
        index = shared_index(index, bank) or CosineIndex(
            bank,
            backend=self.backend,
            memory_budget_bytes=self.memory_budget_bytes,
            bf16_prefilter=self.bf16_prefilter,
        )
        labels_np = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if labels_np.ndim != 1 or labels_np.shape[0] != index.n_bank:
            raise NormprobeError(
                f"labels: expected shape ({index.n_bank},) to match the bank, got {labels_np.shape}"
            )
        self.classes_, codes = np.unique(labels_np, return_inverse=True)
        # faiss returns CPU indices; the torch backend returns them on the bank's device.
        device = index.device if index.backend == "torch" else torch.device("cpu")
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
