"""Benchmark: how the cosine kNN search's cost grows with the bank, exact and approximate.

For each bank size (``--sizes``, default 50k, 200k and 1M points of D = 128), each method and
each task, one fresh subprocess (so that its peak resident memory, ``ru_maxrss``, is its own)
generates the seeded synthetic data, builds the index and searches it for the ``k = 200``
nearest neighbours of every query:

* tasks: ``loo``, leave-one-out over the bank (every bank point queries the others, as analyze
  does for ID-train), and ``queries``, ``--queries`` (10k) new points against the bank.
* methods: ``exact``, :class:`normprobe.knn.CosineIndex` with the torch backend (blocked GEMM and
  exact top-k; bfloat16 candidate selection where the CPU has it, still exact);
  ``ivf``, faiss ``IndexIVFFlat`` (``faiss-ivf``: ``nlist`` about 4 sqrt(N), ``nprobe`` 32) and
  ``hnsw``, faiss ``IndexHNSWFlat`` (``faiss-hnsw``: M 32, efSearch max(2k, 128)), both through
  the same class. The approximate rows report recall@k against the exact search on
  ``--recall-sample`` seeded queries (:func:`normprobe.knn.measure_recall`).

Exact leave-one-out costs N^2 D: about an hour or more at 1M on 2 cores. Above ``--full-loo-max``
points (default 200k) it is measured on ``--loo-sample`` (2,000) seeded bank rows searched against
the full bank (each left out of its own search) and the search time extrapolated linearly to all N
rows (the cost per query is the same for every row); such rows are marked ``*``. Build time
(normalising, or training and filling the faiss index) is measured in full, and peak memory is the
subset run's, which holds the same bank and per-block buffers as the full run.

Data: a seeded mixture of ``--classes`` (100) Gaussian clusters with noise ``--noise`` per
coordinate around unit-variance centres, times a log-normal norm, generated block by block in
float32 so that generating it does not inflate the peak memory. Approximate recall depends on how
clustered the data are: real embeddings are usually more clustered than uniform noise, less than
well-separated blobs. Timings are wall-clock; on a shared machine they are noisy, and the load
average is printed before and after.

    python benchmarks/bench_scale.py                                # the full table (hours at 1M)
    python benchmarks/bench_scale.py --sizes 20000 50000 --queries 1000   # a smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import numpy as np
from fresh_process import pin_child_threads, run_fresh

METHODS = {"exact": "torch", "ivf": "faiss-ivf", "hnsw": "faiss-hnsw"}
TASKS = ("loo", "queries")


def make_points(n: int, dim: int, classes: int, noise: float, seed: int) -> np.ndarray:
    """``n`` seeded float32 points: a cluster centre (shared by every ``seed``) plus noise, times a norm."""
    centres = np.random.default_rng(12345).standard_normal((classes, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    rows = 65_536
    for r0 in range(0, n, rows):
        m = min(rows, n - r0)
        block = out[r0 : r0 + m]
        block[:] = centres[rng.integers(0, classes, m)]
        block += noise * rng.standard_normal((m, dim), dtype=np.float32)
        block *= rng.lognormal(0.0, 0.5, (m, 1)).astype(np.float32)
    return out


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(point: dict[str, Any], conn: Any) -> None:
    import torch

    torch.set_num_threads(point["threads"])
    import faiss

    faiss.omp_set_num_threads(point["threads"])
    from normprobe import knn

    n, k = point["n"], point["k"]
    bank = make_points(n, point["dim"], point["classes"], point["noise"], point["seed"])
    queries = None
    if point["task"] == "queries":
        queries = make_points(
            point["queries"], point["dim"], point["classes"], point["noise"], point["seed"] + 1
        )
    rss_data = _rss_mib()

    t0 = time.perf_counter()
    options: dict[str, Any] = {}
    if point["method"] == "ivf":
        options = {"nlist": point["nlist"], "nprobe": point["nprobe"], "seed": point["seed"]}
    elif point["method"] == "hnsw":
        options = {"hnsw_m": point["hnsw_m"], "ef_search": point["ef_search"]}
    index = knn.CosineIndex(bank, backend=METHODS[point["method"]], **options)
    build_s = time.perf_counter() - t0

    # leave-one-out on a seeded subset of the bank rows (exact search of a large bank): k + 1
    # neighbours of each, its own row dropped, exactly what the full leave-one-out does per row
    subset = point["task"] == "loo" and point["method"] == "exact" and n > point["full_loo_max"]
    searched = n if point["task"] == "loo" else point["queries"]
    kth = []
    t0 = time.perf_counter()
    if subset:
        rows = np.sort(np.random.default_rng(point["seed"] + 2).choice(n, point["loo_sample"], replace=False))
        own = torch.from_numpy(rows)
        for q0, block in index.iter_search(bank[rows], k + 1):
            sims, _ = knn._drop_own(block.similarities, block.indices, own[q0 : q0 + len(block.indices)], k)
            kth.append(sims[:, -1])
        searched = len(rows)
    else:
        for _, block in index.iter_search(None if point["task"] == "loo" else queries, k):
            kth.append(block.similarities[:, -1])  # keep one column: the result is not what is measured
    search_s = time.perf_counter() - t0
    rss_peak = _rss_mib()
    total = n if point["task"] == "loo" else point["queries"]
    result = {
        **point,
        "build_s": build_s,
        "search_s": search_s * total / searched,
        "search_measured_s": search_s,
        "queries_measured": searched,
        "queries_total": total,
        "extrapolated": searched < total,
        "params": index.describe(),
        "rss_data_mib": rss_data,
        "rss_peak_mib": rss_peak,
        "data_mib": (bank.nbytes + (queries.nbytes if queries is not None else 0)) / 2**20,
        "fallback_rows": index.exact_fallback_rows,
    }
    if not index.exact:
        recall = knn.measure_recall(
            index,
            None if point["task"] == "loo" else queries,
            k,
            sample=point["recall_sample"],
            seed=point["seed"],
        )
        result["recall"] = recall[k]
    conn.send(result)
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--queries", type=int, default=10_000, help="test queries of the `queries` task")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--full-loo-max", type=int, default=200_000, help="largest bank with a full exact LOO"
    )
    parser.add_argument("--loo-sample", type=int, default=2_000, help="LOO queries of a larger exact bank")
    parser.add_argument("--recall-sample", type=int, default=1_000)
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about 4 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells searched (default: 32)")
    parser.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per point (default: 32)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW candidates (default: max(2k, 128))")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--noise", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    opts = parser.parse_args()
    pin_child_threads(opts.threads)

    load_before = os.getloadavg()
    print(
        f"D={opts.dim} k={opts.k} queries={opts.queries} classes={opts.classes} noise={opts.noise} "
        f"threads={opts.threads} cpus={os.cpu_count()} load average before={load_before[0]:.1f}"
    )
    header = (
        f"{'N':>9} {'method':>6} {'task':>7} {'queries':>9} {'build s':>8} {'search s':>9} "
        f"{'total s':>8} {'query/s':>8} {'peak MiB':>9} {'+MiB':>6} {'recall@k':>8}  params"
    )
    print(header)
    rows = []
    for n in opts.sizes:
        for method in opts.methods:
            for task in opts.tasks:
                point = {
                    "n": n,
                    "method": method,
                    "task": task,
                    "dim": opts.dim,
                    "k": opts.k,
                    "queries": opts.queries,
                    "full_loo_max": opts.full_loo_max,
                    "loo_sample": min(opts.loo_sample, n),
                    "recall_sample": opts.recall_sample,
                    "nlist": opts.nlist,
                    "nprobe": opts.nprobe,
                    "hnsw_m": opts.hnsw_m,
                    "ef_search": opts.ef_search,
                    "classes": opts.classes,
                    "noise": opts.noise,
                    "threads": opts.threads,
                    "seed": opts.seed,
                }
                r = run_fresh(_child, point)
                rows.append(r)
                mark = "*" if r["extrapolated"] else " "
                recall = f"{r['recall']:.4f}" if "recall" in r else "exact"
                print(
                    f"{n:>9} {method:>6} {task:>7} {r['queries_total']:>9} {r['build_s']:>8.2f} "
                    f"{r['search_s']:>8.1f}{mark} {r['build_s'] + r['search_s']:>8.1f} "
                    f"{r['queries_total'] / r['search_s']:>8.0f} {r['rss_peak_mib']:>9.0f} "
                    f"{r['rss_peak_mib'] - r['rss_data_mib']:>6.0f} {recall:>8}  {r['params']}",
                    flush=True,
                )
    load_after = os.getloadavg()
    print(
        f"* exact leave-one-out above {opts.full_loo_max} points: {opts.loo_sample} seeded bank rows "
        "searched against the full bank, search time extrapolated linearly to all N rows"
    )
    print(
        "peak MiB: the subprocess's ru_maxrss (Python, torch, faiss, the data); +MiB: above its peak "
        "after generating the data (the index and the search)"
    )
    print(f"load average after={load_after[0]:.1f} (wall-clock timings on a shared machine)")
    if opts.out:
        meta = {
            **vars(opts),
            "cpus": os.cpu_count(),
            "load_before": load_before[0],
            "load_after": load_after[0],
        }
        with open(opts.out, "w") as f:
            json.dump({"settings": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
